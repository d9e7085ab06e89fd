package recovery

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"raftkv/membership"
)

// --force-new-cluster, etcd's flag of that name: restart one surviving
// member as the only member of its cluster, from its own data, when a
// majority is lost for good. Then the cluster grows again with --join.
//
// As etcd does (etcdserver/bootstrap.go, bootstrapWALFromSnapshot with
// storage.CreateConfigChangeEnts and GetEffectiveNodeIDsFromWALEntries),
// before raft restarts it appends to the log one conf change removing each
// other member of the configuration the log ends with, and records them as
// committed. The member applies them as any committed entries: the kvstore
// takes each removal into the replicated member table and removed ids
// first, then raft and the transport drop the member; once
// they are applied raft has one voter, and this member elects itself.
//
// Unlike etcd, the entries this member's WAL holds past its commit index
// are kept and committed too. etcd drops them, and since 3.6 raises the
// commit index to its backend's applied index first, because a member's
// WAL can record a commit index behind what it has applied and
// acknowledged: a new commit index alone is not fsynced (see the raft node's
// saveAppends).
// raftkv keeps no applied index apart from its snapshots, so dropping the
// tail would lose writes this very member acknowledged. Keeping it commits
// what raft would have committed had this member been elected leader: an
// entry past the commit index is one whose outcome no client was told, or
// was told by a member that applied it, so committing it breaks no promise.
//
// What it cannot keep: writes the lost majority committed that never
// reached this member's log. Raft needs only a majority to commit, so this
// member may be behind; force the member that is furthest ahead
// (commitIndex in /status, or its log), and only when the others will
// never come back.

// ErrCannotForce is a --force-new-cluster that cannot be carried out.
var ErrCannotForce = errors.New("cannot force a new cluster")

// CommittedCount is how many of entries are at or below commit: those
// the WAL recorded as committed, before a forced new cluster commits the
// rest.
func CommittedCount(entries []*raftpb.Entry, commit uint64) int {
	n := 0
	for _, e := range entries {
		if e.GetIndex() <= commit {
			n++
		}
	}
	return n
}

// ForceNewCluster turns what member id read from its data dir (the
// snapshot's ConfState and index, the hard state and the entries after
// the snapshot) into the log of a one-member cluster: the removals of
// every other member of the configuration the log ends with, to append
// after the entries (or the snapshot at lastIndex), a hard state that
// commits them and everything before them, and the ids they remove. The
// raft node saves them to the WAL and restarts raft from them.
func ForceNewCluster(id uint64, confState *raftpb.ConfState, lastIndex uint64, hardState *raftpb.HardState, entries []*raftpb.Entry) (*raftpb.HardState, []*raftpb.Entry, []uint64, error) {
	ids, err := configuredIDs(confState, entries)
	if err != nil {
		return nil, nil, nil, err
	}
	learner, ok := ids[id]
	if !ok {
		return nil, nil, nil, fmt.Errorf("%w: member %d is not in the configuration its own log ends with (members %v): it was removed, so its data is not the cluster's", ErrCannotForce, id, slices.Sorted(maps.Keys(ids)))
	}
	if learner {
		return nil, nil, nil, fmt.Errorf("%w: member %d is a learner in the configuration its own log ends with: alone it would be a cluster without a voter, which elects no leader, and its log may be far behind the voters'; force a voter", ErrCannotForce, id)
	}
	term := hardState.GetTerm()
	if len(entries) > 0 {
		last := entries[len(entries)-1]
		lastIndex, term = last.GetIndex(), max(term, last.GetTerm())
	}
	var removals []*raftpb.Entry
	var removed []uint64
	for _, other := range slices.Sorted(maps.Keys(ids)) {
		if other == id {
			continue
		}
		// Marshalling a conf change (numbers) cannot fail.
		data, _ := proto.Marshal(membership.RemoveChange(other))
		lastIndex++
		removals = append(removals, &raftpb.Entry{Type: raftpb.EntryConfChange.Enum(), Term: new(term), Index: new(lastIndex), Data: data})
		removed = append(removed, other)
	}
	forced := &raftpb.HardState{Term: new(term), Vote: new(hardState.GetVote()), Commit: new(lastIndex)}
	return forced, removals, removed, nil
}

// configuredIDs is the members, voters and learners, of the configuration
// raft's log ends with: the snapshot's, then each conf change after it
// (etcd's GetEffectiveNodeIDsFromWALEntries), each id mapped to whether it
// is a learner. A change the kvstore refused counts here too, so the set
// may hold an id raft does not: removing it is refused in turn, and changes
// nothing. It never misses a member raft has, which would keep a voter
// that can never vote. Whether a member is a learner follows the kvstore's
// rules (membership.Table.Apply), which raft's configuration follows: an add of a
// member that exists changes nothing, but for an AddNode marked Promote
// (in raft's V2 format, which raftkv does not write, any AddNode of a
// learner promotes it, as raft does).
func configuredIDs(confState *raftpb.ConfState, entries []*raftpb.Entry) (map[uint64]bool, error) {
	ids := make(map[uint64]bool)
	for _, id := range confState.GetVoters() {
		ids[id] = false
	}
	for _, id := range confState.GetLearners() {
		ids[id] = true
	}
	apply := func(typ raftpb.ConfChangeType, id uint64, promote bool) {
		learner, exists := ids[id]
		switch {
		case typ == raftpb.ConfChangeRemoveNode:
			delete(ids, id)
		case !exists:
			ids[id] = typ == raftpb.ConfChangeAddLearnerNode
		case typ == raftpb.ConfChangeAddNode && learner && promote:
			ids[id] = false
		}
	}
	for _, e := range entries {
		switch e.GetType() {
		case raftpb.EntryConfChange:
			var cc raftpb.ConfChange
			if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
				return nil, fmt.Errorf("%w: conf change at index %d: %w", ErrCannotForce, e.GetIndex(), err)
			}
			add, err := membership.AddContextOf(&cc)
			apply(cc.GetType(), cc.GetNodeId(), err == nil && add.Promote)
		case raftpb.EntryConfChangeV2:
			var cc raftpb.ConfChangeV2
			if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
				return nil, fmt.Errorf("%w: conf change at index %d: %w", ErrCannotForce, e.GetIndex(), err)
			}
			for _, c := range cc.GetChanges() {
				apply(c.GetType(), c.GetNodeId(), true)
			}
		}
	}
	return ids, nil
}
