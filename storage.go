package main

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// The disk work raft asks for, done off the raft goroutine. Raft runs with
// asynchronous storage writes (raft.Config.AsyncStorageWrites): instead of
// handing the whole Ready to one goroutine and waiting for Advance, it sends
// two kinds of local message, each carrying the responses to deliver once
// the work is done.
//
//   - MsgStorageAppend: entries, hard state and any snapshot from the
//     leader, to make durable. serveAppends takes every one that is queued
//     and writes them with one fsync (group commit), then delivers their
//     responses: append acknowledgements and votes to peers, and
//     MsgStorageAppendResp to raft, which then knows those entries are
//     stable.
//   - MsgStorageApply: committed entries. serveApplies publishes them on
//     commitC for the kvstore, then tells raft with MsgStorageApplyResp.
//
// Raft hands out committed entries only once they are stable on this
// member, so the kvstore never applies what this member could lose. Each
// goroutine takes its messages in raft's order; between the two, order does
// not matter, except for a snapshot from the leader (see saveLeaderSnapshot).

// storageQueue is how many messages may wait for each storage goroutine
// before serveReady, and so raft, waits for them.
const storageQueue = 256

// applyTask is work for serveApplies, in log order: committed entries and
// the responses to deliver once they are published, or a snapshot from the
// leader that serveAppends has made durable.
type applyTask struct {
	entries   []*raftpb.Entry
	responses []*raftpb.Message
	snapshot  *raftpb.Snapshot
}

// serveAppends is raft's append thread: it makes MsgStorageAppend messages
// durable and then delivers their responses.
func (rc *raftNode) serveAppends() {
	for {
		select {
		case m := <-rc.appendC:
			batch := rc.takeAppends(m)
			if err := rc.saveAppends(batch); err != nil {
				rc.fail(err)
				return
			}
			var responses []*raftpb.Message
			for _, saved := range batch {
				responses = append(responses, saved.GetResponses()...)
			}
			rc.deliver(responses)
		case <-rc.stopC:
			rc.saveQueuedAppends()
			return
		}
	}
}

// saveQueuedAppends writes the appends still queued when the node stops,
// without sending their responses. Raft hands a new commit index to this
// goroutine and the entries it commits to serveApplies side by side, so the
// kvstore may have applied, and a client been told of, entries whose commit
// index still waits here. A restart serves only once it has applied the
// commit index on disk; saving it keeps a clean restart from serving before
// it has caught up with what it acknowledged.
func (rc *raftNode) saveQueuedAppends() {
	for {
		select {
		case m := <-rc.appendC:
			if err := rc.saveAppends(rc.takeAppends(m)); err != nil {
				rc.fail(err)
				return
			}
		default:
			return
		}
	}
}

// takeAppends adds to first the appends queued behind it, up to and
// including one that carries a snapshot: while this goroutine waited on the
// disk, raft went on producing them, and one fsync covers them all.
func (rc *raftNode) takeAppends(first *raftpb.Message) []*raftpb.Message {
	batch := []*raftpb.Message{first}
	for raft.IsEmptySnap(batch[len(batch)-1].GetSnapshot()) {
		select {
		case m := <-rc.appendC:
			batch = append(batch, m)
		default:
			return batch
		}
	}
	return batch
}

// saveAppends writes a batch of appends to the WAL and raft's log; only a
// snapshot, if the batch carries one, can come last.
func (rc *raftNode) saveAppends(batch []*raftpb.Message) error {
	var snapshotMsg *raftpb.Message
	if last := batch[len(batch)-1]; !raft.IsEmptySnap(last.GetSnapshot()) {
		snapshotMsg, batch = last, batch[:len(batch)-1]
	}
	hardState, entries := mergeAppends(batch)
	// Save fsyncs when raft requires it (new entries, term or vote).
	if err := rc.wal.Save(hardState, entries); err != nil {
		return fmt.Errorf("save to WAL: %w", err)
	}
	if err := rc.raftStorage.Append(entries); err != nil {
		return fmt.Errorf("append to raft log: %w", err)
	}
	if snapshotMsg != nil {
		return rc.saveLeaderSnapshot(snapshotMsg)
	}
	return nil
}

