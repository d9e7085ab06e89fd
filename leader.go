package main

import (
	"cmp"
	"context"
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Who leads, as this member knows it: recorded from each Ready, read by the
// HTTP API, the read loop and the membership handlers.

// trackLeader records who leads, as rd reports it, and, in the Ready that
// makes this node leader, the index of the empty entry raft appends at the
// start of every leader's term. A new leader's commit index can lag entries
// its predecessor committed and acknowledged; it knows everything committed
// before it only once its own first entry has committed (raft thesis §6.4).
// Raft holds ReadIndex back until then, except on a lone voter, which it
// answers at once (etcd-io/raft PR #105), and a `default` read asks no one:
// so every read this leader serves also waits to apply that entry.
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
	if rc.leader.Swap(rd.SoftState.Lead) != rd.SoftState.Lead {
		rc.metrics.leaderChanged(rd.SoftState.Lead)
		rc.leaderMu.Lock()
		if rc.leaderChangeC != nil {
			close(rc.leaderChangeC)
			rc.leaderChangeC = nil // the next leaderChange makes a new one
		}
		rc.leaderMu.Unlock()
	}
}

// leaderChange returns a channel that is closed the next time the leader
// this node knows changes, to None or to another member. Take it before
// looking at leaderID, so that no change can fall between the two.
func (rc *raftNode) leaderChange() <-chan struct{} {
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
		changed := rc.leaderChange()
		if ok(rc.leaderID()) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-rc.stopC:
			return ErrStopped
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

// leaderID is the member this node believes leads, or raft.None.
func (rc *raftNode) leaderID() uint64 { return rc.leader.Load() }
