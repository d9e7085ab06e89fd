package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/coreos/go-semver/semver"
	"go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
)

// The peer API: raftkv's own read-only routes on the peer port, beside
// rafthttp's (under /raft). A member that starts asks its peers through
// them, before it starts raft, whether it may (bootstrap.go), the way
// etcd's server asks its peers for their member list over the peer port
// (GetClusterFromRemotePeers in etcdserver/cluster_util.go).

// peerAPIPrefix is where the peer API's routes live on the peer port.
const peerAPIPrefix = "/raftkv/"

// peerMembersPath answers GET with the answering member's view of the
// cluster, as peerMembers.
const peerMembersPath = peerAPIPrefix + "members"

// peerMembers is the answer to GET /raftkv/members: the answering member's
// applied member table, and which of those members it is connected to.
type peerMembers struct {
	From      uint64       `json:"from"`      // the answering member's id
	ClusterID string       `json:"clusterID"` // its cluster's ID, in hex, as GET /status shows it
	Members   []peerMember `json:"members"`
}

// peerMember is one member as a peer sees it.
type peerMember struct {
	member
	// Connected is whether the answering member's transport has a working
	// connection with this member right now: rafthttp marks a peer active
	// when a stream or message to it gets through, and inactive when one
	// fails (Transport.ActiveSince). Never true for the answering member.
	Connected bool `json:"connected"`
}

// peerHandler serves the peer port from the moment it is taken, before raft
// runs: the peer API, and rafthttp's routes once the transport exists.
// Until then every rafthttp request gets a 503, for a reason: a peer that
// redials a member killed a moment ago must find that it is gone. A
// connection accepted and never answered would leave the peer's rafthttp
// waiting out its 5 s read timeout with the member still marked active,
// and the member's own restart would be taken for a second process with
// its id (bootstrap.go).
type peerHandler struct {
	id   uint64
	mux  *http.ServeMux
	raft atomic.Pointer[http.Handler] // rafthttp's handler, once raft runs
	view atomic.Pointer[peerView]     // once the member has applied its disk state
}

// peerView is what the peer API answers from.
type peerView struct {
	store     *kvstore
	transport *rafthttp.Transport
	clusterID uint64
}

// newPeerHandler returns member id's peer handler, answering 503 to
// everything until mountRaft and servePeerAPI.
func newPeerHandler(id uint64) *peerHandler {
	h := &peerHandler{id: id, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET "+peerMembersPath, h.members)
	return h
}

// mountRaft hands every request outside the peer API to rafthttp from now on.
func (h *peerHandler) mountRaft(raft http.Handler) { h.raft.Store(&raft) }

// ServeHTTP routes a peer request to the peer API or to rafthttp.
func (h *peerHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, peerAPIPrefix) {
		h.mux.ServeHTTP(w, r)
		return
	}
	if err := checkPeerVersions(r.Header); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if raft := h.raft.Load(); raft != nil {
		(*raft).ServeHTTP(w, r)
		return
	}
	// rafthttp reads an answer without its version header as one from an
	// etcd 2.0 peer, which it does not count as a failure; every rafthttp
	// handler sets it.
	w.Header().Set("X-Server-Version", version.Version)
	http.Error(w, fmt.Sprintf("member %d is starting", h.id), http.StatusServiceUnavailable)
}

// members handles GET /raftkv/members. A member still starting has no
// table to show yet, and says so with a 503.
func (h *peerHandler) members(w http.ResponseWriter, r *http.Request) {
	v := h.view.Load()
	if v == nil {
		http.Error(w, fmt.Sprintf("member %d is starting: its member table is not loaded yet", h.id), http.StatusServiceUnavailable)
		return
	}
	answer := peerMembers{From: h.id, ClusterID: types.ID(v.clusterID).String(), Members: []peerMember{}}
	for _, m := range v.store.memberList() {
		connected := m.ID != h.id && !v.transport.ActiveSince(types.ID(m.ID)).IsZero()
		answer.Members = append(answer.Members, peerMember{member: withLists(m), Connected: connected})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(answer)
}

// servePeerAPI makes the peer API answer from store, once it has applied
// everything this member had on disk: before that its member table could
// lack members, or their client URLs, that the cluster has.
func (rc *raftNode) servePeerAPI(store *kvstore) {
	rc.peers.view.Store(&peerView{store: store, transport: rc.transport, clusterID: rc.clusterID})
}

// ErrBadPeerHeader is a peer request whose version headers do not parse.
var ErrBadPeerHeader = errors.New("bad peer request header")

// checkPeerVersions refuses a request whose rafthttp version headers are
// not versions: rafthttp parses them with semver.Must, so one malformed
// header from anyone who can reach the peer port is a panic (which
// net/http recovers, with a goroutine dump in the log). A missing header
// is fine; rafthttp takes it for etcd 2.0.
func checkPeerVersions(h http.Header) error {
	for _, name := range []string{"X-Server-Version", "X-Min-Cluster-Version"} {
		if v := h.Get(name); v != "" {
			if _, err := semver.NewVersion(v); err != nil {
				return fmt.Errorf("%w: %s %q is not a version", ErrBadPeerHeader, name, v)
			}
		}
	}
	return nil
}
