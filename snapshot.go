package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime/debug"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// Snapshots: when they are taken, written and loaded.
//
//   - Taken by the apply goroutine (maybeSnapshot), every --snapshot-count
//     entries and right after a conf change, once the kvstore has applied
//     exactly up to the snapshot's index.
//   - Written as a snapshot file, then a WAL record pointing at it
//     (saveSnapshot); the WAL then releases the files the snapshot covers.
//   - Sent by the leader to a follower behind its log: raft reads it back from
//     disk (diskSnapshots). The follower's append goroutine makes it durable
//     (saveLeaderSnapshot), and its apply goroutine hands it to the kvstore
//     (installLeaderSnapshot).
//   - Loaded at start, the newest valid one, before the WAL after it is
//     replayed (datadir.go openStorage); the kvstore loads it first.

// maybeSnapshot snapshots the kvstore once snapshotCount entries have been
// handed to it since the last snapshot, then compacts raft's in-memory log
// and lets the WAL release the files the snapshot covers.
//
// It also snapshots right after a conf change that adds or removes a
// member, as etcd does. A member added after the leader compacted its log
// can only catch up by snapshot, and it refuses one whose configuration
// does not include it: without a fresh snapshot it would wait, empty, for
// snapshotCount more writes. (Not after a promotion: the learner is in the
// last snapshot already, and taking one holds every member's apply up.)
func (rc *raftNode) maybeSnapshot(applied <-chan struct{}) error {
	if !rc.forceSnapshot && rc.queuedIndex-rc.lastSnapshotIndex.Load() < rc.snapshotCount {
		return nil
	}
	// The kvstore applies on its own goroutine; the snapshot must hold
	// exactly the state at queuedIndex, so wait for it to get there.
	select {
	case <-applied:
	case <-rc.stopC:
		return ErrStopped
	}
	start := time.Now()
	index := rc.queuedIndex
	snapshot, err := rc.raftStorage.CreateSnapshot(index, rc.confState, nil)
	if errors.Is(err, raft.ErrSnapOutOfDate) {
		// The append goroutine has just saved a newer snapshot from the
		// leader; it is queued behind these entries.
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
	rc.metrics.snapshotSaved(start, len(data))
	keep := min(rc.snapshotCount, maxCatchUpEntries)
	if index > keep {
		if err := rc.raftStorage.Compact(index - keep); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return fmt.Errorf("compact raft log: %w", err)
		}
	}
	if err := rc.wal.ReleaseLockTo(index); err != nil {
		return fmt.Errorf("release WAL: %w", err)
	}
	rc.lastSnapshotIndex.Store(index)
	rc.forceSnapshot = false
	rc.lg.Info("saved snapshot", zap.Uint64("index", index))
	releaseMemoryAfter(len(data))
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
	rc.savedSnapshotIndex.Store(md.GetIndex()) // diskSnapshots may read the file now
	return nil
}

// saveLeaderSnapshot runs on the append goroutine: it saves a snapshot the
// leader sent, and the hard state and entries that came with it, then
// queues it for the apply goroutine. The snapshot goes through committedC,
// behind any committed entries raft handed out before it, so the kvstore
// loads it after them; raft hands out the entries after it only once this
// append's responses are delivered.
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
	case rc.committedC <- committed{snapshot: snapshot}:
		return nil
	case <-rc.stopC:
		return ErrStopped
	}
}

// installLeaderSnapshot runs on the apply goroutine: it has the kvstore load
// a snapshot the leader sent, once the append goroutine has made it durable,
// and the transport learn its members.
func (rc *raftNode) installLeaderSnapshot(snapshot *raftpb.Snapshot) error {
	if err := rc.sendToApply(&applyBatch{snapshot: snapshot, applied: make(chan struct{})}); err != nil {
		return err
	}
	index := snapshot.GetMetadata().GetIndex()
	rc.confState = snapshot.GetMetadata().GetConfState()
	rc.queuedIndex = index
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

// releaseSnapshotMemory returns freed memory to the OS at once. Making or
// loading a snapshot takes several copies of the whole state (the encoding,
// then the snap package's two protobuf layers); without this the process
// keeps that high-water mark as its size. It runs a garbage collection, so
// a caller that must not pause runs it on a goroutine of its own.
func releaseSnapshotMemory() { debug.FreeOSMemory() }

// releaseMemoryAbove is the snapshot size from which making or loading one
// is followed by releaseSnapshotMemory. Below it the copies are too small to matter, and
// a forced collection every few seconds under load costs more CPU (8% of a
// member's, measured at 10 000-key snapshots) than it gives back memory.
const releaseMemoryAbove = 32 << 20

// releaseMemoryAfter runs releaseSnapshotMemory, on a goroutine of its own,
// after a snapshot of size bytes was made or loaded, if it is that large.
func releaseMemoryAfter(size int) {
	if size >= releaseMemoryAbove {
		go releaseSnapshotMemory()
	}
}

// diskSnapshots is raft's in-memory log with snapshots kept on disk only:
// the MemoryStorage holds each snapshot's metadata, and Snapshot reads the
// data back from that snapshot's file. Raft asks for it only to send a
// follower that has fallen behind the log; keeping the whole state machine
// in memory a second time for that would double a member's footprint.
//
// Raft asks from its own goroutine, while the apply goroutine may be
// writing the very snapshot raft's log already names (maybeSnapshot records
// it in the MemoryStorage first, then writes the file): a conf change adds
// a member that needs a snapshot and forces a new one, at once. So Snapshot
// reads a file only once it is written whole (saved), and reads it by its
// name, never the way the snapshotter's Load does: Load takes a file it
// cannot read, one half written, for broken and renames it *.broken, and
// the snapshot raft's log names is then never available again (until the
// next one), while raft goes on reading files on every message from the
// member that waits, and commits nothing meanwhile.
type diskSnapshots struct {
	*raft.MemoryStorage
	lg    *zap.Logger
	dir   string         // the snapshot files' directory
	saved *atomic.Uint64 // the index of the newest snapshot written whole
}

// Snapshot returns the newest snapshot, data included.
func (s diskSnapshots) Snapshot() (*raftpb.Snapshot, error) {
	meta, err := s.MemoryStorage.Snapshot()
	md := meta.GetMetadata()
	if err != nil || md.GetIndex() == 0 {
		return meta, err
	}
	if s.saved.Load() < md.GetIndex() {
		return nil, raft.ErrSnapshotTemporarilyUnavailable // being written; raft asks again later
	}
	snapshot, err := snap.Read(s.lg, filepath.Join(s.dir, snapFileName(md.GetTerm(), md.GetIndex())))
	if err != nil {
		s.lg.Warn("cannot read the snapshot to send a follower", zap.Uint64("index", md.GetIndex()), zap.Error(err))
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return snapshot, nil
}

// snapFileName is the name etcd's snap package gives the snapshot at term
// and index (Snapshotter.SaveSnap).
func snapFileName(term, index uint64) string {
	return fmt.Sprintf("%016x-%016x.snap", term, index)
}

// withoutData is snapshot with its metadata only, for the MemoryStorage.
func withoutData(snapshot *raftpb.Snapshot) *raftpb.Snapshot {
	return &raftpb.Snapshot{Metadata: snapshot.GetMetadata()}
}
