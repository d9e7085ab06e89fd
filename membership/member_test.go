package membership

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"go.etcd.io/raft/v3/raftpb"

	"raftkv/idempotency"
)

// tableState is a table's members and removed ids, for comparing.
func tableState(t *Table) string { return fmt.Sprintf("%+v removed %v", t.List(), t.Removed()) }

// memberIDs is the ids of members, in order.
func memberIDs(members []Member) []uint64 {
	var ids []uint64
	for _, m := range members {
		ids = append(ids, m.ID)
	}
	return ids
}

// TestTableApply proves the member table's rules for each conf change, which
// every member applies alike and which decide whether raft applies it: an
// add makes a voter or a learner with its URLs; a promotion makes a learner
// a voter, keeping its URLs; a removal drops a member and remembers its id;
// and a change the table refuses (an add of a member, whether a voter or a
// learner, a promotion of a voter or a stranger, a removal of a stranger, a
// promotion that is no AddNode, an unreadable context, another type)
// changes nothing, with the error that says why.
func TestTableApply(t *testing.T) {
	one := Member{ID: 1, PeerURLs: []string{"http://127.0.0.1:12379"}, ClientURLs: []string{"http://127.0.0.1:12380"}}
	table := NewTable([]Member{one}, nil)
	apply := func(what string, cc *raftpb.ConfChange, want error) {
		t.Helper()
		before := tableState(table)
		err := table.Apply(cc)
		switch {
		case want == nil && err != nil:
			t.Fatalf("%s: %v, want it applied", what, err)
		case want != nil && !errors.Is(err, want):
			t.Fatalf("%s: %v, want %v", what, err, want)
		case want != nil && tableState(table) != before:
			t.Fatalf("%s, refused with %v, changed the table from %s to %s", what, err, before, tableState(table))
		}
	}

	two := Member{ID: 2, PeerURLs: []string{"http://127.0.0.1:22379"}, ClientURLs: []string{"http://127.0.0.1:22380"}}
	apply("add voter 2", AddChange(two, idempotency.Key{Name: "add-2", Fingerprint: 7, Window: 10}), nil)
	if got, ok := table.Lookup(2); !ok || got.IsLearner || !slices.Equal(got.PeerURLs, two.PeerURLs) || !slices.Equal(got.ClientURLs, two.ClientURLs) {
		t.Fatalf("member 2 after its add: %+v, %v; want voter %+v", got, ok, two)
	}

	three := Member{ID: 3, PeerURLs: []string{"http://127.0.0.1:32379"}, IsLearner: true}
	if cc := AddChange(three, idempotency.Key{}); cc.GetType() != raftpb.ConfChangeAddLearnerNode {
		t.Fatalf("AddChange of a learner is a %v, want an AddLearnerNode", cc.GetType())
	}
	apply("add learner 3", AddChange(three, idempotency.Key{}), nil)
	if got, ok := table.Lookup(3); !ok || !got.IsLearner || !slices.Equal(got.PeerURLs, three.PeerURLs) {
		t.Fatalf("member 3 after its add: %+v, %v; want learner %+v", got, ok, three)
	}
	if got := memberIDs(table.Voters()); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("voters %v, want 1 and 2: a learner does not vote", got)
	}
	if got := memberIDs(table.List()); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("members %v, want 1, 2 and 3, in order", got)
	}

	apply("add voter 2 again", AddChange(two, idempotency.Key{}), ErrMemberExists)
	apply("add learner 3 as a voter, without Promote", AddChange(Member{ID: 3}, idempotency.Key{}), ErrMemberExists)
	apply("add voter 1 as a learner (a demotion)", AddChange(Member{ID: 1, IsLearner: true}, idempotency.Key{}), ErrMemberExists)
	apply("promote voter 2", PromoteChange(2), ErrNotLearner)
	apply("promote stranger 9", PromoteChange(9), ErrMemberNotFound)
	promoteAsLearner := PromoteChange(3)
	promoteAsLearner.Type = raftpb.ConfChangeAddLearnerNode.Enum()
	apply("promote learner 3 with an AddLearnerNode", promoteAsLearner, ErrBadChange)
	apply("add with a context that is not JSON", &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(uint64(5)), Context: []byte("{")}, ErrBadChange)
	apply("update node 1", &raftpb.ConfChange{Type: raftpb.ConfChangeUpdateNode.Enum(), NodeId: new(uint64(1))}, ErrBadChange)

	apply("promote learner 3", PromoteChange(3), nil)
	if got, ok := table.Lookup(3); !ok || got.IsLearner || !slices.Equal(got.PeerURLs, three.PeerURLs) {
		t.Fatalf("member 3 after its promotion: %+v, %v; want a voter with its peer URLs", got, ok)
	}
	apply("promote member 3 again", PromoteChange(3), ErrNotLearner)

	apply("remove member 2", RemoveChange(2), nil)
	if _, ok := table.Lookup(2); ok || !table.IsRemoved(2) || !slices.Equal(table.Removed(), []uint64{2}) {
		t.Fatalf("after removing member 2: %s, removed(2) %v; want it gone and removed", tableState(table), table.IsRemoved(2))
	}
	apply("remove member 2 again", RemoveChange(2), ErrMemberNotFound)
	apply("remove stranger 9", RemoveChange(9), ErrMemberNotFound)
	if table.IsRemoved(9) || table.IsRemoved(1) {
		t.Errorf("removed(9) %v, removed(1) %v: want only ids that were members and were removed", table.IsRemoved(9), table.IsRemoved(1))
	}
	apply("promote removed member 2", PromoteChange(2), ErrMemberNotFound)

	// POST /members refuses a removed id before proposing it; an add of
	// one that is in the log anyway is applied alike everywhere.
	apply("add removed member 2 back", AddChange(two, idempotency.Key{}), nil)
	if _, ok := table.Lookup(2); !ok || table.IsRemoved(2) {
		t.Errorf("member 2 added back: %s; want a member, no longer removed", tableState(table))
	}
}

