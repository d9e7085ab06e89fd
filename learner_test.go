package main

import (
	"context"
	"errors"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// proposeConfChange runs call, commits the conf change it proposed at the
// next index, and returns the call's error, the conf change's type, and
// whether the kvstore took it (which decides whether raft applies it).
func (h *kvTest) proposeConfChange(call func(context.Context) (uint64, error)) (raftpb.ConfChangeType, bool, error) {
	h.t.Helper()
	resC := h.start(call)
	e := h.nextProposal(h.s.appliedIndex.Load() + 1)
	var cc raftpb.ConfChange
	if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
		h.t.Fatalf("not a conf change: %v", err)
	}
	b := &applyBatch{entries: []*raftpb.Entry{e}, applied: make(chan struct{})}
	h.send(b)
	kvWait(h.t, b.applied, "the conf change to apply")
	return cc.GetType(), b.confChangeTaken, kvRecv(h.t, resC, "the proposer to return").err
}

func (h *kvTest) promote(id uint64) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		o, err := h.s.promoteMember(ctx, id)
		return o.index, err
	}
}

// TestKVStoreLearners proves the member table's side of learners: an add
// with IsLearner proposes AddLearnerNode and records a learner; a promotion
// makes it a voter, and is refused, not taken (so raft never applies it),
// for a voter or a stranger; an add never turns an existing learner into a
// voter, or a voter into a learner (raft would demote it); a learner can be
// removed.
func TestKVStoreLearners(t *testing.T) {
	h := newKVTest(t)
	m1 := member{ID: 1, PeerURLs: []string{"http://p1"}}
	m4 := member{ID: 4, PeerURLs: []string{"http://p4"}, ClientURLs: []string{"http://c4"}, IsLearner: true}
	m4Voter := m4
	m4Voter.IsLearner = false
	steps := []struct {
		name        string
		call        func(context.Context) (uint64, error)
		wantErr     error
		wantType    raftpb.ConfChangeType
		wantMembers []member
	}{
		{"add voter 1", h.addMember(m1), nil, raftpb.ConfChangeAddNode, []member{m1}},
		{"add learner 4", h.addMember(m4), nil, raftpb.ConfChangeAddLearnerNode, []member{m1, m4}},
		{"add learner 4 again", h.addMember(m4), ErrMemberExists, raftpb.ConfChangeAddLearnerNode, []member{m1, m4}},
		{"add learner 4 as a voter", h.addMember(m4Voter), ErrMemberExists, raftpb.ConfChangeAddNode, []member{m1, m4}},
		{"add voter 1 as a learner", h.addMember(member{ID: 1, PeerURLs: m1.PeerURLs, IsLearner: true}), ErrMemberExists, raftpb.ConfChangeAddLearnerNode, []member{m1, m4}},
		{"promote voter 1", h.promote(1), ErrNotLearner, raftpb.ConfChangeAddNode, []member{m1, m4}},
		{"promote stranger 9", h.promote(9), ErrMemberNotFound, raftpb.ConfChangeAddNode, []member{m1, m4}},
		{"promote learner 4", h.promote(4), nil, raftpb.ConfChangeAddNode, []member{m1, m4Voter}},
		{"promote 4 again", h.promote(4), ErrNotLearner, raftpb.ConfChangeAddNode, []member{m1, m4Voter}},
		{"add learner 5", h.addMember(member{ID: 5, PeerURLs: []string{"http://p5"}, IsLearner: true}), nil, raftpb.ConfChangeAddLearnerNode, nil},
		{"remove learner 5", h.removeMember(5), nil, raftpb.ConfChangeRemoveNode, []member{m1, m4Voter}},
	}
	for _, step := range steps {
		typ, taken, err := h.proposeConfChange(step.call)
		if !errors.Is(err, step.wantErr) {
			t.Errorf("%s: error = %v, want %v", step.name, err, step.wantErr)
		}
		if typ != step.wantType {
			t.Errorf("%s: proposed %v, want %v", step.name, typ, step.wantType)
		}
		if taken != (step.wantErr == nil) {
			t.Errorf("%s: taken = %v with error %v: a refused change must not reach raft, a taken one must", step.name, taken, err)
		}
		if step.wantMembers != nil {
			h.checkMembers(step.wantMembers...)
		}
	}
	if !h.s.isIDRemoved(5) {
		t.Errorf("removed learner 5 is not remembered as removed")
	}
	// The learner flag survives a snapshot, as every member must agree on it.
	m6 := member{ID: 6, PeerURLs: []string{"http://p6"}, IsLearner: true}
	if _, _, err := h.proposeConfChange(h.addMember(m6)); err != nil {
		t.Fatalf("add learner 6: %v", err)
	}
	h.checkMembers(m1, m4Voter, m6)
	data := h.s.snapshot()
	other := newKVTest(t)
	other.commit(kvSnapshot(h.s.appliedIndex.Load(), data))
	other.checkMembers(m1, m4Voter, m6)
}
