package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sseEvent is one Server-Sent Event as a client reads it.
type sseEvent struct {
	id, kind, data string
}

// watchStream is an open watch, read event by event.
type watchStream struct {
	t      *testing.T
	resp   *http.Response
	events chan sseEvent
	cancel context.CancelFunc
}

// openWatch starts GET target on a client URL, with header lines, and
// fails unless it answers 200 with an event stream.
func openWatch(t *testing.T, rawURL string, header ...string) *watchStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", rawURL, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("GET %s: %d %s", rawURL, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	w := &watchStream{t: t, resp: resp, events: make(chan sseEvent, 1000), cancel: cancel}
	t.Cleanup(w.close)
	go w.read()
	return w
}

// read parses the stream into events until it ends.
func (w *watchStream) read() {
	defer close(w.events)
	sc := bufio.NewScanner(w.resp.Body)
	var e sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if e.kind != "" || e.data != "" {
				w.events <- e
			}
			e = sseEvent{}
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			e.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			e.kind = line[7:]
		case strings.HasPrefix(line, "data: "):
			e.data = line[6:]
		}
	}
}

// next returns the next event, failing after timeout; ok false when the
// stream ended.
func (w *watchStream) next(timeout time.Duration) (sseEvent, bool) {
	w.t.Helper()
	select {
	case e, ok := <-w.events:
		return e, ok
	case <-time.After(timeout):
		w.t.Fatalf("no event within %s", timeout)
		return sseEvent{}, false
	}
}

func (w *watchStream) close() {
	w.cancel()
	w.resp.Body.Close()
}

// watchWant reads the next event and checks it: kind, key, value ("" for a
// delete) and id.
func (w *watchStream) want(kind, key, value string, id uint64) {
	w.t.Helper()
	e, ok := w.next(10 * time.Second)
	if !ok {
		w.t.Fatalf("stream ended; want %s %s", kind, key)
	}
	var d entryView
	if err := json.Unmarshal([]byte(e.data), &d); err != nil {
		w.t.Fatalf("event %+v: %v", e, err)
	}
	got := ""
	if d.Value != nil {
		got = *d.Value
	}
	if e.kind != kind || d.Key != key || got != value || e.id != strconv.FormatUint(id, 10) || d.ModIndex != id {
		w.t.Fatalf("event %s %s (data %s), want %s %s=%q at %d", e.kind, e.id, e.data, kind, key, value, id)
	}
}

// TestWatch proves a watch streams, in log order and each once, the puts
// and deletes under its prefix (or of its key, or of everything), with the
// raft index as id; resumes after ?from or Last-Event-ID without a gap or a
// repeat; ends after ?limit events; and ends when the member stops.
func TestWatch(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	base := clusterPut(t, c, 1, "app/before", "0")
	prefix := openWatch(t, c.url(1, "/watch/app/"))
	key := openWatch(t, c.url(1, "/watch/app/a"))
	all := openWatch(t, c.url(1, "/watch/"))

	i1 := clusterPut(t, c, 1, "app/a", "1")
	i2 := clusterPut(t, c, 1, "other/x", "2")
	i3 := clusterPut(t, c, 1, "app/b", "3")
	r := do(t, "DELETE", c.url(1, "/keys/app/a"), "")
	i4, _ := strconv.ParseUint(r.header.Get("X-Raft-Index"), 10, 64)
	i5 := clusterPut(t, c, 1, "apple", "not under app/")

	prefix.want("put", "app/a", "1", i1)
	prefix.want("put", "app/b", "3", i3)
	prefix.want("delete", "app/a", "", i4)
	key.want("put", "app/a", "1", i1)
	key.want("delete", "app/a", "", i4)
	all.want("put", "app/a", "1", i1)
	all.want("put", "other/x", "2", i2)
	all.want("put", "app/b", "3", i3)
	all.want("delete", "app/a", "", i4)
	all.want("put", "apple", "not under app/", i5)

	// Resume after i1, by ?from and by Last-Event-ID: nothing repeated,
	// nothing skipped; and ?limit ends the stream.
	for _, w := range []*watchStream{
		openWatch(t, c.url(1, "/watch/app/?from="+strconv.FormatUint(i1, 10)+"&limit=2")),
		openWatch(t, c.url(1, "/watch/app/?limit=2"), "Last-Event-ID", strconv.FormatUint(i1, 10)),
	} {
		w.want("put", "app/b", "3", i3)
		w.want("delete", "app/a", "", i4)
		if e, ok := w.next(5 * time.Second); ok {
			t.Errorf("event after the limit: %+v", e)
		}
	}
	// From the start of the history: every change since the member began.
	w := openWatch(t, c.url(1, "/watch/app/?from=0&limit=1"))
	w.want("put", "app/before", "0", base)

	for target, code := range map[string]int{
		"/watch/app/?from=x":      400,
		"/watch/app/?limit=0":     400,
		"/watch/app/?level=stale": 400,
		"/watch/app//":            400,
	} {
		if r := do(t, "GET", c.url(1, target), ""); r.code != code {
			t.Errorf("GET %s: %d %q, want %d", target, r.code, r.body, code)
		}
	}

	// A stopping member ends its streams.
	if err := c.stop(1); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*watchStream{prefix, key, all} {
		if e, ok := w.next(10 * time.Second); ok {
			t.Errorf("event after the member stopped: %+v", e)
		}
	}
}

