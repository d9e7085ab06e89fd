package main

import (
	"context"
	"encoding/json"
	"fmt"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// Conf changes: how a membership change travels and where it applies.
//
// POST and DELETE /members (membership.go), and POST
// /members/{id}/promote (learner.go), propose a raft ConfChange on
// confChangeC: AddNode adds a voter, AddLearnerNode a learner, an AddNode
// marked Promote makes a learner a voter, RemoveNode removes either. Raft
// logs and commits it like any entry. When it is committed, the apply
// goroutine hands the entries up to it to the kvstore and waits for them
// to apply (applyConfChangeAt):
//
//   - the kvstore records it in the replicated member table, or refuses it
//     (an id already a member, a stranger to remove, a promotion of a
//     member that is no learner, an idempotency key already recorded), and
//     wakes the waiting handler (kvstore.applyConfChange);
//   - then, only if the kvstore took it, the apply goroutine applies it to
//     raft's configuration (node.ApplyConfChange) and to the transport, which
//     then talks to the new member or stops talking to the removed one.
//
// Raft lets an application treat a conf change as a no-op by not calling
// ApplyConfChange; deciding once, in the state machine, keeps the member
// table and raft's voters and learners the same on every member. (It also
// keeps raft from doing what the member table would not: raft takes an
// AddLearnerNode of a voter as a demotion, which raftkv never asks for.)

// member is one member as the cluster knows it: where peers and clients
// reach it, and whether it votes. The member table is replicated state: it
// changes only when a conf change or an advertise entry is applied, and it
// is part of every snapshot.
type member struct {
	ID         uint64   `json:"id"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
	// IsLearner is a member raft replicates to but that does not vote: it
	// counts towards no quorum, for elections or commits (learner.go).
	IsLearner bool `json:"isLearner"`
}

// addMemberContext is what an AddNode or AddLearnerNode conf change
// carries (JSON: conf changes are rare, and it keeps WAL dumps readable):
// the member, and the idempotency key of the POST that proposed it, if any;
// or, for an AddNode that promotes a learner, Promote and the member's id.
type addMemberContext struct {
	member
	Idempotency *idempotencyJSON `json:"idempotency,omitempty"`
	// Promote is an AddNode that makes an existing learner a voter, which
	// raft does with an AddNode of a learner. Without it an AddNode of a
	// member that exists is refused, whether it is a learner or not: a
	// learner becomes a voter only through POST /members/{id}/promote,
	// which checks it has caught up.
	Promote bool `json:"promote,omitempty"`
}

// addContextFromConfChange reads an add's context; the member's id is the
// conf change's, and it is a learner if the conf change adds a learner.
func addContextFromConfChange(cc *raftpb.ConfChange) (addMemberContext, error) {
	var c addMemberContext
	if err := json.Unmarshal(cc.GetContext(), &c); err != nil {
		return addMemberContext{}, fmt.Errorf("%w: conf change context: %v", ErrCorruptEntry, err)
	}
	c.ID = cc.GetNodeId()
	c.IsLearner = cc.GetType() == raftpb.ConfChangeAddLearnerNode
	return c, nil
}

// idempotencyJSON is idempotent in a conf change's JSON context.
type idempotencyJSON struct {
	Key         string `json:"key"`
	Fingerprint uint64 `json:"fingerprint"`
	Window      uint64 `json:"window"`
}

// addMember proposes adding m, as a learner if m.IsLearner and as a voter
// otherwise, and waits for the outcome.
func (s *kvstore) addMember(ctx context.Context, m member, idem idempotent) (outcome, error) {
	c := addMemberContext{member: m}
	if idem.key != "" {
		c.Idempotency = &idempotencyJSON{Key: idem.key, Fingerprint: idem.fingerprint, Window: idem.window}
	}
	memberCtx, err := json.Marshal(c)
	if err != nil {
		return outcome{}, err
	}
	typ := raftpb.ConfChangeAddNode
	if m.IsLearner {
		typ = raftpb.ConfChangeAddLearnerNode
	}
	cc := &raftpb.ConfChange{
		Id:      new(s.requestIDs.Next()),
		Type:    typ.Enum(),
		NodeId:  new(m.ID),
		Context: memberCtx,
	}
	return proposeAndWait(ctx, s, cc.GetId(), s.confChangeC, cc)
}

// promoteMember proposes making learner id a voter and waits for the
// outcome. Whether the learner has caught up is for the caller to check
// first (learner.go): raft promotes whatever it is told to.
func (s *kvstore) promoteMember(ctx context.Context, id uint64) (outcome, error) {
	memberCtx, err := json.Marshal(addMemberContext{member: member{ID: id}, Promote: true})
	if err != nil {
		return outcome{}, err
	}
	cc := &raftpb.ConfChange{
		Id:      new(s.requestIDs.Next()),
		Type:    raftpb.ConfChangeAddNode.Enum(),
		NodeId:  new(id),
		Context: memberCtx,
	}
	return proposeAndWait(ctx, s, cc.GetId(), s.confChangeC, cc)
}

// removeMember proposes removing member id and waits for the outcome.
func (s *kvstore) removeMember(ctx context.Context, id uint64) (outcome, error) {
	cc := &raftpb.ConfChange{
		Id:     new(s.requestIDs.Next()),
		Type:   raftpb.ConfChangeRemoveNode.Enum(),
		NodeId: new(id),
	}
	return proposeAndWait(ctx, s, cc.GetId(), s.confChangeC, cc)
}

// confChangeEnd is how many of entries to hand the kvstore before the
// apply goroutine must stop and apply a conf change: up to and including
// the first one, or all of them.
func confChangeEnd(entries []*raftpb.Entry) int {
	for i, e := range entries {
		if e.GetType() == raftpb.EntryConfChange {
			return i + 1
		}
	}
	return len(entries)
}

// applyConfChangeAt applies the conf change that ends batch b to raft and
// the transport, once the kvstore has applied b and taken the change. It
// reports whether the change removed this member.
func (rc *raftNode) applyConfChangeAt(b *applyBatch) (removedSelf bool, err error) {
	e := b.entries[len(b.entries)-1]
	select {
	case <-b.applied:
	case <-rc.stopC:
		return false, ErrStopped
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
		c, err := addContextFromConfChange(cc)
		if err == nil && c.Promote {
			// A promoted learner is a peer already, and the last snapshot
			// has it (as a learner, which it accepts): a new one would
			// stall every member's apply for nothing (see maybeSnapshot).
			return false, nil
		}
		rc.forceSnapshot = true
		if err == nil && id != rc.id {
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

// applyConfChange records a membership change in the member table, or
// refuses it, and wakes the handler waiting for it. It reports whether it
// took the change, which the apply goroutine then applies to raft and the
// transport.
func (s *kvstore) applyConfChange(e *raftpb.Entry) bool {
	var cc raftpb.ConfChange
	if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
		s.lg.Error("skipping undecodable conf change", zap.Uint64("index", e.GetIndex()), zap.Error(err))
		return false
	}
	isAdd := cc.GetType() == raftpb.ConfChangeAddNode || cc.GetType() == raftpb.ConfChangeAddLearnerNode
	var add addMemberContext
	var addErr error
	var idem idempotent
	if isAdd {
		add, addErr = addContextFromConfChange(&cc)
		if addErr == nil && add.Idempotency != nil {
			idem = idempotent{key: add.Idempotency.Key, fingerprint: add.Idempotency.Fingerprint, window: add.Idempotency.Window}
		}
	}
	if replay, ok := s.replay(idem); ok {
		s.waiters.Trigger(cc.GetId(), replay)
		return false
	}
	result := outcome{index: e.GetIndex()}
	id := cc.GetNodeId()
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		existing := s.members[id]
		switch {
		case addErr != nil:
			result.err = addErr
		case add.Promote && cc.GetType() != raftpb.ConfChangeAddNode:
			result.err = fmt.Errorf("%w: a promotion must be an AddNode conf change", ErrCorruptEntry)
		case add.Promote && existing == nil:
			result.err = ErrMemberNotFound
		case add.Promote && !existing.IsLearner:
			result.err = ErrNotLearner
		case add.Promote:
			promoted := *existing
			promoted.IsLearner = false
			s.members[id] = &promoted
			s.lg.Info("member promoted from learner to voter", zap.Uint64("member-id", id))
		case existing != nil:
			result.err = ErrMemberExists
		default:
			m := add.member
			s.members[id] = &m
			delete(s.removed, id)
			s.lg.Info("member added to the cluster", zap.Uint64("member-id", id), zap.Strings("peer-urls", m.PeerURLs), zap.Bool("learner", m.IsLearner))
		}
	case raftpb.ConfChangeRemoveNode:
		if s.members[id] == nil {
			result.err = ErrMemberNotFound
			break
		}
		delete(s.members, id)
		s.removed[id] = true
		s.lg.Info("member removed from the cluster", zap.Uint64("member-id", id))
	default:
		result.err = fmt.Errorf("%w: conf change type %v", ErrCorruptEntry, cc.GetType())
	}
	if idem.key != "" {
		s.dedup.record(idem, result)
	}
	s.waiters.Trigger(cc.GetId(), result)
	return result.err == nil
}
