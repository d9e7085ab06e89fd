package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/raft/v3"
)

const (
	maxKeyBytes        = 4096
	maxMemberBodyBytes = 64 << 10
	maxMemberID        = 1<<16 - 1 // request ids carry the member id in 16 bits
)

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
	clientURL      string // this member's, as it publishes it
	store          *kvstore
	raft           *raftNode
	reads          *readLoop
	requestTimeout time.Duration
	maxValueBytes  int64
	mux            *http.ServeMux
}

func newHTTPAPI(cfg config, store *kvstore, rn *raftNode, reads *readLoop) *httpAPI {
	h := &httpAPI{
		id:             cfg.id,
		clientURL:      cfg.clientURL,
		store:          store,
		raft:           rn,
		reads:          reads,
		requestTimeout: cfg.requestTimeout,
		maxValueBytes:  cfg.maxValueBytes,
		mux:            http.NewServeMux(),
	}
	h.mux.HandleFunc("PUT /keys/{key...}", h.putKey)
	h.mux.HandleFunc("GET /keys/{key...}", h.getKey)
	h.mux.HandleFunc("DELETE /keys/{key...}", h.deleteKey)
	h.mux.HandleFunc("GET /members", h.listMembers)
	h.mux.HandleFunc("POST /members", h.addMember)
	h.mux.HandleFunc("GET /members/{id}", h.getMember)
	h.mux.HandleFunc("DELETE /members/{id}", h.removeMember)
	h.mux.HandleFunc("GET /status", h.getStatus)
	h.mux.HandleFunc("GET /health", h.getHealth)
	if cfg.enablePprof {
		// As etcd's --enable-pprof: CPU and heap profiles of a running member.
		h.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		h.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	}
	return h
}

