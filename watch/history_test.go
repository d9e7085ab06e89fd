package watch

import (
	"errors"
	"strings"
	"testing"

	"raftkv/keyspace"
)

// ev is an Event of the entry at index putting key.
func ev(index uint64, key string) Event {
	return Event{Index: index, Key: key, Value: keyspace.Value{Data: "v", Version: keyspace.Version{ModIndex: index}}}
}

// TestWatchHistory proves the history's own rules: since returns the events
// a watcher wants after a position, a whole entry at a time; eviction drops
// whole entries and moves the start; a reset says why.
func TestWatchHistory(t *testing.T) {
	h := NewHistory(4*(eventOverhead+4), 10)
	w, err := h.add("a/", true, 10)
	if err != nil {
		t.Fatal(err)
	}
	h.Append([]Event{ev(11, "a/1"), ev(11, "a/2"), ev(11, "b/1")})
	h.Append([]Event{ev(12, "a/3")})
	got, next, err := h.since(w, 10, 1)
	if err != nil || len(got) != 2 || next != 11 {
		t.Fatalf("since(10, max 1) = %v, next %d, %v; want both a/ events of entry 11", got, next, err)
	}
	got, next, _ = h.since(w, next, 10)
	if len(got) != 1 || got[0].Key != "a/3" || next != 12 {
		t.Fatalf("since(11) = %v, next %d; want a/3 at 12", got, next)
	}
	h.Append([]Event{ev(13, "a/4")}) // over 4 events: entry 11 goes, whole
	if _, err := h.add("a/", true, 10); err == nil {
		t.Error("a watch from 10 is accepted after entry 11 was evicted")
	}
	if _, err := h.add("a/", true, 11); err != nil {
		t.Errorf("a watch from 11, the new start: %v", err)
	}
	// A watcher of a quiet prefix loses nothing when other keys' events go.
	q, err := h.add("q/", true, 12)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(14); i < 20; i++ {
		h.Append([]Event{ev(i, "b/x")})
	}
	if _, next, err := h.since(q, 12, 10); err != nil || next != 19 {
		t.Errorf("quiet watcher after evictions: next %d, %v; want 19 and no error", next, err)
	}
	h.Reset(20, "a snapshot")
	if _, _, err := h.since(q, 19, 10); err == nil || !strings.Contains(err.Error(), "a snapshot") {
		t.Errorf("since after a reset: %v, want the reset's reason", err)
	}
}

// TestWatchHistoryFellBehind proves a watch that starts before the history
// kept here is refused with ErrHistoryGone naming the oldest index it can
// start after, and that a watcher the history leaves behind, with events it
// watches evicted before it read them, is told it fell behind
// (ErrInterrupted) rather than skipping them.
func TestWatchHistoryFellBehind(t *testing.T) {
	h := NewHistory(10*(eventOverhead+4), 0)
	for i := uint64(1); i <= 30; i++ {
		h.Append([]Event{ev(i, "k/1")})
	}
	_, err := h.add("k/", true, 1)
	if !errors.Is(err, ErrHistoryGone) || !strings.Contains(err.Error(), "the oldest index a watch can start after on this member is 20") {
		t.Fatalf("a watch from 1 with entries 21 to 30 kept: %v, want ErrHistoryGone naming 20", err)
	}
	w, err := h.add("k/", true, 30)
	if err != nil {
		t.Fatal(err)
	}
	defer h.remove(w)
	for i := uint64(31); i <= 60; i++ {
		h.Append([]Event{ev(i, "k/1")})
	}
	if _, _, err := h.since(w, 30, 1000); !errors.Is(err, ErrInterrupted) || !strings.Contains(err.Error(), "fell behind") {
		t.Fatalf("a watcher left behind: %v, want it told it fell behind", err)
	}

	// An entry is evicted whole: a watcher of its last event, which alone
	// would still fit, is told too, rather than skip it.
	h = NewHistory(3*(eventOverhead+4), 0)
	last, err := h.add("b/", true, 0)
	if err != nil {
		t.Fatal(err)
	}
	h.Append([]Event{ev(1, "a/1"), ev(1, "a/2"), ev(1, "b/1")})
	h.Append([]Event{ev(2, "a/3")})
	if _, _, err := h.since(last, 0, 1000); !errors.Is(err, ErrInterrupted) || !strings.Contains(err.Error(), "fell behind") {
		t.Errorf("the watcher of the last event of an evicted entry: %v, want it told it fell behind", err)
	}
}

