package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/raft/v3"

	"raftkv/api"
	"raftkv/codec"
	"raftkv/config"
	"raftkv/idempotency"
	"raftkv/keyspace"
	"raftkv/lease"
	"raftkv/listing"
	"raftkv/membership"
	"raftkv/metrics"
	"raftkv/recovery"
	"raftkv/status"
	"raftkv/version"
	"raftkv/watch"
)

// ErrNoKey is a key path that names no key: /keys or /keys/.
var ErrNoKey = errors.New("no key in path: use /keys/{key} (GET /keys/ lists every key)")

// The read levels of GET /keys/{key} and of a listing.
const (
	levelStale      = "stale"      // this member's applied state, however old
	levelDefault    = "default"    // the leader's applied state
	levelConsistent = "consistent" // linearizable, on any member, via ReadIndex
)

// httpAPI is the client API. Writes go through the kvstore into raft and
// answer once applied here; reads are served from the local applied state
// after whatever wait their level asks for. The routes of the features
// (members, watch, backups) are served by their packages' handlers.
type httpAPI struct {
	id             uint64
	clientURL      string // this member's, as it advertises it
	store          *kvstore
	raft           *raftNode
	reads          *readLoop
	requestTimeout time.Duration
	maxValueBytes  int64
	idemWindow     uint64 // --idempotency-window, carried in each keyed entry
	errs           api.Errors
	mux            *api.Mux
	features       features
	metrics        *metrics.Metrics // nil keeps none
	clusterIDValue []string         // the api.ClusterIDHeader of every answer: fixed before the API starts
}

// features are the handlers of the routes the feature packages serve.
type features struct {
	members *membership.API
	watches *watch.Streams
	backups *recovery.Backups
	status  *status.Handler
	leases  *lease.API
}

// newHTTPAPI is the client API of the member whose kvstore, raft node and
// read loop it is given, with the features' routes served by f;
// startServer serves it on the client listener.
func newHTTPAPI(cfg config.Config, store *kvstore, rn *raftNode, reads *readLoop, m *metrics.Metrics, errs api.Errors, f features) *httpAPI {
	h := &httpAPI{
		id:             cfg.ID,
		clientURL:      cfg.ClientURL,
		store:          store,
		raft:           rn,
		reads:          reads,
		requestTimeout: cfg.RequestTimeout,
		maxValueBytes:  cfg.MaxValueBytes,
		idemWindow:     cfg.IdempotencyWindow,
		errs:           errs,
		mux:            api.NewMux(),
		features:       f,
		metrics:        m,
		clusterIDValue: []string{types.ID(rn.clusterID).String()},
	}

	// Every route, with the query parameters and headers it takes.
	// GET (and so HEAD) /keys/{key} reads a key, or lists a prefix when the
	// path ends in '/' (GET /keys/ lists every key).
	h.mux.Handle("PUT /keys/{key...}", api.TakesConditions|api.TakesIdempotencyKey|api.TakesLease, h.writeKey)
	h.mux.Handle("GET /keys/{key...}", api.TakesConditions, h.getKey, "level", "limit", "after", "keys")
	h.mux.Handle("DELETE /keys/{key...}", api.TakesConditions|api.TakesIdempotencyKey, h.writeKey)
	h.mux.Refuse("/keys", ErrNoKey)
	h.mux.Handle("GET /watch/{key...}", 0, f.watches.ServeHTTP, "from", "limit")
	h.mux.Handle("GET /members", 0, f.members.List)
	h.mux.Handle("POST /members", api.TakesIdempotencyKey, f.members.Add)
	h.mux.Handle("GET /members/{id}", 0, f.members.Get)
	h.mux.Handle("DELETE /members/{id}", 0, f.members.Remove)
	h.mux.Handle("POST /members/{id}/promote", 0, f.members.Promote)
	h.mux.Handle("GET /status", 0, f.status.ServeHTTP)
	h.mux.Handle("GET /health", 0, f.members.Health)
	h.mux.Handle("GET /metrics", 0, m.ServeHTTP)
	h.mux.Handle("GET /version", 0, version.Serve)
	h.mux.Handle("GET /snapshot", 0, f.backups.ServeHTTP, "level")
	h.mux.Handle("POST /leases", api.TakesIdempotencyKey, f.leases.Grant)
	h.mux.Handle("GET /leases", 0, f.leases.List)
	h.mux.Handle("GET /leases/{id}", 0, f.leases.Get)
	h.mux.Handle("DELETE /leases/{id}", 0, f.leases.Revoke)
	h.mux.Handle("POST /leases/{id}/keepalive", 0, f.leases.KeepAlive)
	if cfg.EnablePprof {
		// As etcd's --enable-pprof: CPU and heap profiles of a running member.
		h.mux.Handle("GET /debug/pprof/", 0, pprof.Index, "debug", "gc", "seconds")
		h.mux.Handle("GET /debug/pprof/profile", 0, pprof.Profile, "seconds")
	}
	return h
}

