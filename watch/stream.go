package watch

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"raftkv/api"
	"raftkv/keyspace"
	"raftkv/metrics"
)

// A watch stream: GET /watch/{key}, /watch/{prefix}/ or /watch/, answered
// with Server-Sent Events (text/event-stream), one per change, in log
// order:
//
//	id: 42
//	event: put
//	data: {"key":"app/a","createIndex":40,"modIndex":42,"value":"v"}
//
// A key deleted because its lease ended names the lease and why:
//
//	event: delete
//	data: {"key":"services/web/1","createIndex":50,"modIndex":61,"lease":49,"reason":"expired"}
//
// The id is the change's raft index, so a client that reconnects with
// Last-Event-ID (or ?from) resumes after it, on any member. When this member
// cannot deliver the next change in order, the stream ends with
//
//	event: error
//	data: {"error":"...","resumeAfter":41}

const (
	// DefaultKeepAlive is how often an idle stream gets a comment, so that
	// proxies and clients know it is alive (tests shorten it).
	DefaultKeepAlive = 15 * time.Second
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

// Streams serves the watch streams of one member, from its History.
type Streams struct {
	history   *History
	applied   func() uint64   // the member's applied index: where a watch given no start begins
	done      <-chan struct{} // closed when the member stops applying: every stream ends
	keepAlive time.Duration
	metrics   *metrics.Metrics // nil keeps none
	errs      api.Errors
	stopping  chan struct{} // closed by Close
	stopOnce  sync.Once
}

// NewStreams serves streams from history, of the member whose applied
// index applied reads, until done closes or Close is called; an idle
// stream hears from it every keepAlive.
func NewStreams(history *History, applied func() uint64, done <-chan struct{}, keepAlive time.Duration, m *metrics.Metrics, errs api.Errors) *Streams {
	return &Streams{history: history, applied: applied, done: done, keepAlive: keepAlive, metrics: m, errs: errs, stopping: make(chan struct{})}
}

// Close ends every stream: the member is shutting down, which waits for
// requests to finish, and a stream never would. The client resumes
// elsewhere.
func (s *Streams) Close() { s.stopOnce.Do(func() { close(s.stopping) }) }

// ServeHTTP handles GET /watch/...: see above. ?limit=N ends the stream
// after N events, finishing the raft entry the last one belongs to.
func (s *Streams) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	prefix := key == "" || strings.HasSuffix(key, "/")
	if len(key) > keyspace.MaxKeyBytes {
		http.Error(w, fmt.Sprintf("key must be 1 to %d bytes", keyspace.MaxKeyBytes), http.StatusBadRequest)
		return
	}
	from, err := watchStart(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	limit := 0
	if v, ok := api.QueryValue(r.URL.RawQuery, "limit"); ok {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 {
			http.Error(w, fmt.Sprintf("limit %q: must be a positive number of events", v), http.StatusBadRequest)
			return
		}
	}
	if from == nil {
		// With no start given, the changes after this member's state now.
		applied := s.applied()
		from = &applied
	}
	sub, err := s.history.add(key, prefix, *from)
	if errors.Is(err, ErrHistoryGone) {
		http.Error(w, err.Error()+": list the keys again, then watch from the listing's X-Raft-Index", http.StatusGone)
		return
	}
	if err != nil {
		s.errs.Write(w, err)
		return
	}
	defer s.history.remove(sub)
	s.metrics.WatchOpened()
	defer s.metrics.WatchClosed()

	ctl := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	api.SetRaftIndex(w, *from)
	w.WriteHeader(http.StatusOK)
	if ctl.Flush() != nil {
		return
	}
	keepAlive := time.NewTicker(s.keepAlive)
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
			events, next, err := s.history.since(sub, pos, batch)
			if err != nil {
				data, _ := json.Marshal(watchErrorView{Error: err.Error(), ResumeAfter: pos})
				write(w, ctl, "event: error\ndata: "+string(data)+"\n\n")
				return false
			}
			var b strings.Builder
			for _, e := range events {
				writeEvent(&b, e)
			}
			sent += len(events)
			if b.Len() > 0 && !write(w, ctl, b.String()) {
				return false
			}
			s.metrics.WatchSent(len(events))
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
		case <-sub.newC:
			if !deliver() {
				return
			}
		case <-keepAlive.C:
			// Catch up, then give the position as an id without data: the
			// client's Last-Event-ID moves on (EventSource dispatches
			// nothing), so a watcher of a quiet key resumes from here, not
			// from its last event, which a restarted member may no longer
			// have.
			if !deliver() || !write(w, ctl, ": keep-alive\nid: "+strconv.FormatUint(pos, 10)+"\n\n") {
				return
			}
		case <-r.Context().Done():
			return
		case <-s.stopping:
			return // the member is stopping: the client resumes elsewhere
		case <-s.done:
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
	if s, ok := api.QueryValue(r.URL.RawQuery, "from"); ok {
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

// eventView is the data of an event: the key as a listing shows it, and,
// for a delete that ended a lease, the lease and why.
type eventView struct {
	keyspace.View
	Reason string `json:"reason,omitempty"`
}

// writeEvent appends e as one Server-Sent Event.
func writeEvent(b *strings.Builder, e Event) {
	kind := "put"
	if e.Delete {
		kind = "delete"
	}
	data, _ := json.Marshal(eventView{View: keyspace.ViewOf(e.Key, e.Value, false, !e.Delete), Reason: e.Reason}) // strings and numbers: cannot fail
	fmt.Fprintf(b, "id: %d\nevent: %s\ndata: %s\n\n", e.Index, kind, data)
}

// write writes text to the stream and flushes it, within
// watchWriteTimeout; false if the stream is gone.
func write(w http.ResponseWriter, ctl *http.ResponseController, text string) bool {
	ctl.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	if _, err := w.Write([]byte(text)); err != nil {
		return false
	}
	return ctl.Flush() == nil
}
