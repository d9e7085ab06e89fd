// Package api is what every route of the client API shares: the routing
// (Mux) with the checks each request passes before its handler runs (no
// unknown query parameter, no condition a route cannot evaluate, no path
// that ServeMux would rewrite), the answers (JSON, one-line errors, the
// X-Raft-Index header) and the status each error is answered with. The
// spine's httpapi.go registers every route on one Mux; the feature
// packages' handlers answer through the same helpers.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"raftkv/idempotency"
)

// Errors any request that needs raft can end with.
var (
	// ErrNoLeader is a request that needs a leader when none is known, or
	// a proposal raft refused (no leader, a leadership transfer under way,
	// the leader's log of uncommitted entries full): never logged, so
	// never applied. The raft node and the read loop answer with it.
	ErrNoLeader = errors.New("no leader")
	// ErrStopped is a request cut short by the member stopping.
	ErrStopped = errors.New("server is shutting down")
)

// ClusterIDHeader carries the cluster ID on every answer, as etcd sets
// X-Etcd-Cluster-ID on its own: a joining member learns from it which
// cluster it joined.
const ClusterIDHeader = "X-Raftkv-Cluster-Id"

// Mux routes the client API's requests. Every route is registered with
// Handle, which names the query parameters and headers it takes, so that
// a route added later declares what it takes where it is registered.
type Mux struct {
	mux *http.ServeMux
}

// NewMux returns a Mux with no routes: every request is a 404 or a 405.
func NewMux() *Mux {
	m := &Mux{mux: http.NewServeMux()}
	m.mux.HandleFunc("/", m.noRoute)
	return m
}

// Handle registers handler for pattern, taking only the query parameters
// named in params (at most 64) and the headers in t: a request with
// another parameter, or with a condition or Idempotency-Key the route
// does not take, is answered 400 and never reaches handler.
func (m *Mux) Handle(pattern string, t Takes, handler http.HandlerFunc, params ...string) {
	m.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if err := CheckQuery(r.URL.RawQuery, params); err != nil {
			http.Error(w, OneLine(err), http.StatusBadRequest)
			return
		}
		if err := CheckPreconditions(r, t); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		handler(w, r)
	})
}

// Refuse registers a pattern that names nothing, answered 400 with why.
func (m *Mux) Refuse(pattern string, why error) {
	m.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, why.Error(), http.StatusBadRequest)
	})
}

// ServeHTTP refuses what ServeMux would otherwise answer without a reason:
// the request target "*", which only OPTIONS may use, and paths it would
// clean and redirect (see UncleanPath), so a PUT to one fails plainly.
// An absolute-form target without a path ("GET http://host") would be
// redirected to "/", where no route is.
func (m *Mux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.RequestURI == "*" {
		http.Error(w, "request target * is only for OPTIONS", http.StatusBadRequest)
		return
	}
	if r.URL.Path == "" {
		m.noRoute(w, r)
		return
	}
	if reason := UncleanPath(r.URL.Path); reason != "" {
		http.Error(w, reason, http.StatusBadRequest)
		return
	}
	m.mux.ServeHTTP(w, r)
}

// noRoute answers a request that no route takes, in place of ServeMux's
// own bare "404 page not found" and "Method Not Allowed": 405 with an
// Allow header if routes take the path with other methods, else 404.
// It is registered for "/", so ServeMux hands it every such request.
func (m *Mux) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost, http.MethodDelete} {
		probe := &http.Request{Method: method, URL: r.URL, Host: r.Host}
		if _, pattern := m.mux.Handler(probe); pattern != "/" {
			allow = append(allow, method)
		}
	}
	if len(allow) == 0 {
		http.Error(w, fmt.Sprintf("unknown path %q", r.URL.Path), http.StatusNotFound)
		return
	}
	w.Header().Set("Allow", strings.Join(allow, ", "))
	http.Error(w, fmt.Sprintf("%s is not allowed on %q: use %s", r.Method, r.URL.Path, strings.Join(allow, ", ")), http.StatusMethodNotAllowed)
}

// SetRaftIndex sets X-Raft-Index, the raft index an answer reflects: the
// entry a write was applied at, or the index of the state a read, listing
// or copy was taken from.
func SetRaftIndex(w http.ResponseWriter, index uint64) {
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
}

// WriteJSON answers code with v as JSON. An error encoding to a client
// that went away has nobody to tell.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// OneLine keeps error bodies to one line, whatever the error says.
func OneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// Errors answers the errors any route can end with, and logs its 5xx
// answers.
type Errors struct {
	log            *zap.Logger   // see ServerError
	requestTimeout time.Duration // named in a 504's reason
}

// NewErrors answers errors for a member whose requests wait for raft for
// requestTimeout at most, logging 5xx answers to log.
func NewErrors(log *zap.Logger, requestTimeout time.Duration) Errors {
	return Errors{log: log, requestTimeout: requestTimeout}
}

// Write answers err with the status it calls for and a one-line reason.
// A route answers the errors of its own domain (a key not found, a member
// that exists) itself, and hands the rest here.
func (e Errors) Write(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, idempotency.ErrKeyReused):
		http.Error(w, OneLine(err), http.StatusUnprocessableEntity)
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrStopped):
		w.Header().Set("Retry-After", "1")
		e.ServerError(w, OneLine(err), http.StatusServiceUnavailable)
	case errors.Is(err, context.DeadlineExceeded):
		e.ServerError(w, fmt.Sprintf("timed out after %s: the outcome is unknown, the request may or may not have been applied", e.requestTimeout), http.StatusGatewayTimeout)
	case errors.Is(err, context.Canceled):
		// The client has gone; nobody reads this, and it is no fault of
		// this member's, so it is not logged either.
		http.Error(w, "request canceled", http.StatusServiceUnavailable)
	default:
		e.ServerError(w, OneLine(err), http.StatusInternalServerError)
	}
}

// ServerError answers a 5xx and logs it as a warning: the client was told
// nothing definite, and the reason says why (no leader, a timeout, the
// member stopping). The log is sampled (logging.NewAnswerLogger): not
// every such answer gets a line.
func (e Errors) ServerError(w http.ResponseWriter, reason string, code int) {
	e.log.Warn(fmt.Sprintf("answered %d %s", code, http.StatusText(code)), zap.String("reason", reason))
	http.Error(w, reason, code)
}