// ServeHTTP names the cluster on every answer (for a member joining
// through this one), and routes the request.
func (h *httpAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header()[api.ClusterIDHeader] = h.clusterIDValue
	h.mux.ServeHTTP(w, r)
}

// writeKey handles PUT /keys/{key}, which sets the key to the body, and
// DELETE /keys/{key}. It answers once the write is committed and applied
// on this member: 201 if a PUT created the key, 204 if it replaced a value
// or a DELETE removed it, 404 for a DELETE of an absent key, 412 if its
// If-Match or If-None-Match was false then; with the entry's index and the
// key's version.
//
// This is where a write enters the pipeline: the command, encoded with a
// request id unique in the cluster, goes to the raft node on proposeC,
// and proposeAndWait returns when this member's kvstore has applied it.
func (h *httpAPI) writeKey(w http.ResponseWriter, r *http.Request) {
	put := r.Method == http.MethodPut
	key, ok := keyFrom(w, r)
	if !ok {
		return
	}
	cond, err := keyspace.ParseCondition(r.Header)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	leaseID, err := lease.FromHeader(r.Header)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var value []byte
	if put {
		if value, ok = api.ReadValue(w, r, h.maxValueBytes); !ok {
			return
		}
	}
	// The key's fingerprint covers what decides the write: method, key,
	// value, conditions (however they were written) and lease, if any.
	parts := [][]byte{[]byte(r.Method), []byte(key), value, []byte(cond.IfMatch.String()), []byte(cond.IfNoneMatch.String())}
	if leaseID != 0 {
		parts = append(parts, strconv.AppendUint(nil, leaseID, 10))
	}
	idem, err := idempotency.KeyOf(r.Header, h.idemWindow, parts...)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	id := h.store.requestIDs.Next()
	o, err := proposeAndWait(ctx, h.store, id, h.store.proposeC, proposal{requestID: id, data: codec.EncodeWrite(id, put, key, value, cond, idem, leaseID), key: key})

	if o.Index != 0 {
		api.SetRaftIndex(w, o.Index)
	}
	if o.HasVersion {
		setVersion(w, o.Version)
	}
	if o.replayed {
		w.Header().Set("Idempotent-Replayed", "true")
		h.metrics.ReplayAnswered()
	}
	switch {
	case err == nil && o.Created:
		w.WriteHeader(http.StatusCreated)
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, keyspace.ErrKeyNotFound), errors.Is(err, lease.ErrNotFound):
		http.Error(w, api.OneLine(err), http.StatusNotFound)
	case errors.Is(err, keyspace.ErrPreconditionFailed):
		http.Error(w, api.OneLine(err), http.StatusPreconditionFailed)
	default:
		h.errs.Write(w, err)
	}
}

