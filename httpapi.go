package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/raft/v3"
	"go.uber.org/zap"
)

const (
	maxKeyBytes        = 4096
	maxMemberBodyBytes = 64 << 10
	maxMemberID        = 1<<16 - 1 // request ids carry the member id in 16 bits
)

// ErrNoKey is a key path that names no key: /keys or /keys/.
var ErrNoKey = errors.New("no key in path: use /keys/{key} (GET /keys/ lists every key)")

// The read levels of GET /keys/{key}.
const (
	levelStale      = "stale"      // this member's applied state, however old
	levelDefault    = "default"    // the leader's applied state
	levelConsistent = "consistent" // linearizable, on any member, via ReadIndex
)

// httpAPI is the client API. Writes go through the kvstore into raft and
// answer once applied here; reads are served from the local applied state
// after whatever wait their level asks for.
type httpAPI struct {
	id             uint64
	clientURL      string // this member's, as it advertises it
	store          *kvstore
	raft           *raftNode
	reads          *readLoop
	requestTimeout time.Duration
	maxValueBytes  int64
	idemWindow     uint64      // --idempotency-window, carried in each keyed entry
	answerLog      *zap.Logger // 5xx answers (see serverError)
	mux            *http.ServeMux
	watchKeepAlive time.Duration
	stopping       chan struct{} // closed when the server shuts down: watch streams end
	stopOnce       sync.Once
	metrics        *metrics // nil keeps none (metrics.go)
	clusterIDValue []string // the clusterIDHeader of every answer: fixed before the API starts
}

// endStreams ends every watch stream: the server is shutting down, which
// waits for requests to finish, and a stream never would.
func (h *httpAPI) endStreams() { h.stopOnce.Do(func() { close(h.stopping) }) }

// newHTTPAPI is the client API of the member whose kvstore, raftNode and
// read loop it is given; startServer serves it on the client listener.
func newHTTPAPI(cfg config, store *kvstore, rn *raftNode, reads *readLoop, m *metrics) *httpAPI {
	h := &httpAPI{
		metrics:        m,
		clusterIDValue: []string{types.ID(rn.clusterID).String()},
		id:             cfg.id,
		clientURL:      cfg.clientURL,
		store:          store,
		raft:           rn,
		reads:          reads,
		requestTimeout: cfg.requestTimeout,
		maxValueBytes:  cfg.maxValueBytes,
		idemWindow:     cfg.idempotencyWindow,
		answerLog:      newAnswerLogger(store.lg),
		mux:            http.NewServeMux(),
		watchKeepAlive: cfg.watchKeepAlive,
		stopping:       make(chan struct{}),
	}
	// GET (and so HEAD) /keys/{key} reads a key, or lists a prefix when the
	// path ends in '/' (GET /keys/ lists every key): see listing.go.
	h.handleTaking("PUT /keys/{key...}", takesConditions|takesIdempotencyKey, h.putKey)
	h.handleTaking("GET /keys/{key...}", takesConditions, h.getKey, "level", "limit", "after", "keys")
	h.handle("GET /watch/{key...}", h.watch, "from", "limit")
	h.handleTaking("DELETE /keys/{key...}", takesConditions|takesIdempotencyKey, h.deleteKey)
	h.mux.HandleFunc("/keys", noKey)
	h.handle("GET /members", h.listMembers)
	h.handleTaking("POST /members", takesIdempotencyKey, h.addMember)
	h.handle("GET /members/{id}", h.getMember)
	h.handle("DELETE /members/{id}", h.removeMember)
	h.handle("POST /members/{id}/promote", h.promoteMember)
	h.handle("GET /status", h.getStatus)
	h.handle("GET /health", h.getHealth)
	h.handle("GET /metrics", h.serveMetrics)
	h.handle("GET /version", getBuildInfo)
	h.handle("GET /snapshot", h.snapshotRoute(), "level") // backup.go
	if cfg.enablePprof {
		// As etcd's --enable-pprof: CPU and heap profiles of a running member.
		h.handle("GET /debug/pprof/", pprof.Index, "debug", "gc", "seconds")
		h.handle("GET /debug/pprof/profile", pprof.Profile, "seconds")
	}
	h.mux.HandleFunc("/", h.noRoute)
	return h
}

