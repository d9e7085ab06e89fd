package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"raftkv/api"
	"raftkv/membership"
)

// Who leads, as this member knows it: recorded from each Ready, read by the
// HTTP API, the read loop and the membership routes; and handing leadership
// over to another member (raft thesis §3.10).

// trackLeader records who leads, as rd reports it, and, in the Ready that
// makes this node leader, the index of the empty entry raft appends at the
// start of every leader's term. A new leader's commit index can lag entries
// its predecessor committed and acknowledged; it knows everything committed
// before it only once its own first entry has committed (raft thesis §6.4).
// Raft holds ReadIndex back until then, except on a lone voter, which it
// answers at once (etcd-io/raft PR #105), and a `default` read asks no one:
// so every read this leader serves also waits to apply that entry.
//
// A change of leader is logged here, with the term: raft's own lines about
// it are at debug (logging.RaftLogger), and this is the one an operator
// reads.
func (rc *raftNode) trackLeader(rd raft.Ready) {
	if rd.SoftState == nil {
		return
	}
	var start uint64
	if rd.SoftState.RaftState == raft.StateLeader && len(rd.Entries) > 0 {
		// Raft appends the empty entry in the step that makes this node
		// leader, so it is among this Ready's entries: the first with the
		// new term, the highest in the log.
		term := rd.Entries[len(rd.Entries)-1].GetTerm()
		i, _ := slices.BinarySearchFunc(rd.Entries, term, func(e *raftpb.Entry, t uint64) int { return cmp.Compare(e.GetTerm(), t) })
		start = rd.Entries[i].GetIndex()
	}
	// Stored before the leader, so a reader that sees this node lead sees
	// the start of its term.
	rc.termStart.Store(start)
	now := rd.SoftState.Lead
	before := rc.leader.Swap(now)
	if before == now {
		return
	}
	switch term := rc.Term(); now {
	case rc.id:
		rc.lg.Info("became leader", zap.Uint64("term", term))
	case raft.None:
		rc.lg.Info("lost the leader", zap.Uint64("former-leader", before), zap.Uint64("term", term))
	default:
		rc.lg.Info("following leader", zap.Uint64("leader", now), zap.Uint64("term", term))
	}
	rc.metrics.LeaderChanged(now)
	rc.leaderMu.Lock()
	if rc.leaderChangeC != nil {
		close(rc.leaderChangeC)
		rc.leaderChangeC = nil // the next LeaderChange makes a new one
	}
	rc.leaderMu.Unlock()
}

// Leader is the member this node believes leads, or raft.None.
func (rc *raftNode) Leader() uint64 { return rc.leader.Load() }

// LeaderChange returns a channel that is closed the next time the leader
// this node knows changes, to None or to another member. Take it before
// looking at Leader, so that no change can fall between the two.
func (rc *raftNode) LeaderChange() <-chan struct{} {
	rc.leaderMu.Lock()
	defer rc.leaderMu.Unlock()
	if rc.leaderChangeC == nil {
		rc.leaderChangeC = make(chan struct{})
	}
	return rc.leaderChangeC
}

// waitLeader returns once ok holds for the leader this node knows, waking
// at each change of leader rather than polling.
func (rc *raftNode) waitLeader(ctx context.Context, ok func(leader uint64) bool) error {
	for {
		changed := rc.LeaderChange()
		if ok(rc.Leader()) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-rc.stopC:
			return api.ErrStopped
		}
	}
}

// termStartIndex is, while this node leads, the index of its first entry of
// the term, which every read it serves must see applied; otherwise 0.
func (rc *raftNode) termStartIndex() uint64 { return rc.termStart.Load() }

// leaderCatchUpIndex is what a `default` read, served by this node as leader
// without asking anyone, must wait to see applied: everything it knows is
// committed, which includes writes other members acknowledged, and its own
// first entry of the term. (A `consistent` read asks the leader with
// ReadIndex instead: readindex.go.)
func (rc *raftNode) leaderCatchUpIndex() uint64 {
	return max(rc.commitIndex.Load(), rc.termStart.Load())
}

// transferLeadership makes another member lead in place of leader, and
// returns once a leader is known that is not leader; members is the
// applied member table. It is how a leader
// leaves without an election: one that applies its own removal steps down
// (raft's StepDownOnRemoval) and stops, and the others hear nothing until
// an election timeout has passed (1 to 2 s), then elect a new leader, and
// until they have, no write commits. With raft's leadership transfer
// (raft thesis §3.10) the leader brings the chosen voter's log up to its
// own and sends it MsgTimeoutNow, and that voter campaigns at once; the
// others learn of the new leader within a round trip or two.
//
// This member picks itself to take over, unless it is the leader: then it
// picks the voter raft has replicated the most of its log to, since raft
// sends MsgTimeoutNow only once the transferee's log matches the leader's,
// at once if it already does. A learner cannot lead (raft ignores a
// transfer to one): one asked to move leadership picks a voter it is
// connected to, whose progress it cannot know. Raft gives up on a transfer
// that takes longer than an election timeout (a transferee that has just
// restarted may need longer to catch up), so while no other leader is
// known the request is made again each election timeout. ctx bounds the
// wait.
func (rc *raftNode) transferLeadership(ctx context.Context, leader uint64, members *membership.Table) error {
	pick := func() uint64 {
		self, _ := members.Lookup(rc.id)
		switch {
		case leader == rc.id:
			return rc.mostCaughtUp()
		case self.IsLearner:
			for _, m := range members.Voters() {
				if m.ID != leader && rc.Connected(m.ID) {
					return m.ID
				}
			}
			return raft.None
		}
		return rc.id
	}
	transferee := pick()
	if transferee == raft.None {
		return fmt.Errorf("%w: member %d leads and member %d is connected to no other voter to hand over to", membership.ErrLeaderTransfer, leader, rc.id)
	}
	electionTimeout := electionTicks * rc.cfg.TickInterval
	for {
		rc.lg.Info("transferring leadership", zap.Uint64("leader", leader), zap.Uint64("transferee", transferee))
		rc.node.TransferLeadership(ctx, leader, transferee)
		waitCtx, cancel := context.WithTimeout(ctx, electionTimeout)
		err := rc.waitLeader(waitCtx, func(l uint64) bool { return l != raft.None && l != leader })
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("%w: member %d was asked to hand leadership to member %d, and no other leader was ready in time; nothing was proposed",
				membership.ErrLeaderTransfer, leader, transferee)
		case !errors.Is(err, context.DeadlineExceeded):
			return err
		}
		if next := pick(); next != raft.None {
			transferee = next
		}
	}
}

// mostCaughtUp is, on the leader, the voter other than itself, connected
// to it, whose log matches the most of the leader's (raft's Progress.Match;
// the lowest id of equals), or None.
func (rc *raftNode) mostCaughtUp() uint64 {
	best, bestMatch := uint64(raft.None), uint64(0)
	for id, pr := range rc.node.Status().Progress {
		if id == rc.id || pr.IsLearner || !rc.Connected(id) {
			continue
		}
		if best == raft.None || pr.Match > bestMatch || (pr.Match == bestMatch && id < best) {
			best, bestMatch = id, pr.Match
		}
	}
	return best
}
