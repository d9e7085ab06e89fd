package main

import (
	"errors"
	"fmt"
	"net/http"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/raft/v3"
)

// Strict reconfiguration, as etcd's --strict-reconfig-check: a change to
// the voters is refused, before anything is proposed, when it would leave
// fewer healthy voters than a quorum of the new configuration.
//
// Raft commits a conf change with a quorum of the configuration before it,
// and from the moment it is applied needs a quorum of the one after. Add
// three voters that never start to a cluster of three and it has six voters
// with three alive: no quorum, so it cannot commit anything, not even the
// removal that would undo the mistake. Remove a live voter while another is
// down and the same happens with fewer members.
//
// A member counts as healthy when the member that checks is connected to
// it (see peerConnected), so a member that was added but never started is
// not healthy. etcd also asks that the connection be five seconds old, to
// ride out a flapping link; raftkv counts a peer from the moment its
// connection is up, since raft replicates to it from that moment, so that
// a change right after a member restarts is not refused.
//
// Only voters count. A learner (learner.go) is in no quorum: adding or
// removing one never risks the quorum, and is never refused for it, while
// promoting one adds a voter and is checked as an add is, the learner
// counting as healthy (it must be connected to the leader to be promoted).
//
// Every check answers ErrNoLeader first when no leader is known: then no
// change can commit, as no write can, and a member cut off from the rest
// would take every other member for down.

// ErrTooFewHealthy is a membership change refused because the voters it
// would leave could not form a quorum.
var ErrTooFewHealthy = errors.New("too few healthy voters")

// quorum is how many of n voters raft needs to elect a leader or commit.
func quorum(n int) int { return n/2 + 1 }

// mayAddMember refuses to add m if the healthy voters would then be fewer
// than a quorum of the new size. A lone voter may add a second, as etcd
// allows: a cluster of one can grow no other way, and until the second
// member starts it cannot commit, whatever the check says.
func (h *httpAPI) mayAddMember(m member) error {
	if h.raft.leaderID() == raft.None {
		return ErrNoLeader
	}
	if m.IsLearner {
		return nil
	}
	voters := h.store.voters()
	if len(voters) == 1 {
		return nil
	}
	n, healthy := len(voters)+1, h.countHealthy(voters, m.ID)
	if healthy < quorum(n) {
		return fmt.Errorf("%w: adding member %d would make %d voters, %d of them healthy, and a quorum is %d; start or remove the members that are down first",
			ErrTooFewHealthy, m.ID, n, healthy, quorum(n))
	}
	return nil
}

// mayRemoveMember refuses to remove member id if the healthy voters left
// would be fewer than a quorum of those left. Removing a member that is
// down is always allowed when the rest are up: it is how a cluster drops a
// member that will not come back.
func (h *httpAPI) mayRemoveMember(id uint64) error {
	if h.raft.leaderID() == raft.None {
		return ErrNoLeader
	}
	if m, ok := h.store.lookupMember(id); ok && m.IsLearner {
		return nil
	}
	voters := h.store.voters()
	n, healthy := len(voters)-1, h.countHealthy(voters, id)
	if healthy < quorum(n) {
		return fmt.Errorf("%w: removing member %d would leave %d voters, %d of them healthy, and a quorum is %d; start the members that are down first",
			ErrTooFewHealthy, id, n, healthy, quorum(n))
	}
	return nil
}

// mayPromoteMember refuses to promote learner id until it has caught up
// with the leader (learnerReady), and then, as an add of a voter, if the
// healthy voters would be fewer than a quorum of the new size. It runs on
// the leader.
func (h *httpAPI) mayPromoteMember(id uint64) error {
	if h.raft.leaderID() == raft.None {
		return ErrNoLeader
	}
	if err := h.raft.learnerReady(id); err != nil {
		return err
	}
	voters := h.store.voters()
	// learnerReady found the learner connected: it is healthy.
	n, healthy := len(voters)+1, h.countHealthy(voters, id)+1
	if healthy < quorum(n) {
		return fmt.Errorf("%w: promoting member %d would make %d voters, %d of them healthy, and a quorum is %d; start or remove the members that are down first",
			ErrTooFewHealthy, id, n, healthy, quorum(n))
	}
	return nil
}

// refuseChange answers a membership change refused before anything was
// proposed: 409 for too few healthy voters, or a learner that is not
// ready to be promoted; 503, to be retried, when no leader is known or the
// leader could not hand over (handOffLeadership).
func (h *httpAPI) refuseChange(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrTooFewHealthy), errors.Is(err, ErrLearnerNotReady), errors.Is(err, ErrNotLearner):
		http.Error(w, oneLine(err), http.StatusConflict)
	case errors.Is(err, ErrLeaderTransfer):
		w.Header().Set("Retry-After", "1")
		http.Error(w, oneLine(err), http.StatusServiceUnavailable)
	default:
		h.writeError(w, err)
	}
}

// countHealthy counts the members of voters, other than except, that this
// member counts as healthy: itself, and every one it is connected to.
func (h *httpAPI) countHealthy(voters []member, except uint64) int {
	healthy := 0
	for _, m := range voters {
		if m.ID != except && (m.ID == h.id || h.raft.peerConnected(m.ID)) {
			healthy++
		}
	}
	return healthy
}

// peerConnected reports whether this member's peer transport is connected
// to member id. rafthttp marks a peer active once a stream or a message to
// it gets through, and inactive at the first that fails: a member that
// never started is never connected, and one that stops is seen as soon as
// its connections break. (One that hangs, its connections open, counts as
// connected until a send to it fails.)
func (rc *raftNode) peerConnected(id uint64) bool {
	return !rc.transport.ActiveSince(types.ID(id)).IsZero()
}
