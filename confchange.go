package main

import (
	"fmt"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"raftkv/api"
	"raftkv/membership"
)

// Conf changes: how a membership change travels and where it applies.
//
// POST and DELETE /members, and POST /members/{id}/promote (package
// membership), propose a raft ConfChange on confChangeC
// (kvstore.ProposeMembershipChange): AddNode adds a voter, AddLearnerNode a
// learner, an AddNode marked Promote makes a learner a voter, RemoveNode
// removes either. Raft logs and commits it like any entry. When it is
// committed, the hand-over goroutine hands the entries up to it to the
// kvstore and waits for them to apply:
//
//   - the kvstore records it in the replicated member table, or the table
//     refuses it (an id already a member, a stranger to remove, a promotion
//     of a member that is no learner, an idempotency key already recorded),
//     and wakes the waiting handler (kvstore.applyConfChange);
//   - then, only if the table took it, the hand-over goroutine applies it to
//     raft's configuration (node.ApplyConfChange) and to the transport,
//     which then talks to the new member or stops talking to the removed
//     one (confChangeToRaft).
//
// Deciding once, in the state machine, keeps the member table and raft's
// voters and learners the same on every member (package membership says
// why).

// confChangeEnd is how many of entries to hand the kvstore before the
// hand-over goroutine must stop and apply a conf change: up to and
// including the first one, or all of them.
func confChangeEnd(entries []*raftpb.Entry) int {
	for i, e := range entries {
		if e.GetType() == raftpb.EntryConfChange {
			return i + 1
		}
	}
	return len(entries)
}

// confChangeToRaft applies the conf change that ends batch b to raft's
// configuration and to the transport, once the kvstore has applied b and
// the member table took the change. It reports whether the change removed
// this member.
func (rc *raftNode) confChangeToRaft(b *applyBatch) (removedSelf bool, err error) {
	e := b.entries[len(b.entries)-1]
	select {
	case <-b.applied:
	case <-rc.stopC:
		return false, api.ErrStopped
	}
	if !b.confChangeTaken {
		return false, nil
	}
	cc := &raftpb.ConfChange{}
	if err := proto.Unmarshal(e.GetData(), cc); err != nil {
		return false, fmt.Errorf("decode conf change at %d: %w", e.GetIndex(), err)
	}
	rc.confState = rc.node.ApplyConfChange(cc)
	switch id := cc.GetNodeId(); cc.GetType() {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		if membership.IsPromotion(cc) {
			// A promoted learner is a peer already, and the last snapshot
			// has it (as a learner, which it accepts): a new one would
			// stall every member's apply for nothing (see maybeSnapshot).
			return false, nil
		}
		rc.forceSnapshot = true
		if c, err := membership.AddContextOf(cc); err == nil && id != rc.id {
			rc.addPeer(id, c.PeerURLs)
		}
	case raftpb.ConfChangeRemoveNode:
		rc.forceSnapshot = true
		if id == rc.id {
			return true, nil
		}
		rc.transport.RemovePeer(types.ID(id))
	}
	return false, nil
}
