package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/coreos/go-semver/semver"
	"go.etcd.io/etcd/api/v3/version"

	"raftkv/membership"
)

// The peer API: raftkv's own read-only routes on the peer port, beside
// rafthttp's (under /raft). A member that starts asks its peers through
// them, before it starts raft, whether it may (Check), the way etcd's
// server asks its peers for their member list over the peer port
// (GetClusterFromRemotePeers in etcdserver/cluster_util.go).

// PeerAPIPrefix is where the peer API's routes live on the peer port.
const PeerAPIPrefix = "/raftkv/"

// MembersPath answers GET with the answering member's view of the
// cluster, as an Answer.
const MembersPath = PeerAPIPrefix + "members"

// Answer is the answer to GET /raftkv/members: the answering member's
// applied member table, and which of those members it is connected to.
type Answer struct {
	From      uint64       `json:"from"`      // the answering member's id
	ClusterID string       `json:"clusterID"` // its cluster's ID, in hex, as GET /status shows it
	Members   []PeerMember `json:"members"`
}

// PeerMember is one member as a peer sees it.
type PeerMember struct {
	membership.Member
	// Connected is whether the answering member's transport has a working
	// connection with this member right now: rafthttp marks a peer active
	// when a stream or message to it gets through, and inactive when one
	// fails (Transport.ActiveSince). Never true for the answering member.
	Connected bool `json:"connected"`
}

// PeerHandler serves the peer port from the moment it is taken, before raft
// runs: the peer API, and rafthttp's routes once the transport exists.
// Until then every rafthttp request gets a 503, for a reason: a peer that
// redials a member killed a moment ago must find that it is gone. A
// connection accepted and never answered would leave the peer's rafthttp
// waiting out its 5 s read timeout with the member still marked active,
// and the member's own restart would be taken for a second process with
// its id (Check).
type PeerHandler struct {
	id      uint64
	mux     *http.ServeMux
	raft    atomic.Pointer[http.Handler]  // rafthttp's handler, once raft runs
	members atomic.Pointer[func() Answer] // once the member has applied its disk state
}

// NewPeerHandler returns member id's peer handler, answering 503 to
// everything until MountRaft and ServeMembers.
func NewPeerHandler(id uint64) *PeerHandler {
	h := &PeerHandler{id: id, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET "+MembersPath, h.serveMembers)
	return h
}

// MountRaft hands every request outside the peer API to rafthttp from now on.
func (h *PeerHandler) MountRaft(raft http.Handler) { h.raft.Store(&raft) }

// ServeHTTP routes a peer request to the peer API or to rafthttp.
func (h *PeerHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, PeerAPIPrefix) {
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

// serveMembers handles GET /raftkv/members. A member still starting has
// no table to show yet, and says so with a 503.
func (h *PeerHandler) serveMembers(w http.ResponseWriter, r *http.Request) {
	members := h.members.Load()
	if members == nil {
		http.Error(w, fmt.Sprintf("member %d is starting: its member table is not loaded yet", h.id), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode((*members)())
}

// ServeMembers answers GET /raftkv/members from members from now on: once
// the member has applied everything it had on disk, since before that its
// member table could lack members, or their client URLs, that the cluster
// has.
func (h *PeerHandler) ServeMembers(members func() Answer) { h.members.Store(&members) }

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