// ServeHTTP refuses what ServeMux would otherwise answer without a reason:
// the request target "*", which only OPTIONS may use, and paths it would
// clean and redirect (see uncleanPath), so a PUT to one fails plainly.
// An absolute-form target without a path ("GET http://host") would be
// redirected to "/", where no route is. Every answer names the cluster,
// for a member joining through this one.
func (h *httpAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w, rec := h.metrics.trackRequest(w)
	defer h.metrics.requestDone(rec, r)
	w.Header()[clusterIDHeader] = h.clusterIDValue
	if r.RequestURI == "*" {
		http.Error(w, "request target * is only for OPTIONS", http.StatusBadRequest)
		return
	}
	if r.URL.Path == "" {
		h.noRoute(w, r)
		return
	}
	if reason := uncleanPath(r.URL.Path); reason != "" {
		http.Error(w, reason, http.StatusBadRequest)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// putKey handles PUT /keys/{key}: 201 if it created the key, 204 if it
// replaced a value, once the write is committed and applied on this member;
// 412 if its If-Match or If-None-Match was false then.
func (h *httpAPI) putKey(w http.ResponseWriter, r *http.Request) {
	key, ok := keyFrom(w, r)
	if !ok {
		return
	}
	if !checkValueHeaders(w, r) {
		return
	}
	cond, err := parsePrecondition(r.Header)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.ContentLength > h.maxValueBytes {
		h.valueTooLarge(w)
		return
	}
	value, err := readValue(http.MaxBytesReader(w, r.Body, h.maxValueBytes), r.ContentLength)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			h.valueTooLarge(w)
		} else if errors.Is(err, ErrBodyTimeout) {
			// RFC 9110 §15.5.9: 408, and the connection is closed.
			w.Header().Set("Connection", "close")
			http.Error(w, oneLine(err), http.StatusRequestTimeout)
		} else {
			http.Error(w, "reading value: "+oneLine(err), http.StatusBadRequest)
		}
		return
	}
	idem, ok := h.idempotencyFrom(w, r, "PUT", key, value, cond)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	o, err := h.store.put(ctx, key, value, cond, idem)
	code := http.StatusNoContent
	if o.created {
		code = http.StatusCreated
	}
	h.answerWrite(w, o, err, code)
}

// idempotencyFrom returns the request's Idempotency-Key, with the
// fingerprint of what the request asks (method, the parts given, and its
// conditions, however they were written), or answers 400.
func (h *httpAPI) idempotencyFrom(w http.ResponseWriter, r *http.Request, method, target string, body []byte, cond precondition) (idempotent, bool) {
	key, err := parseIdempotencyKey(r.Header)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return idempotent{}, false
	}
	if key == "" {
		return idempotent{}, true
	}
	fp := fingerprint([]byte(method), []byte(target), body, []byte(cond.ifMatch.String()), []byte(cond.ifNoneMatch.String()))
	return idempotent{key: key, fingerprint: fp, window: h.idemWindow}, true
}

// answerWrite answers a write with code, or with err's status: the entry's
// index, the key's version when it exists, and whether this is a replay
// of an earlier attempt's answer.
func (h *httpAPI) answerWrite(w http.ResponseWriter, o outcome, err error, code int) {
	if o.index != 0 {
		setRaftIndex(w, o.index)
	}
	if o.hasVersion {
		setVersion(w, o.version)
	}
	if o.replayed {
		w.Header().Set("Idempotent-Replayed", "true")
		h.metrics.replayAnswered()
	}
	if err != nil {
		h.writeError(w, err)
		return
	}
	w.WriteHeader(code)
}

// checkValueHeaders refuses a PUT whose body is not the whole value as
// sent, or answers true. A Content-Range means a part of it (RFC 9110 §14.4
// requires a 400); a Content-Encoding means bytes the client expects
// decoded, while raftkv stores and serves the body as it came (RFC 9110
// §15.5.16: 415, with the codings accepted).
func checkValueHeaders(w http.ResponseWriter, r *http.Request) bool {
	if _, ok := r.Header["Content-Range"]; ok {
		http.Error(w, "Content-Range: a PUT replaces the whole value; partial writes are not supported", http.StatusBadRequest)
		return false
	}
	if coding := r.Header.Get("Content-Encoding"); coding != "" && !strings.EqualFold(coding, "identity") {
		w.Header().Set("Accept-Encoding", "identity")
		http.Error(w, fmt.Sprintf("Content-Encoding %q: values are stored as sent; send them unencoded", coding), http.StatusUnsupportedMediaType)
		return false
	}
	return true
}

// readValue reads a PUT's body. A body whose length the request gave is
// read into a buffer of that size at once; io.ReadAll would grow one from
// 512 bytes, copying a large value many times.
func readValue(body io.Reader, contentLength int64) ([]byte, error) {
	if contentLength < 0 {
		return io.ReadAll(body)
	}
	value := make([]byte, contentLength)
	if _, err := io.ReadFull(body, value); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the body ended before its Content-Length
		}
		return nil, err
	}
	return value, nil
}

