package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// A watch stream: GET /watch/{key}, /watch/{prefix}/ or /watch/, answered
// with Server-Sent Events (text/event-stream), one per change, in log
// order:
//
//	id: 42
//	event: put
//	data: {"key":"app/a","createIndex":40,"modIndex":42,"value":"v"}
//
// The id is the change's raft index, so a client that reconnects with
// Last-Event-ID (or ?from) resumes after it, on any member. When this member
// cannot deliver the next change in order, the stream ends with
//
//	event: error
//	data: {"error":"...","resumeAfter":41}

const (
	// watchKeepAlive is how often an idle stream gets a comment, so that
	// proxies and clients know it is alive (config.watchKeepAlive; tests
	// shorten it).
	watchKeepAlive = 15 * time.Second
	// watchWriteTimeout is how long writing to a watcher may take before
	// the stream is given up: a client that stops reading must not hold
	// its goroutine for good.
	watchWriteTimeout = 30 * time.Second
	// watchBatch is how many events a stream takes from the history at once.
	watchBatch = 1000
)

// watchErrorView is the data of an error event.
type watchErrorView struct {
	Error       string `json:"error"`
	ResumeAfter uint64 `json:"resumeAfter"`
}

// watch handles GET /watch/...: see above. ?limit=N ends the stream after
// N events, finishing the raft entry the last one belongs to.
func (h *httpAPI) watch(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	prefix := key == "" || strings.HasSuffix(key, "/")
	if len(key) > maxKeyBytes {
		http.Error(w, fmt.Sprintf("key must be 1 to %d bytes", maxKeyBytes), http.StatusBadRequest)
		return
	}
	from, err := watchStart(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	limit := 0
	if s, ok := queryValue(r.URL.RawQuery, "limit"); ok {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 {
			http.Error(w, fmt.Sprintf("limit %q: must be a positive number of events", s), http.StatusBadRequest)
			return
		}
	}
	if from == nil {
		// With no start given, the changes after this member's state now.
		applied := h.store.appliedIndex.Load()
		from = &applied
	}
	watcher, err := h.store.watch.add(key, prefix, *from)
	if errors.Is(err, ErrHistoryGone) {
		http.Error(w, err.Error()+": list the keys again, then watch from the listing's X-Raft-Index", http.StatusGone)
		return
	}
	if err != nil {
		h.writeError(w, err)
		return
	}
	defer h.store.watch.remove(watcher)
	h.metrics.watchOpened()
	defer h.metrics.watchClosed()

	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	setRaftIndex(w, *from)
	w.WriteHeader(http.StatusOK)
	if rc.Flush() != nil {
		return
	}
	keepAlive := time.NewTicker(h.watchKeepAlive)
	defer keepAlive.Stop()
	pos, sent := *from, 0
	// deliver writes every event after pos the history has, and moves pos
	// past the changes to other keys too; false when the stream must end.
	deliver := func() bool {
		for {
			batch := watchBatch
			if limit > 0 {
				batch = min(batch, limit-sent)
			}
			events, next, err := h.store.watch.since(watcher, pos, batch)
			if err != nil {
				data, _ := json.Marshal(watchErrorView{Error: err.Error(), ResumeAfter: pos})
				watchWrite(w, rc, "event: error\ndata: "+string(data)+"\n\n")
				return false
			}
			var b strings.Builder
			for _, e := range events {
				writeEvent(&b, e)
			}
			sent += len(events)
			if b.Len() > 0 && !watchWrite(w, rc, b.String()) {
				return false
			}
			h.metrics.watchSent(len(events))
			done := next == pos
			pos = next
			if limit > 0 && sent >= limit {
				return false
			}
			if done || len(events) < batch {
				return true
			}
		}
	}
	for {
		select {
		case <-watcher.newC:
			if !deliver() {
				return
			}
		case <-keepAlive.C:
			// Catch up, then give the position as an id without data: the
			// client's Last-Event-ID moves on (EventSource dispatches
			// nothing), so a watcher of a quiet key resumes from here, not
			// from its last event, which a restarted member may no longer
			// have.
			if !deliver() || !watchWrite(w, rc, ": keep-alive\nid: "+strconv.FormatUint(pos, 10)+"\n\n") {
				return
			}
		case <-r.Context().Done():
			return
		case <-h.stopping:
			return // the member is stopping: the client resumes elsewhere
		case <-h.store.done:
			return
		}
	}
}

// watchStart is where a watch begins, after which index: ?from or
// Last-Event-ID, or nil for "now".
func watchStart(r *http.Request) (*uint64, error) {
	var from *uint64
	parse := func(what, s string) error {
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return fmt.Errorf("%s %q: must be a raft index, the id of the last event seen", what, s)
		}
		if from != nil && *from != n {
			return fmt.Errorf("?from=%d and Last-Event-ID %d disagree: give one", *from, n)
		}
		from = &n
		return nil
	}
	if s, ok := queryValue(r.URL.RawQuery, "from"); ok {
		if err := parse("from", s); err != nil {
			return nil, err
		}
	}
	if lines, ok := r.Header["Last-Event-Id"]; ok {
		if len(lines) != 1 {
			return nil, errors.New("Last-Event-ID: give it once")
		}
		if err := parse("Last-Event-ID", lines[0]); err != nil {
			return nil, err
		}
	}
	return from, nil
}

// writeEvent appends e as one Server-Sent Event.
func writeEvent(b *strings.Builder, e event) {
	kind := "put"
	if e.delete {
		kind = "delete"
	}
	data, _ := json.Marshal(viewOfKey(e.key, e.kv, false, !e.delete)) // strings and numbers: cannot fail
	fmt.Fprintf(b, "id: %d\nevent: %s\ndata: %s\n\n", e.index, kind, data)
}

// watchWrite writes s to the stream and flushes it, within
// watchWriteTimeout; false if the stream is gone.
func watchWrite(w http.ResponseWriter, rc *http.ResponseController, s string) bool {
	rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	if _, err := w.Write([]byte(s)); err != nil {
		return false
	}
	return rc.Flush() == nil
}