// mergeAppends is what a batch of appends leaves behind: the last hard
// state, and the entries, each append's replacing those from its first
// index on, as a new leader may overwrite a follower's uncommitted tail.
func mergeAppends(batch []*raftpb.Message) (*raftpb.HardState, []*raftpb.Entry) {
	var hardState *raftpb.HardState
	var entries []*raftpb.Entry
	for _, m := range batch {
		if hs := appendHardState(m); hs != nil {
			hardState = hs
		}
		if ents := m.GetEntries(); len(ents) > 0 {
			if len(entries) > 0 {
				keep := uint64(0)
				if first := entries[0].GetIndex(); ents[0].GetIndex() > first {
					keep = min(ents[0].GetIndex()-first, uint64(len(entries)))
				}
				entries = entries[:keep]
			}
			entries = append(entries, ents...)
		}
	}
	return hardState, entries
}

// appendHardState is the hard state a MsgStorageAppend carries, or nil:
// raft sets its term, vote and commit together, or none of them.
func appendHardState(m *raftpb.Message) *raftpb.HardState {
	if m.Term == nil {
		return nil
	}
	return &raftpb.HardState{Term: m.Term, Vote: m.Vote, Commit: m.Commit}
}

// saveLeaderSnapshot saves a snapshot the leader sent, and the hard state
// and entries that came with it, then queues it for serveApplies. The
// snapshot goes through applyC, behind any committed entries raft handed
// out before it, so the kvstore loads it after them; raft hands out the
// entries after it only once this append's responses are delivered.
func (rc *raftNode) saveLeaderSnapshot(m *raftpb.Message) error {
	snapshot := m.GetSnapshot()
	if err := rc.saveSnapshot(snapshot); err != nil {
		return err
	}
	if err := rc.wal.Save(appendHardState(m), m.GetEntries()); err != nil {
		return fmt.Errorf("save to WAL: %w", err)
	}
	// The hard state saved with the snapshot must be on disk before WAL
	// files are released, or a crash could leave a commit index beyond the
	// log (etcd issue 10219).
	if err := rc.wal.Sync(); err != nil {
		return fmt.Errorf("sync WAL: %w", err)
	}
	if err := rc.raftStorage.ApplySnapshot(withoutData(snapshot)); err != nil {
		return fmt.Errorf("apply snapshot to raft log: %w", err)
	}
	if err := rc.raftStorage.Append(m.GetEntries()); err != nil {
		return fmt.Errorf("append to raft log: %w", err)
	}
	select {
	case rc.applyC <- applyTask{snapshot: snapshot}:
		return nil
	case <-rc.stopC:
		return ErrStopped
	}
}

// deliver hands on the responses of storage work that is done: those for
// this member go into raft, the rest to peers. Raft's goroutine runs until
// shutdown has waited for the storage goroutines, so Step cannot block for
// good.
func (rc *raftNode) deliver(responses []*raftpb.Message) {
	var toPeers []*raftpb.Message
	for _, m := range responses {
		if m.GetTo() == rc.id {
			rc.node.Step(context.Background(), m)
		} else {
			toPeers = append(toPeers, m)
		}
	}
	rc.transport.Send(toPeers)
}

// serveApplies is raft's apply thread: it publishes committed entries and
// snapshots to the kvstore in log order, and takes snapshots of its own.
func (rc *raftNode) serveApplies() {
	if rc.bootSnapshot != nil {
		// The kvstore learns everything through commitC, the state on disk too.
		if err := rc.publish(&commit{snapshot: rc.bootSnapshot, applyDoneC: make(chan struct{})}); err != nil {
			return
		}
		rc.bootSnapshot = nil
	}
	for {
		select {
		case t := <-rc.applyC:
			if err := rc.apply(t); err != nil {
				rc.fail(err)
				return
			}
		case <-rc.stopC:
			return
		}
	}
}

