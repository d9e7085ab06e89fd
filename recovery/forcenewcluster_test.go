package recovery

import (
	"errors"
	"maps"
	"strings"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"raftkv/codec"
	"raftkv/idempotency"
	"raftkv/keyspace"
	"raftkv/membership"
)

// kvEntry is a normal entry carrying data, committed at index.
func kvEntry(index uint64, data []byte) *raftpb.Entry {
	return &raftpb.Entry{Index: new(index), Term: new(uint64(1)), Type: raftpb.EntryNormal.Enum(), Data: data}
}

// kvConfEntry is a conf change entry, committed at index.
func kvConfEntry(t *testing.T, index uint64, cc *raftpb.ConfChange) *raftpb.Entry {
	t.Helper()
	data, err := proto.Marshal(cc)
	if err != nil {
		t.Fatalf("marshal conf change: %v", err)
	}
	return &raftpb.Entry{Index: new(index), Term: new(uint64(1)), Type: raftpb.EntryConfChange.Enum(), Data: data}
}

// TestConfiguredIDs proves that the members --force-new-cluster removes
// are those of the configuration the log ends with: the snapshot's voters
// and learners, then every conf change after it, in either raft format.
func TestConfiguredIDs(t *testing.T) {
	v2 := &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{
		{Type: raftpb.ConfChangeAddLearnerNode.Enum(), NodeId: new(uint64(7))},
		{Type: raftpb.ConfChangeRemoveNode.Enum(), NodeId: new(uint64(2))},
	}}
	v2Data, err := proto.Marshal(v2)
	if err != nil {
		t.Fatal(err)
	}
	entries := []*raftpb.Entry{
		kvEntry(10, codec.EncodeWrite(1, true, "k", []byte("v"), keyspace.Condition{}, idempotency.Key{}, 0)),
		kvConfEntry(t, 11, &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(uint64(5))}),
		kvConfEntry(t, 12, &raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode.Enum(), NodeId: new(uint64(3))}),
		{Index: new(uint64(13)), Term: new(uint64(1)), Type: raftpb.EntryConfChangeV2.Enum(), Data: v2Data},
		kvConfEntry(t, 14, &raftpb.ConfChange{Type: raftpb.ConfChangeAddLearnerNode.Enum(), NodeId: new(uint64(8))}),
		kvConfEntry(t, 15, membership.PromoteChange(4)),
		// Refused by the kvstore, so by raft: no promotion without Promote,
		// no demotion of a voter.
		kvConfEntry(t, 16, &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(uint64(8))}),
		kvConfEntry(t, 17, &raftpb.ConfChange{Type: raftpb.ConfChangeAddLearnerNode.Enum(), NodeId: new(uint64(1))}),
	}
	ids, err := configuredIDs(&raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}, entries)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]bool{1: false, 4: false, 5: false, 7: true, 8: true}
	if !maps.Equal(ids, want) {
		t.Errorf("configuredIDs = %v, want %v (id: is a learner)", ids, want)
	}
}

// TestForceNewClusterRefusesLearner proves --force-new-cluster refuses a
// member that is a learner in the configuration its log ends with: alone
// it would be a cluster with no voter.
func TestForceNewClusterRefusesLearner(t *testing.T) {
	// Refused before anything is written: no WAL is needed to find out.
	_, _, _, err := ForceNewCluster(4, &raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}, 10, &raftpb.HardState{}, nil)
	if !errors.Is(err, ErrCannotForce) || !strings.Contains(err.Error(), "learner") {
		t.Fatalf("ForceNewCluster on a learner = %v, want ErrCannotForce naming it a learner", err)
	}
}