// valueTooLarge answers 413 for a value over --max-value-bytes.
func (h *httpAPI) valueTooLarge(w http.ResponseWriter) {
	http.Error(w, fmt.Sprintf("value exceeds %d bytes", h.maxValueBytes), http.StatusRequestEntityTooLarge)
}

// readLevel returns the level a GET's query asks for, levelDefault if it
// names none. The query is one checkQuery accepted (level, and for a
// listing limit, after and keys), so reading it allocates nothing.
func readLevel(rawQuery string) (string, error) {
	level, ok := queryValue(rawQuery, "level")
	switch {
	case !ok:
		return levelDefault, nil
	case level == levelStale, level == levelDefault, level == levelConsistent:
		return level, nil
	}
	return "", fmt.Errorf("unknown level %q: use stale, default or consistent", level)
}

// getKey handles GET /keys/{key}?level=stale|default|consistent, and HEAD,
// which ServeMux routes here too: the same status and headers, no body.
// If-None-Match that matches is 304, If-Match that does not is 412.
func (h *httpAPI) getKey(w http.ResponseWriter, r *http.Request) {
	if prefix := r.PathValue("key"); prefix == "" || strings.HasSuffix(prefix, "/") {
		h.listKeys(w, r, prefix)
		return
	}
	for _, param := range []string{"limit", "after", "keys"} {
		if _, ok := queryValue(r.URL.RawQuery, param); ok {
			http.Error(w, fmt.Sprintf("query parameter %q is for a listing: a path ending in '/'", param), http.StatusBadRequest)
			return
		}
	}
	key, ok := keyFrom(w, r)
	if !ok {
		return
	}
	level, err := readLevel(r.URL.RawQuery)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cond, err := parsePrecondition(r.Header)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !h.awaitLevel(w, r, level) {
		return
	}
	kv, applied, ok := h.store.get(key)
	setRaftIndex(w, applied)
	if ok {
		setVersion(w, kv.keyVersion)
	}
	switch {
	case cond.ifMatch.given() && !(ok && cond.ifMatch.matches(kv.modIndex, true)):
		http.Error(w, ErrPreconditionFailed.Error()+": If-Match", http.StatusPreconditionFailed)
		return
	case !ok:
		http.Error(w, ErrKeyNotFound.Error(), http.StatusNotFound)
		return
	case cond.ifNoneMatch.given() && cond.ifNoneMatch.matches(kv.modIndex, false):
		w.WriteHeader(http.StatusNotModified)
		return
	}
	// Set, not left to the server: it counts only a body short enough to
	// buffer whole, and a HEAD writes none.
	w.Header().Set("Content-Length", strconv.Itoa(len(kv.value)))
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method != http.MethodHead {
		io.WriteString(w, kv.value)
	}
}

// awaitLevel waits until this member may serve a read at level, or
// answers for it: a redirect to the leader, or why it cannot.
func (h *httpAPI) awaitLevel(w http.ResponseWriter, r *http.Request, level string) bool {
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	switch level {
	case levelDefault:
		leader := h.raft.leaderID()
		if leader == raft.None {
			h.writeError(w, ErrNoLeader)
			return false
		}
		if leader != h.id {
			h.redirectToLeader(w, r, leader)
			return false
		}
		// The leader applies asynchronously: catch up with everything it
		// knows committed, so a write acknowledged by a follower is seen.
		if err := h.store.waitApplied(ctx, h.raft.leaderCatchUpIndex()); err != nil {
			h.writeError(w, err)
			return false
		}
	case levelConsistent:
		if err := h.reads.wait(ctx); err != nil {
			h.writeError(w, err)
			return false
		}
	}
	return true
}

// redirectToLeader answers 307 with the same path and query on the leader.
func (h *httpAPI) redirectToLeader(w http.ResponseWriter, r *http.Request, leader uint64) {
	m, ok := h.store.lookupMember(leader)
	if !ok || len(m.ClientURLs) == 0 {
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("leader %d has not advertised its client URL yet", leader), http.StatusServiceUnavailable)
		return
	}
	target := strings.TrimSuffix(m.ClientURLs[0], "/") + r.URL.RequestURI()
	w.Header().Set("Location", target)
	http.Error(w, "not the leader; redirecting to "+target, http.StatusTemporaryRedirect)
}

// deleteKey handles DELETE /keys/{key}: 204 if the key existed, 404 if
// not, both once the delete is applied on this member; 412 if its
// If-Match or If-None-Match was false then.
func (h *httpAPI) deleteKey(w http.ResponseWriter, r *http.Request) {
	key, ok := keyFrom(w, r)
	if !ok {
		return
	}
	cond, err := parsePrecondition(r.Header)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	idem, ok := h.idempotencyFrom(w, r, "DELETE", key, nil, cond)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	o, err := h.store.delete(ctx, key, cond, idem)
	h.answerWrite(w, o, err, http.StatusNoContent)
}