// apply does one applyTask.
func (rc *raftNode) apply(t applyTask) error {
	if t.snapshot != nil {
		return rc.loadLeaderSnapshot(t.snapshot)
	}
	applyDoneC, err := rc.publishEntries(t.entries)
	if err != nil {
		return err
	}
	rc.deliver(t.responses)
	return rc.maybeSnapshot(applyDoneC)
}

// loadLeaderSnapshot has the kvstore load a snapshot the leader sent, once
// serveAppends has made it durable, and the transport learn its members.
func (rc *raftNode) loadLeaderSnapshot(snapshot *raftpb.Snapshot) error {
	if err := rc.publish(&commit{snapshot: snapshot, applyDoneC: make(chan struct{})}); err != nil {
		return err
	}
	index := snapshot.GetMetadata().GetIndex()
	rc.confState = snapshot.GetMetadata().GetConfState()
	rc.appliedIndex = index
	rc.lastSnapshotIndex.Store(index)
	if err := rc.resetPeers(snapshot); err != nil {
		return err
	}
	if err := rc.wal.ReleaseLockTo(index); err != nil {
		return fmt.Errorf("release WAL: %w", err)
	}
	rc.lg.Info("installed snapshot from leader", zap.Uint64("index", index))
	return nil
}

// publishEntries applies conf changes to raft and the transport, then hands
// the whole batch to the kvstore. It returns the batch's applyDoneC, and
// ErrRemoved once this member's own removal is published.
func (rc *raftNode) publishEntries(entries []*raftpb.Entry) (<-chan struct{}, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	if first := entries[0].GetIndex(); first > rc.appliedIndex+1 {
		return nil, fmt.Errorf("first committed entry %d is past applied index %d + 1", first, rc.appliedIndex)
	}
	removedSelf := false
	for _, e := range entries {
		if e.GetType() != raftpb.EntryConfChange {
			continue
		}
		cc := &raftpb.ConfChange{}
		if err := proto.Unmarshal(e.GetData(), cc); err != nil {
			return nil, fmt.Errorf("decode conf change at %d: %w", e.GetIndex(), err)
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

	c := &commit{entries: entries, applyDoneC: make(chan struct{})}
	if err := rc.publish(c); err != nil {
		return nil, err
	}
	rc.appliedIndex = entries[len(entries)-1].GetIndex()
	if removedSelf {
		// Published first, so the kvstore still wakes the handler of
		// the removal if it is waiting on this member.
		return c.applyDoneC, ErrRemoved
	}
	return c.applyDoneC, nil
}

// publish sends a batch to the kvstore, unless the node is stopping.
func (rc *raftNode) publish(c *commit) error {
	select {
	case rc.commitC <- c:
		return nil
	case <-rc.stopC:
		return ErrStopped
	}
}

// maybeSnapshot snapshots the kvstore once snapshotCount entries have been
// applied since the last snapshot, then compacts raft's in-memory log and
// lets the WAL release the files the snapshot covers.
//
// It also snapshots right after a conf change, as etcd does. A member added
// after the leader compacted its log can only catch up by snapshot, and it
// refuses one whose configuration does not include it: without a fresh
// snapshot it would wait, empty, for snapshotCount more writes.
func (rc *raftNode) maybeSnapshot(applyDoneC <-chan struct{}) error {
	if applyDoneC == nil || (!rc.forceSnapshot && rc.appliedIndex-rc.lastSnapshotIndex.Load() < rc.snapshotCount) {
		return nil
	}
	// The kvstore applies asynchronously; the snapshot must hold exactly
	// the state at appliedIndex, so wait for it to get there.
	select {
	case <-applyDoneC:
	case <-rc.stopC:
		return ErrStopped
	}
	snapshot, err := rc.raftStorage.CreateSnapshot(rc.appliedIndex, rc.confState, nil)
	if errors.Is(err, raft.ErrSnapOutOfDate) {
		// serveAppends has just saved a newer snapshot from the leader;
		// it is queued behind these entries.
		return nil
	}
	if err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	data := rc.sm.snapshot()
	snapshot.Data = data // a copy of raft's; only the file on disk keeps the data (see diskSnapshots)
	if err := rc.saveSnapshot(snapshot); err != nil {
		return err
	}
	keep := min(rc.snapshotCount, maxCatchUpEntries)
	if rc.appliedIndex > keep {
		if err := rc.raftStorage.Compact(rc.appliedIndex - keep); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return fmt.Errorf("compact raft log: %w", err)
		}
	}
	if err := rc.wal.ReleaseLockTo(rc.appliedIndex); err != nil {
		return fmt.Errorf("release WAL: %w", err)
	}
	rc.lastSnapshotIndex.Store(rc.appliedIndex)
	rc.forceSnapshot = false
	rc.lg.Info("saved snapshot", zap.Uint64("index", rc.appliedIndex))
	if len(data) >= releaseMemoryAbove {
		go releaseSnapshotMemory()
	}
	return nil
}

// saveSnapshot writes the snapshot file, then the WAL record that points
// at it: a crash in between leaves an unused file, never a WAL record
// without its snapshot.
func (rc *raftNode) saveSnapshot(snapshot *raftpb.Snapshot) error {
	if err := rc.snapshotter.SaveSnap(snapshot); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	md := snapshot.GetMetadata()
	walSnap := &walpb.Snapshot{Index: new(md.GetIndex()), Term: new(md.GetTerm()), ConfState: md.GetConfState()}
	if err := rc.wal.SaveSnapshot(walSnap); err != nil {
		return fmt.Errorf("save snapshot record to WAL: %w", err)
	}
	return nil
}

// releaseSnapshotMemory returns freed memory to the OS at once. Making or
// loading a snapshot takes several copies of the whole state (the encoding,
// then the snap package's two protobuf layers); without this the process
// keeps that high-water mark as its size. It runs a garbage collection, so
// a caller that must not pause runs it on a goroutine of its own.
func releaseSnapshotMemory() { debug.FreeOSMemory() }

// releaseMemoryAbove is the snapshot size from which making one is followed
// by releaseSnapshotMemory. Below it the copies are too small to matter, and
// a forced collection every few seconds under load costs more CPU (8% of a
// member's, measured at 10 000-key snapshots) than it gives back memory.
const releaseMemoryAbove = 32 << 20

// diskSnapshots is raft's in-memory log with snapshots kept on disk only:
// the MemoryStorage holds each snapshot's metadata, and Snapshot reads the
// data back from the newest snapshot file. Raft asks for it only to send a
// follower that has fallen behind the log; keeping the whole state machine
// in memory a second time for that would double a member's footprint.
type diskSnapshots struct {
	*raft.MemoryStorage
	snapshotter *snap.Snapshotter
}

// Snapshot returns the newest snapshot, data included.
func (s diskSnapshots) Snapshot() (*raftpb.Snapshot, error) {
	meta, err := s.MemoryStorage.Snapshot()
	if err != nil || meta.GetMetadata().GetIndex() == 0 {
		return meta, err
	}
	snapshot, err := s.snapshotter.Load()
	if err != nil || snapshot.GetMetadata().GetIndex() != meta.GetMetadata().GetIndex() {
		// Made in memory but not yet saved to disk, or the other way round;
		// raft asks again later.
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return snapshot, nil
}

// withoutData is snapshot with its metadata only, for the MemoryStorage.
func withoutData(snapshot *raftpb.Snapshot) *raftpb.Snapshot {
	return &raftpb.Snapshot{Metadata: snapshot.GetMetadata()}
}
