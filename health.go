package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"

	"go.etcd.io/raft/v3"
)

// Readiness: /health says ok only when this member could serve any request
// now. Knowing a leader is not enough. A follower answers a default read
// with a redirect to the leader's client URL, which it knows only once the
// leader has advertised it through the log (kvstore.advertiseClientURL); and
// should this member lead, the others can redirect to it only once it has
// advertised its own. Right after a cluster starts, a leader is known a
// moment before either URL is applied.

// Why a member is not ready.
var (
	// ErrNotAdvertised is a member whose client URL the member table does
	// not show yet.
	ErrNotAdvertised = errors.New("has not advertised its client URL yet")
	// ErrLeaderUnreachable is a learner cut off from the leader it names.
	ErrLeaderUnreachable = errors.New("cannot reach the leader")
)

// getHealth handles GET /health: 200 ok when ready says so; otherwise 503
// with Retry-After and the reason.
func (h *httpAPI) getHealth(w http.ResponseWriter, r *http.Request) {
	if err := h.ready(); err != nil {
		w.Header().Set("Retry-After", "1")
		http.Error(w, oneLine(err), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

// ready returns nil when this member could serve any request now: a leader
// is known, the leader's client URL is known (a default read can be
// redirected), and this member's own client URL is in the member table.
//
// A voter that stops hearing from its leader campaigns after an election
// timeout, and so forgets the leader. A learner never campaigns: raft lets
// it name a leader it lost long ago, so for a learner only the peer
// transport can tell that the leader is still there.
func (h *httpAPI) ready() error {
	leader := h.raft.leaderID()
	if leader == raft.None {
		return ErrNoLeader
	}
	if self, ok := h.store.lookupMember(h.id); ok && self.IsLearner && !h.raft.peerConnected(leader) {
		return fmt.Errorf("this member (%d) is a learner and %w, member %d", h.id, ErrLeaderUnreachable, leader)
	}
	if m, ok := h.store.lookupMember(leader); !ok || len(m.ClientURLs) == 0 {
		return fmt.Errorf("leader %d %w", leader, ErrNotAdvertised)
	}
	if !h.store.hasClientURL(h.id, h.clientURL) {
		return fmt.Errorf("this member (%d) %w", h.id, ErrNotAdvertised)
	}
	return nil
}