// TestTableCopies proves the table shares no URL list with what it was
// made from, what it hands out or its clones: the table is replicated
// state, changed only by Apply and SetClientURL.
func TestTableCopies(t *testing.T) {
	members := []Member{{ID: 1, PeerURLs: []string{"http://127.0.0.1:1"}, ClientURLs: []string{"http://127.0.0.1:2"}}}
	table := NewTable(members, []uint64{7})
	members[0].PeerURLs[0] = "changed"
	listed := table.List()
	listed[0].ClientURLs[0] = "changed"
	looked, _ := table.Lookup(1)
	looked.PeerURLs[0] = "changed"
	if got, _ := table.Lookup(1); got.PeerURLs[0] != "http://127.0.0.1:1" || got.ClientURLs[0] != "http://127.0.0.1:2" {
		t.Fatalf("member 1 after its copies changed: %+v", got)
	}

	clone := table.Clone()
	if err := clone.Apply(RemoveChange(1)); err != nil {
		t.Fatal(err)
	}
	if err := clone.SetClientURL(1, "http://x:1"); !errors.Is(err, ErrMemberNotFound) {
		t.Errorf("SetClientURL of a removed member: %v, want ErrMemberNotFound", err)
	}
	if _, ok := table.Lookup(1); !ok || table.IsRemoved(1) || !table.IsRemoved(7) {
		t.Errorf("the original after its clone removed member 1: %s", tableState(table))
	}
	if err := table.SetClientURL(1, "http://127.0.0.1:3"); err != nil {
		t.Fatal(err)
	}
	if got, _ := table.Lookup(1); !slices.Equal(got.ClientURLs, []string{"http://127.0.0.1:3"}) {
		t.Errorf("client URLs after SetClientURL: %v", got.ClientURLs)
	}
}

// TestAddContext proves what an add's conf change carries comes back out:
// the member, with its id and whether it is a learner taken from the conf
// change, and the idempotency key of the POST, if any; other changes carry
// none.
func TestAddContext(t *testing.T) {
	m := Member{ID: 4, PeerURLs: []string{"http://127.0.0.1:42379"}, ClientURLs: []string{"http://127.0.0.1:42380"}, IsLearner: true}
	idem := idempotency.Key{Name: "k", Fingerprint: 1 << 63, Window: 5}
	cc := AddChange(m, idem)
	add, err := AddContextOf(cc)
	if err != nil || add.ID != 4 || !add.IsLearner || add.Promote || !slices.Equal(add.PeerURLs, m.PeerURLs) || !slices.Equal(add.ClientURLs, m.ClientURLs) {
		t.Errorf("AddContextOf(AddChange(%+v)) = %+v, %v", m, add, err)
	}
	if got := IdempotencyOf(cc); got != idem {
		t.Errorf("IdempotencyOf(AddChange(.., %+v)) = %+v", idem, got)
	}
	for _, other := range []*raftpb.ConfChange{AddChange(m, idempotency.Key{}), PromoteChange(4), RemoveChange(4)} {
		if got := IdempotencyOf(other); got != (idempotency.Key{}) {
			t.Errorf("IdempotencyOf(%v) = %+v, want none", other, got)
		}
	}
	if add, err := AddContextOf(PromoteChange(4)); err != nil || !add.Promote || add.ID != 4 || add.IsLearner {
		t.Errorf("AddContextOf(PromoteChange(4)) = %+v, %v", add, err)
	}
	// The conf change, not its context, says which member it adds and
	// whether it is a learner.
	for _, tc := range []struct {
		typ     raftpb.ConfChangeType
		context string
		learner bool
	}{
		{raftpb.ConfChangeAddLearnerNode, `{"peerURLs":["http://127.0.0.1:5"]}`, true},
		{raftpb.ConfChangeAddNode, `{"id":9,"peerURLs":["http://127.0.0.1:5"],"isLearner":true}`, false},
	} {
		cc := &raftpb.ConfChange{Type: tc.typ.Enum(), NodeId: new(uint64(5)), Context: []byte(tc.context)}
		add, err := AddContextOf(cc)
		if err != nil || add.ID != 5 || add.IsLearner != tc.learner || !slices.Equal(add.PeerURLs, []string{"http://127.0.0.1:5"}) {
			t.Errorf("AddContextOf(%v of 5, %s) = %+v, %v; want member 5, learner %v", tc.typ, tc.context, add, err, tc.learner)
		}
	}
}
