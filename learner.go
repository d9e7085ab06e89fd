package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"go.etcd.io/raft/v3"
)

// Learners: members that receive the log but do not vote.
//
// A new member starts empty. Added as a voter, it counts towards the quorum
// from the moment its addition applies, long before it holds the log: add
// a fourth member to three and the quorum is three, so with the new member
// still catching up (a snapshot of a million keys takes a while) one more
// member down stops every write. A learner is a member raft replicates to
// like any follower but that counts towards no quorum, never campaigns and
// can never lead (raft's ConfChangeAddLearnerNode). Once its log is close to
// the leader's it is promoted (an AddNode of a learner makes it a voter in
// raft), as etcd's MemberPromote does.
//
//   - POST /members with "learner": true adds one (membership.go);
//   - POST /members/{id}/promote makes it a voter (promoteMember). Only the
//     leader knows how far each member's log matches its own (raft's
//     Progress.Match), so a follower redirects to it, and the leader refuses
//     with a 409 while the learner lags (learnerReady);
//   - --join adds the new member as a learner and has it ask for its own
//     promotion once it has caught up (autopromote.go).
//
// The learner flag is in the replicated member table (and so in every
// snapshot) and in raft's configuration, and both change together, by the
// conf change rule of confchange.go. Strict reconfiguration (reconfig.go)
// counts only voters; leadership is never handed to a learner (handoff.go).

// Why a promotion is refused.
var (
	ErrNotLearner      = errors.New("not a learner")
	ErrLearnerNotReady = errors.New("learner not caught up")
)

const (
	// learnerReadyFraction is how much of the leader's log a learner's log
	// must match to be promoted: etcd's readyPercentThreshold.
	learnerReadyFraction = 0.9

	// learnerMaxLag is how many entries a learner's log may be behind the
	// leader's to be promoted. A fraction alone lets a learner far behind
	// through once the log is long (at index 10 million, 90% is a million
	// entries behind); a learner that keeps up with the leader is a batch
	// or two behind, a few entries, whatever the load.
	learnerMaxLag = 1000
)

// learnerReady reports, on the leader, whether learner id has caught up
// enough to be promoted: its log matches the leader's to within
// learnerMaxLag entries and learnerReadyFraction, as etcd's isLearnerReady
// judges it, and the leader is connected to it.
func (rc *raftNode) learnerReady(id uint64) error {
	st := rc.status()
	if st.RaftState != raft.StateLeader {
		return fmt.Errorf("%w: member %d stopped leading; ask again", ErrNoLeader, rc.id)
	}
	pr, ok := st.Progress[id]
	if !ok {
		return fmt.Errorf("member %d: %w", id, ErrMemberNotFound)
	}
	if !pr.IsLearner {
		return fmt.Errorf("member %d is %w: it votes already", id, ErrNotLearner)
	}
	if err := checkLearnerLag(id, pr.Match, st.Progress[st.ID].Match); err != nil {
		return err
	}
	// A learner that stopped while the cluster was idle still matches the
	// leader's log; it is not catching up all the same.
	if !rc.peerConnected(id) {
		return fmt.Errorf("%w: the leader, member %d, is not connected to member %d", ErrLearnerNotReady, rc.id, id)
	}
	return nil
}

// checkLearnerLag refuses a learner whose log matches the leader's to
// index match, the leader's own being at leaderMatch, if it is more than
// learnerMaxLag entries behind or matches less than learnerReadyFraction.
func checkLearnerLag(id, match, leaderMatch uint64) error {
	behind := leaderMatch - min(match, leaderMatch)
	if behind > learnerMaxLag || float64(match) < learnerReadyFraction*float64(leaderMatch) {
		return fmt.Errorf("%w: member %d's log matches the leader's to index %d of %d, %d entries behind; it can be promoted once it is at most %d entries and %.0f%% behind",
			ErrLearnerNotReady, id, match, leaderMatch, behind, learnerMaxLag, 100*(1-learnerReadyFraction))
	}
	return nil
}

// promoteMember handles POST /members/{id}/promote: 200 with the member,
// a voter now, once that is applied here; 409 if it is no learner, while it
// lags behind the leader, or if the voters it would make could not keep a
// quorum (mayPromoteMember). A follower redirects to the leader, which
// alone can tell how far the learner has got.
func (h *httpAPI) promoteMember(w http.ResponseWriter, r *http.Request) {
	m, ok := h.memberFrom(w, r)
	if !ok {
		return
	}
	if b, _ := io.ReadAll(io.LimitReader(r.Body, 1)); len(b) > 0 {
		http.Error(w, "POST /members/{id}/promote takes no body", http.StatusBadRequest)
		return
	}
	if !m.IsLearner {
		http.Error(w, fmt.Sprintf("member %d is %s: it votes already", m.ID, ErrNotLearner), http.StatusConflict)
		return
	}
	leader := h.raft.leaderID()
	if leader == raft.None {
		h.writeError(w, ErrNoLeader)
		return
	}
	if leader != h.id {
		h.redirectToLeader(w, r, leader)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	// A leader elected a moment ago knows nobody's progress yet, and drops
	// conf changes (see afterLeaderSettled).
	if err := h.afterLeaderSettled(ctx); err != nil {
		h.writeError(w, err)
		return
	}
	if err := h.mayPromoteMember(m.ID); err != nil {
		h.refuseChange(w, err)
		return
	}
	o, err := h.store.promoteMember(ctx, m.ID)
	if err != nil {
		h.writeError(w, err)
		return
	}
	promoted, _ := h.store.lookupMember(m.ID)
	setRaftIndex(w, o.index)
	writeJSON(w, http.StatusOK, viewOf(promoted, h.raft.leaderID()))
}

// voters is the applied member table without its learners, ordered by id.
func (s *kvstore) voters() []member {
	var voters []member
	for _, m := range s.memberList() {
		if !m.IsLearner {
			voters = append(voters, m)
		}
	}
	return voters
}