// ServeHTTP refuses what ServeMux would otherwise answer without a reason:
// key paths it would clean and redirect with a 301 (empty, "." or ".."
// segments, a trailing slash), so a PUT to one fails plainly, and the
// request target "*", which only OPTIONS may use.
func (h *httpAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.RequestURI == "*" {
		http.Error(w, "request target * is only for OPTIONS", http.StatusBadRequest)
		return
	}
	if key, ok := strings.CutPrefix(r.URL.Path, "/keys/"); ok && key != "" && !cleanKey(key) {
		http.Error(w, "key must not contain empty, '.' or '..' path segments, or end in '/'", http.StatusBadRequest)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// putKey handles PUT /keys/{key}: 204 once the write is committed and
// applied on this member.
func (h *httpAPI) putKey(w http.ResponseWriter, r *http.Request) {
	key, ok := keyFrom(w, r)
	if !ok {
		return
	}
	if r.ContentLength > h.maxValueBytes {
		h.valueTooLarge(w)
		return
	}
	value, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxValueBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			h.valueTooLarge(w)
		} else {
			http.Error(w, "reading value: "+err.Error(), http.StatusBadRequest)
		}
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	index, err := h.store.put(ctx, key, value)
	if err != nil {
		h.writeError(w, err)
		return
	}
	setRaftIndex(w, index)
	w.WriteHeader(http.StatusNoContent)
}

func (h *httpAPI) valueTooLarge(w http.ResponseWriter) {
	http.Error(w, fmt.Sprintf("value exceeds %d bytes", h.maxValueBytes), http.StatusRequestEntityTooLarge)
}

// cleanKey reports whether key has no empty, "." or ".." segments (so no
// trailing slash either): the paths ServeMux leaves as they are. It is
// path.Clean's test without building the cleaned path on every request.
func cleanKey(key string) bool {
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// readLevel returns the level a GET's query asks for. It parses strictly:
// r.URL.Query() drops what it cannot parse, which would quietly turn
// "level=consistent;" into a default read. The queries clients send are
// recognised before anything is parsed, so a read allocates nothing here.
func readLevel(rawQuery string) (string, error) {
	switch rawQuery {
	case "":
		return "", nil
	case "level=" + levelStale, "level=" + levelDefault, "level=" + levelConsistent:
		return rawQuery[len("level="):], nil
	}
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return "", fmt.Errorf("bad query: %w", err)
	}
	if len(query["level"]) > 1 {
		return "", errors.New("level given more than once")
	}
	return query.Get("level"), nil
}

// getKey handles GET /keys/{key}?level=stale|default|consistent.
func (h *httpAPI) getKey(w http.ResponseWriter, r *http.Request) {
	key, ok := keyFrom(w, r)
	if !ok {
		return
	}
	level, err := readLevel(r.URL.RawQuery)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	switch level {
	case levelStale:
	case levelDefault, "":
		ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
		defer cancel()
		leader := h.raft.leaderID()
		if leader == raft.None {
			h.writeError(w, ErrNoLeader)
			return
		}
		if leader != h.id {
			h.redirectToLeader(w, r, leader)
			return
		}
		// The leader applies asynchronously: catch up with everything it
		// knows committed, so a write acknowledged by a follower is seen.
		if err := h.store.waitApplied(ctx, h.raft.leaderReadIndex()); err != nil {
			h.writeError(w, err)
			return
		}
	case levelConsistent:
		ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
		defer cancel()
		if err := h.reads.wait(ctx); err != nil {
			h.writeError(w, err)
			return
		}
	default:
		http.Error(w, fmt.Sprintf("unknown level %q: use stale, default or consistent", level), http.StatusBadRequest)
		return
	}
	value, ok := h.store.get(key)
	if !ok {
		http.Error(w, ErrKeyNotFound.Error(), http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(value)
}

// redirectToLeader answers 307 with the same path and query on the leader.
func (h *httpAPI) redirectToLeader(w http.ResponseWriter, r *http.Request, leader uint64) {
	m, ok := h.store.lookupMember(leader)
	if !ok || len(m.ClientURLs) == 0 {
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("leader %d has not published its client URL yet", leader), http.StatusServiceUnavailable)
		return
	}
	target := strings.TrimSuffix(m.ClientURLs[0], "/") + r.URL.RequestURI()
	w.Header().Set("Location", target)
	http.Error(w, "not the leader; redirecting to "+target, http.StatusTemporaryRedirect)
}

// deleteKey handles DELETE /keys/{key}: 204 if the key existed, 404 if
// not, both once the delete is applied on this member.
func (h *httpAPI) deleteKey(w http.ResponseWriter, r *http.Request) {
	key, ok := keyFrom(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	index, err := h.store.delete(ctx, key)
	if index != 0 {
		setRaftIndex(w, index)
	}
	if err != nil {
		h.writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// statusView is the body of GET /status.
type statusView struct {
	ID            uint64 `json:"id"`
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
	case errors.Is(err, ErrMemberExists):
		http.Error(w, oneLine(err), http.StatusConflict)
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrStopped):
		w.Header().Set("Retry-After", "1")
		http.Error(w, oneLine(err), http.StatusServiceUnavailable)
	case errors.Is(err, context.DeadlineExceeded):
		http.Error(w, fmt.Sprintf("timed out after %s: the outcome is unknown, the request may or may not have been applied", h.requestTimeout), http.StatusGatewayTimeout)
	case errors.Is(err, context.Canceled):
		// The client has gone; nobody reads this.
		http.Error(w, "request canceled", http.StatusServiceUnavailable)
	default:
		http.Error(w, oneLine(err), http.StatusInternalServerError)
	}
}

// keyFrom returns the key named by the request path, or answers 400.
func keyFrom(w http.ResponseWriter, r *http.Request) (string, bool) {
	key := r.PathValue("key")
	if len(key) == 0 || len(key) > maxKeyBytes {
		http.Error(w, fmt.Sprintf("key must be 1 to %d bytes", maxKeyBytes), http.StatusBadRequest)
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

func setRaftIndex(w http.ResponseWriter, index uint64) {
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// oneLine keeps error bodies to one line, whatever the error says.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", " ")
}
