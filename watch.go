package main

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Watch: the changes this member applies, kept in order for watchers.
//
// Every PUT or DELETE that changes a key becomes an event, numbered by its
// entry's raft index: the same numbers, in the same order, on every member,
// so a watcher that reconnects to any member resumes after the last index
// it saw. Each member keeps the newest events in a bounded history. The
// kvstore records events as it applies entries, under its lock, and only
// signals the watchers whose key or prefix an event touches; a watcher
// reads the history on its own goroutine, so applying never waits for one.
// A watcher that falls behind the history, or whose history a snapshot
// from the leader replaces, is told so and ends: it never skips silently.

// ErrHistoryGone is a watch start older than this member's history.
var ErrHistoryGone = errors.New("events before this are no longer kept here")

// ErrWatchInterrupted is why a watch stream ends before its limit: the
// member cannot deliver the next event in order.
var ErrWatchInterrupted = errors.New("watch interrupted")

// defaultWatchHistoryBytes is how much history a member keeps for watchers
// by default: about 100 000 small changes, ten seconds at the cluster's
// peak write rate, for a watcher to reconnect in. It is part of a member's
// memory: at a million keys, 64 MiB of it took RSS past 300 MiB.
const defaultWatchHistoryBytes = 16 << 20

// eventOverhead is what an event costs in the history beyond its key and
// value.
const eventOverhead = 96

// event is one change to one key, as a watcher sees it.
type event struct {
	index  uint64 // the raft index of the entry that made it
	delete bool
	key    string
	kv     keyValue // for a delete: no value, modIndex the delete's, createIndex the key's
}

// watchHistory is the events a member applied, oldest first, and the
// watchers waiting for new ones. The kvstore records and resets it as it
// applies; watch streams read it on their own goroutines.
type watchHistory struct {
	mu     sync.Mutex
	limit  int     // bytes
	bytes  int     // of events[head:]
	events []event // events[head:] are live
	head   int
	// after is the index from which the history is complete: it holds
	// every event with a greater index this member applied.
	after uint64
	// cut is why events at or before after are missing, for a watcher
	// that was there: set when a snapshot replaced the history.
	cut string

	byKey    map[string]map[*watcher]struct{} // watchers of one key
	byPrefix map[string]map[*watcher]struct{} // watchers of a prefix ending in '/', or "" for all
}

// newWatchHistory returns an empty history complete after index after.
func newWatchHistory(limit int, after uint64) *watchHistory {
	return &watchHistory{
		limit:    limit,
		after:    after,
		byKey:    make(map[string]map[*watcher]struct{}),
		byPrefix: make(map[string]map[*watcher]struct{}),
	}
}

// size is what e costs the history.
func (e event) size() int { return len(e.key) + len(e.kv.value) + eventOverhead }

// watcher is one watch stream's place in the history.
type watcher struct {
	key    string // the key, or the prefix when prefix is true
	prefix bool
	newC   chan struct{} // holds a token when events it may want arrived
}

// matches reports whether an event on key is one w watches.
func (w *watcher) matches(key string) bool {
	if w.prefix {
		return strings.HasPrefix(key, w.key)
	}
	return key == w.key
}

// record appends the events of one applied entry and wakes the watchers
// they touch. Events beyond the limit are dropped from the front, a whole
// entry's at a time, so that after always ends an entry.
func (h *watchHistory) record(evs []event) {
	if len(evs) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, evs...)
	for _, e := range evs {
		h.bytes += e.size()
	}
	for h.bytes > h.limit && h.head < len(h.events) {
		index := h.events[h.head].index
		for h.head < len(h.events) && h.events[h.head].index == index {
			h.bytes -= h.events[h.head].size()
			h.events[h.head] = event{}
			h.head++
		}
		h.after = index
	}
	if h.head > len(h.events)/2 {
		h.events = append(h.events[:0], h.events[h.head:]...)
		h.head = 0
	}
	for _, e := range evs {
		h.wake(h.byKey[e.key])
		// A prefix watch names a prefix ending in '/', or the empty one:
		// only those of e.key can match.
		h.wake(h.byPrefix[""])
		for i := range len(e.key) {
			if e.key[i] == '/' {
				h.wake(h.byPrefix[e.key[:i+1]])
			}
		}
	}
}

// wake tells each watcher in ws that there is news, without waiting.
func (h *watchHistory) wake(ws map[*watcher]struct{}) {
	for w := range ws {
		select {
		case w.newC <- struct{}{}:
		default: // it has been told already
		}
	}
}

// reset empties the history: a snapshot replaced the state at index, and
// the changes up to it are unknown here. Every watcher is woken, to learn
// that its next events are gone.
func (h *watchHistory) reset(index uint64, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.events)
	h.events, h.head, h.bytes = h.events[:0], 0, 0
	h.after, h.cut = index, why
	for _, ws := range h.byKey {
		h.wake(ws)
	}
	for _, ws := range h.byPrefix {
		h.wake(ws)
	}
}

// add registers a watcher of key (or of a prefix) starting after index
// from; ErrHistoryGone if the history does not reach back that far.
func (h *watchHistory) add(key string, prefix bool, from uint64) (*watcher, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if from < h.after {
		return nil, fmt.Errorf("%w: the oldest index a watch can start after on this member is %d", ErrHistoryGone, h.after)
	}
	w := &watcher{key: key, prefix: prefix, newC: make(chan struct{}, 1)}
	m := h.byKey
	if prefix {
		m = h.byPrefix
	}
	if m[key] == nil {
		m[key] = make(map[*watcher]struct{})
	}
	m[key][w] = struct{}{}
	w.newC <- struct{}{} // read once at the start: events after from may be here already
	return w, nil
}

// remove unregisters w.
func (h *watchHistory) remove(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.byKey
	if w.prefix {
		m = h.byPrefix
	}
	delete(m[w.key], w)
	if len(m[w.key]) == 0 {
		delete(m, w.key)
	}
}

// since returns up to max events w watches with indexes after from, in
// order, ending on a whole entry, and the index the next call should
// start after. An error says the events after from are gone.
func (h *watchHistory) since(w *watcher, from uint64, max int) ([]event, uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if from < h.after {
		why := h.cut
		if why == "" {
			why = "this watcher fell behind the member's history (--watch-history)"
		}
		return nil, from, fmt.Errorf("%w: %s", ErrWatchInterrupted, why)
	}
	live := h.events[h.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i].index > from })
	var out []event
	next := from
	for ; i < len(live); i++ {
		e := live[i]
		if len(out) >= max && e.index != next {
			break // end on a whole entry
		}
		if w.matches(e.key) {
			out = append(out, e)
		}
		next = e.index
	}
	return out, next, nil
}
