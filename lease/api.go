package lease

import (
	"cmp"
	"context"
	b64 "encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"raftkv/api"
	"raftkv/idempotency"
)

// maxBodyBytes bounds the body of POST /leases.
const maxBodyBytes = 4 << 10

// Cluster is what the /leases routes need of the raft server, beside the
// lessor's Server.
type Cluster interface {
	Server
	// Leader is the member this one believes leads, or 0.
	Leader() uint64
	// RedirectToLeader answers 307 with the same request on the leader.
	RedirectToLeader(w http.ResponseWriter, r *http.Request, leader uint64)
}

// API is the /leases routes: POST /leases grants, DELETE /leases/{id}
// revokes, on any member; GET /leases, GET /leases/{id} and POST
// /leases/{id}/keepalive are the leader's, which alone knows when each
// lease ends, and a follower answers them with a redirect to it.
type API struct {
	self           uint64
	cluster        Cluster
	lessor         *Lessor
	minTTL         time.Duration
	requestTimeout time.Duration
	idemWindow     uint64
	errs           api.Errors
	replayed       func() // counts an answer with Idempotent-Replayed: true
}

// NewAPI serves the /leases routes of member self. minTTL is the
// shortest TTL it grants: etcd's, 1.5 election timeouts rounded up to a
// second, since a leader lost takes that long to replace.
func NewAPI(self uint64, cluster Cluster, lessor *Lessor, minTTL, requestTimeout time.Duration, idemWindow uint64, errs api.Errors, replayed func()) *API {
	return &API{self: self, cluster: cluster, lessor: lessor, minTTL: minTTL, requestTimeout: requestTimeout, idemWindow: idemWindow, errs: errs, replayed: replayed}
}

// MinTTL is the shortest TTL granted to a cluster whose election timeout
// is electionTimeout: 1.5 of it, in whole seconds, as etcd's.
func MinTTL(electionTimeout time.Duration) time.Duration {
	return time.Duration(math.Ceil((electionTimeout * 3 / 2).Seconds())) * time.Second
}

// view is a lease as the routes show it.
type view struct {
	ID        uint64   `json:"id"`
	TTL       int64    `json:"ttl"`                  // seconds
	Remaining *int64   `json:"remaining,omitempty"`  // seconds before the leader ends it, rounded up
	Keys      []string `json:"keys,omitempty"`       // the keys attached, in order, that are UTF-8
	KeysB64   []string `json:"keysBase64,omitempty"` // and those that are not, in base64
}

// grantRequest is the body of POST /leases.
type grantRequest struct {
	TTL *int64 `json:"ttl"`
}

// writeError answers err: a lease not found with a 404, the rest as
// api.Errors does.
func (a *API) writeError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrNotFound) {
		http.Error(w, api.OneLine(err), http.StatusNotFound)
		return
	}
	a.errs.Write(w, err)
}

// Grant handles POST /leases {"ttl": N}: 201 with the lease, once its grant
// is applied here, and Location: /leases/{id}. The id is the index of the
// entry that granted it.
func (a *API) Grant(w http.ResponseWriter, r *http.Request) {
	var req grantRequest
	if !api.ReadJSON(w, r, maxBodyBytes, "lease", &req) {
		return
	}
	switch {
	case req.TTL == nil:
		http.Error(w, `bad lease JSON: give {"ttl": N}, N in seconds`, http.StatusBadRequest)
		return
	case time.Duration(*req.TTL)*time.Second < a.minTTL || *req.TTL > int64(MaxTTL/time.Second):
		http.Error(w, fmt.Sprintf("ttl %d: must be %d to %d seconds (the shortest is 1.5 election timeouts, rounded up)", *req.TTL, a.minTTL/time.Second, MaxTTL/time.Second), http.StatusBadRequest)
		return
	}
	ttl := uint64(*req.TTL)
	idem, err := idempotency.KeyOf(r.Header, a.idemWindow, []byte("POST"), []byte("/leases"), strconv.AppendUint(nil, ttl, 10))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.requestTimeout)
	defer cancel()
	answer, replayed, err := a.cluster.ProposeLease(ctx, Command{Kind: Grant, TTL: time.Duration(ttl) * time.Second, Idem: idem})
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
		a.replayed()
	}
	if err != nil {
		a.writeError(w, err)
		return
	}
	api.SetRaftIndex(w, answer.Index)
	w.Header().Set("Location", fmt.Sprintf("/leases/%d", answer.Index))
	api.WriteJSON(w, http.StatusCreated, view{ID: answer.Index, TTL: int64(ttl)})
}

