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

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/raft/v3"
	"go.uber.org/zap"
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
	store          *kvstore
	raft           *raftNode
	reads          *readLoop
	requestTimeout time.Duration
	maxValueBytes  int64
	answerLog      *zap.Logger // 5xx answers (see serverError)
	mux            *http.ServeMux
}

func newHTTPAPI(cfg config, store *kvstore, rn *raftNode, reads *readLoop) *httpAPI {
	h := &httpAPI{
		id:             cfg.id,
		store:          store,
		raft:           rn,
		reads:          reads,
		requestTimeout: cfg.requestTimeout,
		maxValueBytes:  cfg.maxValueBytes,
		answerLog:      newAnswerLogger(store.lg),
		mux:            http.NewServeMux(),
	}
	h.mux.HandleFunc("PUT /keys/{key...}", h.putKey)
	h.mux.HandleFunc("GET /keys/{key...}", h.getKey)
	h.mux.HandleFunc("DELETE /keys/{key...}", h.deleteKey)
	h.mux.HandleFunc("GET /members", h.listMembers)
	h.mux.HandleFunc("POST /members", h.addMember)
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

// memberView is a member as GET /members shows it.
type memberView struct {
	member
	IsLeader bool `json:"isLeader"`
}

// listMembers handles GET /members.
func (h *httpAPI) listMembers(w http.ResponseWriter, r *http.Request) {
	leader := h.raft.leaderID()
	views := []memberView{}
	for _, m := range h.store.memberList() {
		views = append(views, memberView{member: withLists(m), IsLeader: m.ID == leader})
	}
	writeJSON(w, http.StatusOK, views)
}

// addMemberRequest is the body of POST /members.
type addMemberRequest struct {
	ID        uint64 `json:"id"`
	PeerURL   string `json:"peerURL"`
	ClientURL string `json:"clientURL"`
}

// addMember handles POST /members: 201 once the new voter is applied here.
// The new member must then be started with --join.
func (h *httpAPI) addMember(w http.ResponseWriter, r *http.Request) {
	var req addMemberRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxMemberBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		http.Error(w, "bad member JSON: "+oneLine(err), http.StatusBadRequest)
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		http.Error(w, "bad member JSON: data after the object", http.StatusBadRequest)
		return
	}
	m, err := req.validate()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := h.checkNewMember(m); err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	index, err := h.store.addMember(ctx, m)
	if err != nil {
		h.writeError(w, err)
		return
	}
	setRaftIndex(w, index)
	w.Header().Set("Location", fmt.Sprintf("/members/%d", m.ID))
	writeJSON(w, http.StatusCreated, withLists(m))
}

// validate checks a POST /members body and returns the member it names.
func (req addMemberRequest) validate() (member, error) {
	if req.ID < 1 || req.ID > maxMemberID {
		return member{}, fmt.Errorf("id must be between 1 and %d", maxMemberID)
	}
	if _, err := types.NewURLs([]string{req.PeerURL}); err != nil {
		return member{}, fmt.Errorf("bad peerURL %q: %v", req.PeerURL, err)
	}
	m := member{ID: req.ID, PeerURLs: []string{req.PeerURL}}
	if req.ClientURL != "" {
		if err := validateClientURL(req.ClientURL); err != nil {
			return member{}, fmt.Errorf("bad clientURL %q: %v", req.ClientURL, err)
		}
		m.ClientURLs = []string{req.ClientURL}
	}
	return m, nil
}

// checkNewMember refuses, before anything is proposed, an id or peer URL
// the cluster already uses, and ids of removed members: their old process
// may still be running, and peers turn their messages away.
func (h *httpAPI) checkNewMember(m member) error {
	if _, ok := h.store.lookupMember(m.ID); ok {
		return fmt.Errorf("member %d: %w", m.ID, ErrMemberExists)
	}
	if h.store.isIDRemoved(m.ID) {
		return fmt.Errorf("member %d was removed; member ids cannot be reused", m.ID)
	}
	for _, other := range h.store.memberList() {
		for _, u := range other.PeerURLs {
			if u == m.PeerURLs[0] {
				return fmt.Errorf("peer URL %s is used by member %d", u, other.ID)
			}
		}
	}
	return nil
}

// removeMember handles DELETE /members/{id}: 204 once applied here. The
// removed member stops itself when it learns of it.
func (h *httpAPI) removeMember(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		http.Error(w, fmt.Sprintf("bad member id %q", r.PathValue("id")), http.StatusBadRequest)
		return
	}
	if _, ok := h.store.lookupMember(id); !ok {
		http.Error(w, fmt.Sprintf("member %d: %s", id, ErrMemberNotFound), http.StatusNotFound)
		return
	}
	if len(h.store.memberList()) == 1 {
		http.Error(w, "cannot remove the only member", http.StatusConflict)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	index, err := h.store.removeMember(ctx, id)
	if err != nil {
		h.writeError(w, err)
		return
	}
	setRaftIndex(w, index)
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

// getHealth handles GET /health: healthy means a leader is known.
func (h *httpAPI) getHealth(w http.ResponseWriter, r *http.Request) {
	if h.raft.leaderID() == raft.None {
		w.Header().Set("Retry-After", "1")
		http.Error(w, ErrNoLeader.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
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
	if len(key) == 0 || len(key) > maxKeyBytes {
		http.Error(w, fmt.Sprintf("key must be 1 to %d bytes", maxKeyBytes), http.StatusBadRequest)
		return "", false
	}
	return key, true
}

// validateClientURL checks a URL clients can be redirected to.
func validateClientURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return err
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("scheme must be http or https")
	case u.Port() == "":
		return errors.New("must have a host and a port")
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "":
		return errors.New("must have no path, query or fragment")
	}
	return nil
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