// woken reports whether w was told there is news, taking the token.
func woken(w *watcher) bool {
	select {
	case <-w.newC:
		return true
	default:
		return false
	}
}

// TestWatchHistoryWakes proves Append wakes exactly the watchers an event
// touches: of its key, of a prefix of it that ends in '/', and of
// everything; a reset wakes every watcher; and a removed watcher is no
// longer woken, nor kept.
func TestWatchHistoryWakes(t *testing.T) {
	h := NewHistory(1<<20, 0)
	watchers := map[string]*watcher{}
	for _, spec := range []struct {
		name, key string
		prefix    bool
	}{
		{"key a/b", "a/b", false},
		{"key a", "a", false},
		{"prefix a/", "a/", true},
		{"prefix a/b/", "a/b/", true},
		{"prefix b/", "b/", true},
		{"everything", "", true},
	} {
		w, err := h.add(spec.key, spec.prefix, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !woken(w) {
			t.Errorf("%s: not told to read once at the start", spec.name)
		}
		watchers[spec.name] = w
	}
	for _, tc := range []struct {
		key  string
		want []string
	}{
		{"a/b", []string{"key a/b", "prefix a/", "everything"}},
		{"a/b/c", []string{"prefix a/", "prefix a/b/", "everything"}},
		{"a", []string{"key a", "everything"}},
		{"ab", []string{"everything"}},
		{"b/", []string{"prefix b/", "everything"}},
	} {
		h.Append([]Event{ev(1, tc.key)})
		for name, w := range watchers {
			want := false
			for _, n := range tc.want {
				want = want || n == name
			}
			if got := woken(w); got != want {
				t.Errorf("an event on %q: %s woken %v, want %v", tc.key, name, got, want)
			}
		}
	}
	// Two events for one watcher leave one token: it reads them together.
	h.Append([]Event{ev(2, "a/b"), ev(2, "a/c")})
	if !woken(watchers["prefix a/"]) || woken(watchers["prefix a/"]) {
		t.Error("two events for a watcher: want one token")
	}
	for _, w := range watchers {
		woken(w)
	}
	h.Reset(5, "a snapshot")
	for name, w := range watchers {
		if !woken(w) {
			t.Errorf("%s not woken by a reset", name)
		}
		h.remove(w)
	}
	h.Append([]Event{ev(6, "a/b")})
	for name, w := range watchers {
		if woken(w) {
			t.Errorf("%s woken after it was removed", name)
		}
	}
	if len(h.byKey) != 0 || len(h.byPrefix) != 0 {
		t.Errorf("after every watcher was removed the history keeps %d keys' and %d prefixes' watchers", len(h.byKey), len(h.byPrefix))
	}
}

// TestWatchHistoryResetKeepsCurrent proves a reset interrupts only the
// watchers that had not read up to its index: one that had misses nothing,
// and reads on from there.
func TestWatchHistoryResetKeepsCurrent(t *testing.T) {
	h := NewHistory(1<<20, 0)
	behind, _ := h.add("k", false, 0)
	current, _ := h.add("k", false, 0)
	h.Append([]Event{ev(1, "k")})
	if _, next, err := h.since(current, 0, 10); err != nil || next != 1 {
		t.Fatalf("since(0) = next %d, %v", next, err)
	}
	h.Reset(1, "a snapshot at 1")
	if _, _, err := h.since(behind, 0, 10); !errors.Is(err, ErrInterrupted) || !strings.Contains(err.Error(), "a snapshot at 1") {
		t.Errorf("a watcher at 0 after a reset at 1: %v, want ErrInterrupted with its reason", err)
	}
	h.Append([]Event{ev(2, "k")})
	if got, next, err := h.since(current, 1, 10); err != nil || next != 2 || len(got) != 1 || got[0].Index != 2 {
		t.Errorf("a watcher at 1 after a reset at 1: %v, next %d, %v; want the event at 2", got, next, err)
	}
}