// Revoke handles DELETE /leases/{id}: 204 once the lease and its keys are
// deleted here, 404 if there is no such lease.
func (a *API) Revoke(w http.ResponseWriter, r *http.Request) {
	id, ok := idFrom(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.requestTimeout)
	defer cancel()
	answer, _, err := a.cluster.ProposeLease(ctx, Command{Kind: Revoke, ID: id})
	if answer.Index != 0 {
		api.SetRaftIndex(w, answer.Index)
	}
	if err != nil {
		a.writeError(w, fmt.Errorf("lease %d: %w", id, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// KeepAlive handles POST /leases/{id}/keepalive: 200 with the lease, its
// TTL counted again from now; 404 once it is gone.
func (a *API) KeepAlive(w http.ResponseWriter, r *http.Request) {
	id, ok := idFrom(w, r)
	if !ok || !a.onLeader(w, r) {
		return
	}
	if b, _ := io.ReadAll(io.LimitReader(r.Body, 1)); len(b) > 0 {
		http.Error(w, "POST /leases/{id}/keepalive takes no body", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.requestTimeout)
	defer cancel()
	info, err := a.lessor.KeepAlive(ctx, id)
	if err != nil {
		a.writeError(w, fmt.Errorf("lease %d: %w", id, err))
		return
	}
	api.WriteJSON(w, http.StatusOK, view{ID: info.ID, TTL: int64(info.TTL / time.Second)})
}

// Get handles GET /leases/{id}: the lease, how long it has left, and its
// keys.
func (a *API) Get(w http.ResponseWriter, r *http.Request) {
	id, ok := idFrom(w, r)
	if !ok || !a.onLeader(w, r) {
		return
	}
	info, ok := a.cluster.Lease(id)
	if !ok {
		a.writeError(w, fmt.Errorf("lease %d: %w", id, ErrNotFound))
		return
	}
	v := a.viewOf(info)
	for _, k := range info.Keys {
		if utf8.ValidString(k) {
			v.Keys = append(v.Keys, k)
		} else {
			v.KeysB64 = append(v.KeysB64, b64.StdEncoding.EncodeToString([]byte(k)))
		}
	}
	if v.Keys == nil && v.KeysB64 == nil {
		v.Keys = []string{}
	}
	api.WriteJSON(w, http.StatusOK, v)
}

// List handles GET /leases: every lease, ordered by id, with how long it
// has left.
func (a *API) List(w http.ResponseWriter, r *http.Request) {
	if !a.onLeader(w, r) {
		return
	}
	leases := a.cluster.Leases()
	slices.SortFunc(leases, func(x, y Info) int { return cmp.Compare(x.ID, y.ID) })
	views := []view{}
	for _, info := range leases {
		views = append(views, a.viewOf(info))
	}
	api.WriteJSON(w, http.StatusOK, views)
}

// viewOf is info with how long it has left, in whole seconds rounded up.
func (a *API) viewOf(info Info) view {
	remaining := int64(math.Ceil(a.lessor.Remaining(info).Seconds()))
	return view{ID: info.ID, TTL: int64(info.TTL / time.Second), Remaining: &remaining}
}

// onLeader reports whether this member leads and has applied everything
// earlier leaders committed; a follower answers with a redirect to the
// leader instead, and a member that knows no leader with a 503.
func (a *API) onLeader(w http.ResponseWriter, r *http.Request) bool {
	leader := a.cluster.Leader()
	switch {
	case leader == 0:
		a.writeError(w, api.ErrNoLeader)
		return false
	case leader != a.self:
		a.cluster.RedirectToLeader(w, r, leader)
		return false
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.requestTimeout)
	defer cancel()
	if _, err := a.cluster.LeaderReady(ctx); err != nil {
		a.writeError(w, err)
		return false
	}
	return true
}

// FromHeader is the lease a PUT's Lease header names, 0 if it has none.
func FromHeader(h http.Header) (uint64, error) {
	lines, ok := h["Lease"]
	if !ok {
		return 0, nil
	}
	id, err := strconv.ParseUint(strings.TrimSpace(lines[0]), 10, 64)
	if len(lines) != 1 || err != nil || id == 0 {
		return 0, fmt.Errorf("Lease: %q is not a lease id (a number from 1 up, given once)", strings.Join(lines, ", "))
	}
	return id, nil
}

// idFrom returns the lease id the request path names, or answers 400.
func idFrom(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		http.Error(w, fmt.Sprintf("bad lease id %q: a lease id is a number from 1 up", r.PathValue("id")), http.StatusBadRequest)
		return 0, false
	}
	return id, true
}
