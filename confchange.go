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
// POST and DELETE /members (membership.go) propose a raft ConfChange on
// confChangeC; raft logs and commits it like any entry. When it is
// committed, it applies in two places, in log order:
//
//   - on the apply goroutine, to raft's configuration (node.ApplyConfChange)
//     and to the transport, which then talks to the new member or stops
//     talking to the removed one (raftNode.applyConfChanges);
//   - on the kvstore's goroutine, to the replicated member table, which
//     wakes the waiting handler (kvstore.applyConfChange).
//
// Both follow the same rules (adding a member twice or removing a stranger
// changes nothing), so the member table and raft's voters agree.

// member is one raft voter as the cluster knows it: where peers and clients
// reach it. The member table is replicated state: it changes only when a
// conf change or an advertise entry is applied, and it is part of every
// snapshot.
type member struct {
	ID         uint64   `json:"id"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
}

// memberFromConfChange reads the member carried in an AddNode conf change's
// context (JSON: conf changes are rare, and it keeps WAL dumps readable).
func memberFromConfChange(cc *raftpb.ConfChange) (member, error) {
	var m member
	if err := json.Unmarshal(cc.GetContext(), &m); err != nil {
		return member{}, fmt.Errorf("%w: conf change context: %v", ErrCorruptEntry, err)
	}
	m.ID = cc.GetNodeId()
	return m, nil
}

// addMember proposes adding m as a voter and waits for the outcome.
func (s *kvstore) addMember(ctx context.Context, m member) (uint64, error) {
	memberCtx, err := json.Marshal(m)
	if err != nil {
		return 0, err
	}
	cc := &raftpb.ConfChange{
		Id:      new(s.requestIDs.Next()),
		Type:    raftpb.ConfChangeAddNode.Enum(),
		NodeId:  new(m.ID),
		Context: memberCtx,
	}
	return proposeAndWait(ctx, s, cc.GetId(), s.confChangeC, cc)
}

// removeMember proposes removing member id and waits for the outcome.
func (s *kvstore) removeMember(ctx context.Context, id uint64) (uint64, error) {
	cc := &raftpb.ConfChange{
		Id:     new(s.requestIDs.Next()),
		Type:   raftpb.ConfChangeRemoveNode.Enum(),
		NodeId: new(id),
	}
	return proposeAndWait(ctx, s, cc.GetId(), s.confChangeC, cc)
}

// applyConfChanges applies the conf changes among committed entries to
// raft's configuration and to the transport, before the apply goroutine
// hands the entries to the kvstore. It reports whether this member's own
// removal is among them.
func (rc *raftNode) applyConfChanges(entries []*raftpb.Entry) (removedSelf bool, err error) {
	for _, e := range entries {
		if e.GetType() != raftpb.EntryConfChange {
			continue
		}
		cc := &raftpb.ConfChange{}
		if err := proto.Unmarshal(e.GetData(), cc); err != nil {
			return false, fmt.Errorf("decode conf change at %d: %w", e.GetIndex(), err)
		}
		rc.confState = rc.node.ApplyConfChange(cc)
		rc.forceSnapshot = true
		switch id := cc.GetNodeId(); cc.GetType() {
		case raftpb.ConfChangeAddNode:
			if m, err := memberFromConfChange(cc); err != nil {
				rc.lg.Error("conf change without a member", zap.Uint64("index", e.GetIndex()), zap.Error(err))
			} else if id != rc.id {
				rc.addPeer(id, m.PeerURLs)
			}
		case raftpb.ConfChangeRemoveNode:
			if id == rc.id {
				removedSelf = true
			} else {
				rc.transport.RemovePeer(types.ID(id))
			}
		}
	}
	return removedSelf, nil
}

// applyConfChange records a membership change in the member table and wakes
// the handler waiting for it; the apply goroutine has already applied it to
// raft and the transport.
func (s *kvstore) applyConfChange(e *raftpb.Entry) {
	var cc raftpb.ConfChange
	if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
		s.lg.Error("skipping undecodable conf change", zap.Uint64("index", e.GetIndex()), zap.Error(err))
		return
	}
	result := outcome{index: e.GetIndex()}
	id := cc.GetNodeId()
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode:
		m, err := memberFromConfChange(&cc)
		switch {
		case err != nil:
			result.err = err
		case s.members[id] != nil:
			result.err = ErrMemberExists
		default:
			s.members[id] = &m
			delete(s.removed, id)
			s.lg.Info("member added to the cluster", zap.Uint64("member-id", id), zap.Strings("peer-urls", m.PeerURLs))
		}
	case raftpb.ConfChangeRemoveNode:
		if s.members[id] == nil {
			result.err = ErrMemberNotFound
			break
		}
		delete(s.members, id)
		s.removed[id] = true
		s.lg.Info("member removed from the cluster", zap.Uint64("member-id", id))
	}
	s.waiters.Trigger(cc.GetId(), result)
}