// statusView is the body of GET /status.
type statusView struct {
	ID            uint64 `json:"id"`
	ClusterID     string `json:"clusterID"` // hex, as etcd prints it
	Leader        uint64 `json:"leader"`
	Term          uint64 `json:"term"`
	RaftState     string `json:"raftState"`
	CommitIndex   uint64 `json:"commitIndex"`
	AppliedIndex  uint64 `json:"appliedIndex"`
	SnapshotIndex uint64 `json:"snapshotIndex"`
}

// getStatus handles GET /status: this member's view of raft.
func (h *httpAPI) getStatus(w http.ResponseWriter, r *http.Request) {
	st := h.raft.status()
	writeJSON(w, http.StatusOK, statusView{
		ID:            h.id,
		ClusterID:     types.ID(h.raft.clusterID).String(),
		Leader:        st.Lead,
		Term:          st.GetTerm(),
		RaftState:     st.RaftState.String(),
		CommitIndex:   st.GetCommit(),
		AppliedIndex:  h.store.appliedIndex.Load(),
		SnapshotIndex: h.raft.snapshotIndex(),
	})
}

// writeError answers with the status code err calls for and a one-line reason.
func (h *httpAPI) writeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrKeyNotFound), errors.Is(err, ErrMemberNotFound):
		http.Error(w, oneLine(err), http.StatusNotFound)
	case errors.Is(err, ErrMemberExists), errors.Is(err, ErrNotLearner):
		http.Error(w, oneLine(err), http.StatusConflict)
	case errors.Is(err, ErrPreconditionFailed):
		http.Error(w, oneLine(err), http.StatusPreconditionFailed)
	case errors.Is(err, ErrIdempotencyKeyReused):
		http.Error(w, oneLine(err), http.StatusUnprocessableEntity)
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrStopped):
		w.Header().Set("Retry-After", "1")
		h.serverError(w, oneLine(err), http.StatusServiceUnavailable)
	case errors.Is(err, context.DeadlineExceeded):
		h.serverError(w, fmt.Sprintf("timed out after %s: the outcome is unknown, the request may or may not have been applied", h.requestTimeout), http.StatusGatewayTimeout)
	case errors.Is(err, context.Canceled):
		// The client has gone; nobody reads this, and it is no fault of
		// this member's, so it is not logged either.
		http.Error(w, "request canceled", http.StatusServiceUnavailable)
	default:
		h.serverError(w, oneLine(err), http.StatusInternalServerError)
	}
}

// serverError answers a 5xx and logs it as a warning: the client was told
// nothing definite, and the reason says why (no leader, a timeout, the
// member stopping). Not every such answer gets a line: see newAnswerLogger.
func (h *httpAPI) serverError(w http.ResponseWriter, reason string, code int) {
	h.answerLog.Warn(fmt.Sprintf("answered %d %s", code, http.StatusText(code)), zap.String("reason", reason))
	http.Error(w, reason, code)
}

// keyFrom returns the key named by the request path, or answers 400.
func keyFrom(w http.ResponseWriter, r *http.Request) (string, bool) {
	key := r.PathValue("key")
	switch {
	case key == "":
		http.Error(w, ErrNoKey.Error(), http.StatusBadRequest)
		return "", false
	case len(key) > maxKeyBytes:
		http.Error(w, fmt.Sprintf("key must be 1 to %d bytes", maxKeyBytes), http.StatusBadRequest)
		return "", false
	case strings.HasSuffix(key, "/"):
		http.Error(w, "key must not end in '/': a path ending in '/' names a prefix, which GET lists", http.StatusBadRequest)
		return "", false
	}
	return key, true
}

// withLists turns nil URL lists into empty ones, so JSON shows [] not null.
func withLists(m member) member {
	if m.PeerURLs == nil {
		m.PeerURLs = []string{}
	}
	if m.ClientURLs == nil {
		m.ClientURLs = []string{}
	}
	return m
}

// setRaftIndex sets X-Raft-Index, the raft index an answer reflects: the
// entry a write was applied at, or the index of the state a read, listing
// or copy was taken from.
func setRaftIndex(w http.ResponseWriter, index uint64) {
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
}

// writeJSON answers code with v as JSON. An error encoding to a client
// that went away has nobody to tell.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// oneLine keeps error bodies to one line, whatever the error says.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", " ")
}