// TestWatchHistoryBounds proves a watch that starts before the history kept
// here is refused with 410 naming the oldest index it can start after, and
// that a watcher the history leaves behind gets an error event with the
// index to resume after, then the end of the stream.
func TestWatchHistoryBounds(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *config) { cfg.watchHistoryBytes = 10 * (eventOverhead + 4) })
	first := clusterPut(t, c, 1, "k/0", "v")
	for i := 1; i < 30; i++ {
		clusterPut(t, c, 1, "k/"+strconv.Itoa(i), "v")
	}
	r := do(t, "GET", c.url(1, "/watch/k/?from="+strconv.FormatUint(first, 10)), "")
	if r.code != http.StatusGone || !strings.Contains(r.body, "the oldest index a watch can start after on this member is") {
		t.Fatalf("watch from before the history: %d %q, want 410 naming the oldest index", r.code, r.body)
	}

	h := c.server(1).store.watch
	wr, err := h.add("k/", true, c.server(1).store.appliedIndex.Load())
	if err != nil {
		t.Fatal(err)
	}
	defer h.remove(wr)
	pos := c.server(1).store.appliedIndex.Load()
	for i := range 30 {
		clusterPut(t, c, 1, "k/"+strconv.Itoa(i), "again")
	}
	if _, _, err := h.since(wr, pos, 1000); err == nil || !strings.Contains(err.Error(), "fell behind") {
		t.Fatalf("a watcher left behind: %v, want it told it fell behind", err)
	}
}

// TestWatchHistory proves the history's own rules: since returns the events
// a watcher wants after a position, a whole entry at a time; eviction drops
// whole entries and moves the start; a reset says why.
func TestWatchHistory(t *testing.T) {
	h := newWatchHistory(4*(eventOverhead+4), 10)
	ev := func(index uint64, key string) event {
		return event{index: index, key: key, kv: keyValue{value: "v", keyVersion: keyVersion{modIndex: index}}}
	}
	w, err := h.add("a/", true, 10)
	if err != nil {
		t.Fatal(err)
	}
	h.record([]event{ev(11, "a/1"), ev(11, "a/2"), ev(11, "b/1")})
	h.record([]event{ev(12, "a/3")})
	got, next, err := h.since(w, 10, 1)
	if err != nil || len(got) != 2 || next != 11 {
		t.Fatalf("since(10, max 1) = %v, next %d, %v; want both a/ events of entry 11", got, next, err)
	}
	got, next, _ = h.since(w, next, 10)
	if len(got) != 1 || got[0].key != "a/3" || next != 12 {
		t.Fatalf("since(11) = %v, next %d; want a/3 at 12", got, next)
	}
	h.record([]event{ev(13, "a/4")}) // over 4 events: entry 11 goes, whole
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
		h.record([]event{ev(i, "b/x")})
	}
	if _, next, err := h.since(q, 12, 10); err != nil || next != 19 {
		t.Errorf("quiet watcher after evictions: next %d, %v; want 19 and no error", next, err)
	}
	h.reset(20, "a snapshot")
	if _, _, err := h.since(q, 19, 10); err == nil || !strings.Contains(err.Error(), "a snapshot") {
		t.Errorf("since after a reset: %v, want the reset's reason", err)
	}
}
