package main

import (
	"slices"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// TestMergeAppends checks that one WAL write of a batch of appends leaves
// what the appends one by one would: a later append that starts inside the
// batch's entries replaces them from there on (a new leader overwriting an
// uncommitted tail), one that starts before the batch replaces them all,
// and the last hard state wins over earlier ones and over appends with none.
func TestMergeAppends(t *testing.T) {
	entry := func(index, term uint64) *raftpb.Entry {
		return &raftpb.Entry{Index: new(index), Term: new(term)}
	}
	appendMsg := func(hs *raftpb.HardState, ents ...*raftpb.Entry) *raftpb.Message {
		m := &raftpb.Message{Type: raftpb.MsgStorageAppend.Enum(), Entries: ents}
		if hs != nil {
			m.Term, m.Vote, m.Commit = hs.Term, hs.Vote, hs.Commit
		}
		return m
	}
	hs := func(term, commit uint64) *raftpb.HardState {
		return &raftpb.HardState{Term: new(term), Vote: new(uint64(1)), Commit: new(commit)}
	}
	type id struct{ index, term uint64 }

	for _, tc := range []struct {
		name      string
		batch     []*raftpb.Message
		wantHS    *raftpb.HardState
		wantEntry []id
	}{
		{"one", []*raftpb.Message{appendMsg(hs(1, 0), entry(1, 1), entry(2, 1))}, hs(1, 0), []id{{1, 1}, {2, 1}}},
		{"contiguous", []*raftpb.Message{
			appendMsg(hs(1, 1), entry(1, 1)),
			appendMsg(nil, entry(2, 1), entry(3, 1)),
		}, hs(1, 1), []id{{1, 1}, {2, 1}, {3, 1}}},
		{"overwrites the tail", []*raftpb.Message{
			appendMsg(nil, entry(4, 1), entry(5, 1), entry(6, 1)),
			appendMsg(hs(2, 4), entry(5, 2)),
		}, hs(2, 4), []id{{4, 1}, {5, 2}}},
		{"overwrites everything", []*raftpb.Message{
			appendMsg(hs(1, 3), entry(4, 1), entry(5, 1)),
			appendMsg(hs(2, 3), entry(3, 2)),
		}, hs(2, 3), []id{{3, 2}}},
		{"hard state only", []*raftpb.Message{
			appendMsg(hs(1, 2)),
			appendMsg(nil),
		}, hs(1, 2), nil},
		{"nothing", []*raftpb.Message{appendMsg(nil)}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotHS, gotEntries := mergeAppends(tc.batch)
			if gotHS.GetTerm() != tc.wantHS.GetTerm() || gotHS.GetCommit() != tc.wantHS.GetCommit() || (gotHS == nil) != (tc.wantHS == nil) {
				t.Errorf("hard state %v, want %v", gotHS, tc.wantHS)
			}
			var got []id
			for _, e := range gotEntries {
				got = append(got, id{e.GetIndex(), e.GetTerm()})
			}
			if !slices.Equal(got, tc.wantEntry) {
				t.Errorf("entries %v, want %v", got, tc.wantEntry)
			}
		})
	}
}
