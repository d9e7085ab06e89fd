package main

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/raft/v3"
	"go.uber.org/zap"
)

// Removing the leader without an election.
//
// A leader that applies its own removal steps down (raft's
// StepDownOnRemoval) and stops, and the others hear nothing until an
// election timeout has passed (1 to 2 s): they then elect a new leader,
// and until they have, no write commits. So before the removal is even
// proposed, the leader hands leadership over with raft's leadership
// transfer (raft thesis §3.10): the leader brings the chosen voter's log up
// to its own and sends it MsgTimeoutNow, and that voter campaigns at once,
// without waiting for a timeout. The others learn of the new leader within
// a round trip or two; the removal then goes through it like any other
// change, and the old leader leaves as a follower.
//
// A new leader ignores conf changes until it has applied every entry its
// log held when it won (raft's pendingConfIndex): raft replaces such a
// proposal with an empty entry, and its proposer learns nothing until its
// request times out. So the removal is proposed only once this member has
// applied the new leader's first entry of its term, which comes right after
// those: the new leader, the first to know that entry committed, has then
// applied it too, unless its apply is held up. (Should it be, the removal
// answers 504, and a retry removes the member or finds it gone.)

// ErrLeaderTransfer is a leadership transfer that did not finish in time.
var ErrLeaderTransfer = errors.New("leadership transfer did not finish")

// handOffLeadership makes another member lead in place of leader, the
// member about to be removed, and returns once a leader is known that is
// not leader and its first entry of the term is applied here. This member
// picks itself to take over, unless it is the leader: then it picks the
// voter raft has replicated the most of its log to, since raft sends
// MsgTimeoutNow only once the transferee's log matches the leader's, at
// once if it already does. A learner cannot lead (raft ignores a transfer
// to one): one asked to remove the leader picks a voter it is connected
// to (connectedVoter), whose progress it cannot know. Raft gives up on a
// transfer that takes longer than an election timeout (a transferee that
// has just restarted may need longer to catch up), so while no other
// leader is known the request is made again each election timeout. ctx,
// the request's, bounds the wait.
func (h *httpAPI) handOffLeadership(ctx context.Context, leader uint64) error {
	pick := func() uint64 {
		switch {
		case leader == h.id:
			return h.raft.mostCaughtUp()
		case h.isLearner(h.id):
			return h.connectedVoter(leader)
		}
		return h.id
	}
	transferee := pick()
	if transferee == raft.None {
		return fmt.Errorf("%w: member %d leads and member %d is connected to no other voter to hand over to", ErrLeaderTransfer, leader, h.id)
	}
	electionTimeout := electionTicks * h.raft.cfg.tickInterval
	var err error
	for {
		h.raft.transferLeadership(ctx, leader, transferee)
		waitCtx, cancel := context.WithTimeout(ctx, electionTimeout)
		err = h.raft.waitLeader(waitCtx, func(l uint64) bool { return l != raft.None && l != leader })
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if next := pick(); next != raft.None {
			transferee = next
		}
	}
	if err == nil {
		// The removal is proposed after this: see pendingConfIndex above.
		err = h.reads.wait(ctx)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: member %d was asked to hand leadership to member %d, and no other leader was ready within %s; nothing was proposed",
			ErrLeaderTransfer, leader, transferee, h.requestTimeout)
	}
	return err
}

// transferLeadership asks raft to make transferee lead in place of lead.
// On a follower raft passes the request on to the leader.
func (rc *raftNode) transferLeadership(ctx context.Context, lead, transferee uint64) {
	rc.lg.Info("transferring leadership", zap.Uint64("leader", lead), zap.Uint64("transferee", transferee))
	rc.node.TransferLeadership(ctx, lead, transferee)
}

// mostCaughtUp is, on the leader, the voter other than itself, connected
// to it, whose log matches the most of the leader's (raft's Progress.Match;
// the lowest id of equals), or None.
func (rc *raftNode) mostCaughtUp() uint64 {
	best, bestMatch := uint64(raft.None), uint64(0)
	for id, pr := range rc.status().Progress {
		if id == rc.id || pr.IsLearner || !rc.peerConnected(id) {
			continue
		}
		if best == raft.None || pr.Match > bestMatch || (pr.Match == bestMatch && id < best) {
			best, bestMatch = id, pr.Match
		}
	}
	return best
}

// isLearner reports whether member id is a learner in the applied member
// table.
func (h *httpAPI) isLearner(id uint64) bool {
	m, ok := h.store.lookupMember(id)
	return ok && m.IsLearner
}

// connectedVoter is the voter other than except, of the lowest id, that
// this member is connected to, or None. A learner removing the leader
// knows nobody's progress (only the leader does) and hands over to it; the
// leader brings its log up to date before it lets it campaign.
func (h *httpAPI) connectedVoter(except uint64) uint64 {
	for _, m := range h.store.voters() {
		if m.ID != except && m.ID != h.id && h.raft.peerConnected(m.ID) {
			return m.ID
		}
	}
	return raft.None
}