// getKey handles GET /keys/{key}?level=stale|default|consistent, and HEAD,
// which ServeMux routes here too: the same status and headers, no body.
// If-None-Match that matches is 304, If-Match that does not is 412.
func (h *httpAPI) getKey(w http.ResponseWriter, r *http.Request) {
	level, err := readLevel(r.URL.RawQuery)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if prefix := r.PathValue("key"); prefix == "" || strings.HasSuffix(prefix, "/") {
		listing.Serve(w, r, prefix, func(w http.ResponseWriter, r *http.Request) bool { return h.awaitLevel(w, r, level) }, h.store.list)
		return
	}
	for _, param := range []string{"limit", "after", "keys"} {
		if _, ok := api.QueryValue(r.URL.RawQuery, param); ok {
			http.Error(w, fmt.Sprintf("query parameter %q is for a listing: a path ending in '/'", param), http.StatusBadRequest)
			return
		}
	}
	key, ok := keyFrom(w, r)
	if !ok {
		return
	}
	cond, err := keyspace.ParseCondition(r.Header)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !h.awaitLevel(w, r, level) {
		return
	}
	v, applied, ok := h.store.get(key)
	api.SetRaftIndex(w, applied)
	if ok {
		setVersion(w, v.Version)
		if v.Lease != 0 {
			w.Header().Set("Lease", strconv.FormatUint(v.Lease, 10))
		}
	}
	switch {
	case cond.IfMatch.Given() && !(ok && cond.IfMatch.Matches(v.ModIndex, true)):
		http.Error(w, keyspace.ErrPreconditionFailed.Error()+": If-Match", http.StatusPreconditionFailed)
		return
	case !ok:
		http.Error(w, keyspace.ErrKeyNotFound.Error(), http.StatusNotFound)
		return
	case cond.IfNoneMatch.Given() && cond.IfNoneMatch.Matches(v.ModIndex, false):
		w.WriteHeader(http.StatusNotModified)
		return
	}
	// Set, not left to the server: it counts only a body short enough to
	// buffer whole, and a HEAD writes none.
	w.Header().Set("Content-Length", strconv.Itoa(len(v.Data)))
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method != http.MethodHead {
		io.WriteString(w, v.Data)
	}
}

// readLevel returns the level a GET's query asks for, levelDefault if it
// names none. The query is one api.CheckQuery accepted (level, and for a
// listing limit, after and keys), so reading it allocates nothing.
func readLevel(rawQuery string) (string, error) {
	level, ok := api.QueryValue(rawQuery, "level")
	switch {
	case !ok:
		return levelDefault, nil
	case level == levelStale, level == levelDefault, level == levelConsistent:
		return level, nil
	}
	return "", fmt.Errorf("unknown level %q: use stale, default or consistent", level)
}

// awaitLevel waits until this member may serve a read at level, or
// answers for it: a redirect to the leader, or why it cannot.
func (h *httpAPI) awaitLevel(w http.ResponseWriter, r *http.Request, level string) bool {
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	switch level {
	case levelDefault:
		leader := h.raft.Leader()
		if leader == raft.None {
			h.errs.Write(w, api.ErrNoLeader)
			return false
		}
		if leader != h.id {
			redirectToLeader(w, r, h.store.Table(), leader)
			return false
		}
		// The leader applies asynchronously: catch up with everything it
		// knows committed, so a write acknowledged by a follower is seen.
		if err := h.store.WaitApplied(ctx, h.raft.leaderCatchUpIndex()); err != nil {
			h.errs.Write(w, err)
			return false
		}
	case levelConsistent:
		if err := h.reads.WaitLinearizable(ctx); err != nil {
			h.errs.Write(w, err)
			return false
		}
	}
	return true
}

// redirectToLeader answers 307 with the same path and query on the
// leader, by its client URL in the member table.
func redirectToLeader(w http.ResponseWriter, r *http.Request, table *membership.Table, leader uint64) {
	m, ok := table.Lookup(leader)
	if !ok || len(m.ClientURLs) == 0 {
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("leader %d has not advertised its client URL yet", leader), http.StatusServiceUnavailable)
		return
	}
	target := strings.TrimSuffix(m.ClientURLs[0], "/") + r.URL.RequestURI()
	w.Header().Set("Location", target)
	http.Error(w, "not the leader; redirecting to "+target, http.StatusTemporaryRedirect)
}

// keyFrom returns the key named by the request path, or answers 400.
func keyFrom(w http.ResponseWriter, r *http.Request) (string, bool) {
	key := r.PathValue("key")
	switch {
	case key == "":
		http.Error(w, ErrNoKey.Error(), http.StatusBadRequest)
		return "", false
	case len(key) > keyspace.MaxKeyBytes:
		http.Error(w, fmt.Sprintf("key must be 1 to %d bytes", keyspace.MaxKeyBytes), http.StatusBadRequest)
		return "", false
	case strings.HasSuffix(key, "/"):
		http.Error(w, "key must not end in '/': a path ending in '/' names a prefix, which GET lists", http.StatusBadRequest)
		return "", false
	}
	return key, true
}

// setVersion sets the headers that give a key's version: its ETag, the
// modIndex, and X-Create-Index.
func setVersion(w http.ResponseWriter, v keyspace.Version) {
	w.Header().Set("ETag", keyspace.ETag(v.ModIndex))
	w.Header().Set("X-Create-Index", strconv.FormatUint(v.CreateIndex, 10))
}
