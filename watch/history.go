// Package watch is the watch: every change a member applies, kept in
// order in a bounded History, and the Server-Sent Event streams that
// deliver them to watchers (Streams). The seam: the kvstore appends each
// applied entry's changes to the History (and resets it when it loads a
// snapshot); the client API hands GET /watch/... to Streams.
package watch

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"raftkv/keyspace"
)

// Every PUT or DELETE that changes a key becomes an event, numbered by its
// entry's raft index: the same numbers, in the same order, on every member,
// so a watcher that reconnects to any member resumes after the last index
// it saw. Each member keeps the newest events in a bounded history. The
// kvstore appends events as it applies entries, under its lock, and only
// signals the watchers whose key or prefix an event touches; a watcher
// reads the history on its own goroutine, so applying never waits for one.
// A watcher that falls behind the history, or whose history a snapshot
// from the leader replaces, is told so and ends: it never skips silently.

// ErrHistoryGone is a watch start older than this member's history.
var ErrHistoryGone = errors.New("events before this are no longer kept here")

// ErrInterrupted is why a watch stream ends before its limit: the
// member cannot deliver the next event in order.
var ErrInterrupted = errors.New("watch interrupted")

// DefaultHistoryBytes is how much history a member keeps for watchers
// by default: about 100 000 small changes, ten seconds at the cluster's
// peak write rate, for a watcher to reconnect in. It is part of a member's
// memory: at a million keys, 64 MiB of it took RSS past 300 MiB.
const DefaultHistoryBytes = 16 << 20

// eventOverhead is what an event costs in the history beyond its key and
// value.
const eventOverhead = 96

// Event is one change to one key, as a watcher sees it.
type Event struct {
	Index  uint64 // the raft index of the entry that made it
	Delete bool
	Key    string
	Value  keyspace.Value // for a delete: no data, ModIndex the delete's, CreateIndex the key's
	// Reason is why a lease's delete happened (lease.Revoked or
	// lease.Expired); "" for a DELETE.
	Reason string
}

// History is the events a member applied, oldest first, and the
// watchers waiting for new ones. The kvstore records and resets it as it
// applies; watch streams read it on their own goroutines.
type History struct {
	mu     sync.Mutex
	limit  int     // bytes
	bytes  int     // of events[head:]
	events []Event // events[head:] are live
	head   int
	// after is the index from which the history is complete: it holds
	// every event with a greater index this member applied.
	after uint64

	byKey    map[string]map[*watcher]struct{} // watchers of one key
	byPrefix map[string]map[*watcher]struct{} // watchers of a prefix ending in '/', or "" for all
}

// NewHistory returns an empty history complete after index after.
func NewHistory(limit int, after uint64) *History {
	return &History{
		limit:    limit,
		after:    after,
		byKey:    make(map[string]map[*watcher]struct{}),
		byPrefix: make(map[string]map[*watcher]struct{}),
	}
}

// size is what e costs the history.
func (e Event) size() int { return len(e.Key) + len(e.Value.Data) + eventOverhead }

// watcher is one watch stream's place in the history.
type watcher struct {
	key    string // the key, or the prefix when prefix is true
	prefix bool
	newC   chan struct{} // holds a token when events it may want arrived
	// Guarded by the history's mu: the index the stream has read up to,
	// and why events it wants were lost from the history before it read
	// them ("" if none were). A watcher the history leaves behind has lost
	// nothing unless an evicted event was one it watches.
	pos  uint64
	lost string
}

// matches reports whether an event on key is one w watches.
func (w *watcher) matches(key string) bool {
	if w.prefix {
		return strings.HasPrefix(key, w.key)
	}
	return key == w.key
}

// Append adds the events of one applied entry and wakes the watchers
// they touch. Events beyond the limit are dropped from the front, a whole
// entry's at a time, so that after always ends an entry.
func (h *History) Append(evs []Event) {
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
		index := h.events[h.head].Index
		for h.head < len(h.events) && h.events[h.head].Index == index {
			e := h.events[h.head]
			h.forEachWatching(e.Key, func(w *watcher) {
				if w.pos < e.Index && w.lost == "" {
					w.lost = "this watcher fell behind the member's history (--watch-history-bytes)"
				}
			})
			h.bytes -= e.size()
			h.events[h.head] = Event{}
			h.head++
		}
		h.after = index
	}
	if h.head > len(h.events)/2 {
		h.events = append(h.events[:0], h.events[h.head:]...)
		h.head = 0
	}
	for _, e := range evs {
		h.forEachWatching(e.Key, h.wakeOne)
	}
}

// forEachWatching calls fn for every watcher of key: of the key itself, and
// of each of its prefixes. A prefix watch names a prefix ending in '/', or
// the empty one, so only those can match.
func (h *History) forEachWatching(key string, fn func(*watcher)) {
	if len(h.byKey) == 0 && len(h.byPrefix) == 0 {
		return // nobody watches: the common case, on every applied write
	}
	each := func(ws map[*watcher]struct{}) {
		for w := range ws {
			fn(w)
		}
	}
	each(h.byKey[key])
	each(h.byPrefix[""])
	for i := range len(key) {
		if key[i] == '/' {
			each(h.byPrefix[key[:i+1]])
		}
	}
}

// wakeOne tells w that there is news, without waiting.
func (h *History) wakeOne(w *watcher) {
	select {
	case w.newC <- struct{}{}:
	default: // it has been told already
	}
}

// Reset empties the history: a snapshot replaced the state at index, and
// the changes up to it are unknown here. Every watcher is woken, to learn
// that its next events are gone.
func (h *History) Reset(index uint64, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.events)
	h.events, h.head, h.bytes = h.events[:0], 0, 0
	h.after = index
	for _, m := range []map[string]map[*watcher]struct{}{h.byKey, h.byPrefix} {
		for _, ws := range m {
			for w := range ws {
				if w.pos < index && w.lost == "" {
					w.lost = why
				}
				h.wakeOne(w)
			}
		}
	}
}

// add registers a watcher of key (or of a prefix) starting after index
// from; ErrHistoryGone if the history does not reach back that far.
func (h *History) add(key string, prefix bool, from uint64) (*watcher, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if from < h.after {
		return nil, fmt.Errorf("%w: the oldest index a watch can start after on this member is %d", ErrHistoryGone, h.after)
	}
	w := &watcher{key: key, prefix: prefix, newC: make(chan struct{}, 1), pos: from}
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
func (h *History) remove(w *watcher) {
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

// since returns up to limit events w watches with indexes after from, in
// order, ending on a whole entry, and the index the next call should
// start after. An error says the events after from are gone.
func (h *History) since(w *watcher, from uint64, limit int) ([]Event, uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.lost != "" {
		return nil, from, fmt.Errorf("%w: %s", ErrInterrupted, w.lost)
	}
	// Events before after that this watcher does not watch are gone, and
	// it did not want them.
	from = max(from, h.after)
	live := h.events[h.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i].Index > from })
	var out []Event
	next := from
	for ; i < len(live); i++ {
		e := live[i]
		if len(out) >= limit && e.Index != next {
			break // end on a whole entry
		}
		if w.matches(e.Key) {
			out = append(out, e)
		}
		next = e.Index
	}
	w.pos = next
	return out, next, nil
}
