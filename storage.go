package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"raftkv/api"
	"raftkv/codec"
	"raftkv/datadir"
	"raftkv/logging"
	"raftkv/recovery"
)

const (
	// maxCatchUpEntries is how many entries stay in the in-memory log after
	// a snapshot, so that a follower a little behind catches up from the
	// log instead of being sent the whole snapshot.
	maxCatchUpEntries = 10000

	// maxSnapFiles and maxWALFiles are how many old snapshot and WAL files
	// to keep on disk; older ones are deleted once raft no longer needs them.
	maxSnapFiles = 5
	maxWALFiles  = 5
)

// Storage: the WAL and snapshots in the data dir (package datadir has its
// layout), and how a restart recovers from them.
//
// The WAL holds every entry and every hard state: new entries, a new term
// or a new vote are fsynced before raft is told they are stable; a new
// commit index alone is buffered until the next fsync (saveAppends).
//
// A first start creates the WAL and the snapshot directory. A restart loads the newest valid snapshot,
// replays the WAL after it into raft's in-memory log, and restarts raft from
// the hard state (term, vote, commit index) the WAL last recorded. The
// kvstore then loads the snapshot and applies the committed entries, and
// startServer serves clients only once it has applied up to bootIndex: the
// commit index the WAL last recorded, which after a crash may be a little
// short of what the member had applied (a commit index alone is not
// fsynced), never beyond what its WAL holds.

// openStorage creates the data dir on first start, recording in the WAL whose
// log it is (datadir.Metadata); on a restart it loads the newest valid snapshot,
// replays the WAL after it into raftStorage and takes the cluster ID the
// WAL recorded.
func (rc *raftNode) openStorage() (walExisted bool, err error) {
	walDir, snapDir := datadir.WALDir(rc.cfg.DataDir), datadir.SnapDir(rc.cfg.DataDir)
	if rc.cfg.ForceNewCluster && !wal.Exist(walDir) {
		return false, fmt.Errorf("%w: data dir %s has no WAL; --force-new-cluster restarts a member from its own data", recovery.ErrCannotForce, rc.cfg.DataDir)
	}
	if err := fileutil.TouchDirAll(rc.lg, snapDir); err != nil {
		return false, fmt.Errorf("data dir %s: %w", rc.cfg.DataDir, err)
	}
	rc.snapshotter = snap.New(rc.lg, snapDir)

	if !wal.Exist(walDir) {
		rc.clusterID = rc.cfg.ClusterID
		rc.wal, err = wal.Create(rc.lg, walDir, datadir.Metadata{MemberID: rc.id, ClusterID: rc.clusterID}.Encode())
		if err != nil {
			return false, fmt.Errorf("create WAL in %s: %w", walDir, err)
		}
		return false, nil
	}

	// Only snapshots the WAL knows of are candidates; a snapshot file that
	// is corrupt is skipped in favour of the next newest.
	walSnaps, err := wal.ValidSnapshotEntries(rc.lg, walDir)
	if err != nil {
		return true, fmt.Errorf("read WAL snapshot records in %s: %w", walDir, err)
	}
	snapshot, err := rc.snapshotter.LoadNewestAvailable(walSnaps)
	if err != nil && !errors.Is(err, snap.ErrNoSnapshot) {
		return true, fmt.Errorf("load snapshot from %s: %w", snapDir, err)
	}

	walSnap := &walpb.Snapshot{Index: new(uint64(0)), Term: new(uint64(0))}
	if snapshot != nil {
		walSnap.Index = new(snapshot.GetMetadata().GetIndex())
		walSnap.Term = new(snapshot.GetMetadata().GetTerm())
		if err := rc.raftStorage.ApplySnapshot(withoutData(snapshot)); err != nil {
			return true, fmt.Errorf("apply snapshot: %w", err)
		}
		rc.confState = snapshot.GetMetadata().GetConfState()
		rc.handedOver = snapshot.GetMetadata().GetIndex()
		rc.snapshotIndex.Store(rc.handedOver)
		rc.bootSnapshot = snapshot
	}

	metadata, hardState, entries, err := rc.readWAL(walDir, walSnap)
	if err != nil {
		var newest uint64
		for _, ws := range walSnaps {
			newest = max(newest, ws.GetIndex())
		}
		if newest > walSnap.GetIndex() {
			// The WAL before the newest snapshot may be gone; say that the
			// snapshot is what is missing, not only that the WAL failed.
			return true, fmt.Errorf("no valid snapshot file in %s for the WAL's snapshot at index %d (corrupt files are renamed *.broken), and the WAL cannot be replayed from index %d without it: %w",
				snapDir, newest, walSnap.GetIndex(), err)
		}
		return true, err
	}
	owner, err := datadir.DecodeMetadata(metadata)
	if err != nil {
		rc.wal.Close()
		return true, fmt.Errorf("data dir %s: %w", rc.cfg.DataDir, err)
	}
	if owner.MemberID != rc.id {
		rc.wal.Close()
		return true, fmt.Errorf("data dir %s belongs to member %d, not %d", rc.cfg.DataDir, owner.MemberID, rc.id)
	}
	rc.clusterID = owner.ClusterID
	if rc.cfg.ForceNewCluster {
		if hardState, entries, err = rc.forceNewCluster(walSnap.GetIndex(), hardState, entries); err != nil {
			rc.wal.Close()
			return true, err
		}
	}
	if hardState != nil {
		if err := rc.raftStorage.SetHardState(hardState); err != nil {
			rc.wal.Close()
			return true, fmt.Errorf("restore hard state: %w", err)
		}
		rc.bootIndex = hardState.GetCommit()
	}
	if err := rc.raftStorage.Append(entries); err != nil {
		rc.wal.Close()
		return true, fmt.Errorf("restore log: %w", err)
	}
	rc.lg.Info("replayed WAL",
		zap.Uint64("snapshot-index", rc.handedOver),
		zap.Int("entries", len(entries)),
		zap.Uint64("commit-index", rc.bootIndex))
	return true, nil
}

// readWAL opens the WAL after walSnap and reads it to the end. A last
// record torn by a crash mid-write is cut off, once, as etcd does: it was
// never fsynced, so nobody was told it was saved.
func (rc *raftNode) readWAL(walDir string, walSnap *walpb.Snapshot) ([]byte, *raftpb.HardState, []*raftpb.Entry, error) {
	repaired := false
	for {
		w, err := wal.Open(rc.lg, walDir, walSnap)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("open WAL in %s: %w", walDir, err)
		}
		metadata, hardState, entries, err := w.ReadAll()
		if err == nil {
			rc.wal = w
			return metadata, hardState, entries, nil
		}
		w.Close()
		if repaired || !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, nil, fmt.Errorf("read WAL in %s: %w", walDir, err)
		}
		if !wal.Repair(rc.lg, walDir) {
			return nil, nil, nil, fmt.Errorf("repair torn WAL in %s: %w", walDir, err)
		}
		rc.lg.Warn("cut a torn record off the end of the WAL", zap.Error(err))
		repaired = true
	}
}

// forceNewCluster turns the log a restart read into that of a one-member
// cluster (recovery.ForceNewCluster), saves the removals it appends to the
// WAL with a hard state committing everything, and returns the hard state
// and entries to restart raft from.
func (rc *raftNode) forceNewCluster(snapshotIndex uint64, hardState *raftpb.HardState, entries []*raftpb.Entry) (*raftpb.HardState, []*raftpb.Entry, error) {
	forced, removals, removed, err := recovery.ForceNewCluster(rc.id, rc.confState, snapshotIndex, hardState, entries)
	if err != nil {
		return nil, nil, err
	}
	// Save fsyncs for new entries; Sync makes sure of the hard state too.
	if err := rc.wal.Save(forced, removals); err != nil {
		return nil, nil, fmt.Errorf("save the forced conf changes to the WAL: %w", err)
	}
	if err := rc.wal.Sync(); err != nil {
		return nil, nil, fmt.Errorf("sync WAL: %w", err)
	}
	rc.lg.Warn("forcing a new cluster of this member alone", zap.Uint64s("removing", removed),
		zap.Uint64("wal-commit-index", hardState.GetCommit()), zap.Uint64("commit-index", forced.GetCommit()),
		zap.Int("uncommitted-entries-kept", len(entries)-recovery.CommittedCount(entries, hardState.GetCommit())))
	return forced, append(entries, removals...), nil
}

// Snapshots: when they are taken, written and loaded.
//
//   - Taken by the hand-over goroutine (maybeSnapshot), every
//     --snapshot-count entries and right after a conf change that adds or
//     removes a member, once the kvstore has applied exactly up to the
//     snapshot's index.
//   - Written as a snapshot file, then a WAL record pointing at it
//     (saveSnapshot); the WAL then releases the files the snapshot covers.
//   - Sent by the leader to a follower behind its log: raft reads it back from
//     disk (diskSnapshots). The follower's append goroutine makes it durable
//     (saveLeaderSnapshot), and its hand-over goroutine hands it to the
//     kvstore (installLeaderSnapshot).
//   - Loaded at start, the newest valid one, before the WAL after it is
//     replayed (openStorage); the kvstore loads it first.

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
	if !rc.forceSnapshot && rc.handedOver-rc.snapshotIndex.Load() < rc.snapshotCount {
		return nil
	}
	// The kvstore applies on its own goroutine; the snapshot must hold
	// exactly the state at handedOver, so wait for it to get there.
	select {
	case <-applied:
	case <-rc.stopC:
		return api.ErrStopped
	}
	start := time.Now()
	index := rc.handedOver
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
	rc.metrics.SnapshotSaved(start, len(data))
	keep := min(rc.snapshotCount, maxCatchUpEntries)
	if index > keep {
		if err := rc.raftStorage.Compact(index - keep); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return fmt.Errorf("compact raft log: %w", err)
		}
	}
	if err := rc.wal.ReleaseLockTo(index); err != nil {
		return fmt.Errorf("release WAL: %w", err)
	}
	rc.forceSnapshot = false
	rc.lg.Info("saved snapshot", zap.Uint64("index", index))
	codec.ReleaseMemoryAfter(len(data))
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
	rc.snapshotIndex.Store(md.GetIndex()) // diskSnapshots may read the file now
	return nil
}

// saveLeaderSnapshot runs on the append goroutine: it saves a snapshot the
// leader sent, and the hard state and entries that came with it, then
// queues it for the hand-over goroutine. The snapshot goes through committedC,
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
		return api.ErrStopped
	}
}

// installLeaderSnapshot runs on the hand-over goroutine: it has the kvstore load
// a snapshot the leader sent, once the append goroutine has made it durable,
// and the transport learn its members.
func (rc *raftNode) installLeaderSnapshot(snapshot *raftpb.Snapshot) error {
	if err := rc.sendToApply(&applyBatch{snapshot: snapshot, applied: make(chan struct{})}); err != nil {
		return err
	}
	index := snapshot.GetMetadata().GetIndex()
	rc.confState = snapshot.GetMetadata().GetConfState()
	rc.handedOver = index
	if err := rc.resetPeers(snapshot); err != nil {
		return err
	}
	if err := rc.wal.ReleaseLockTo(index); err != nil {
		return fmt.Errorf("release WAL: %w", err)
	}
	rc.lg.Info("installed snapshot from leader", zap.Uint64("index", index))
	return nil
}

// diskSnapshots is raft's in-memory log with snapshots kept on disk only:
// the MemoryStorage holds each snapshot's metadata, and Snapshot reads the
// data back from that snapshot's file. Raft asks for it only to send a
// follower that has fallen behind the log; keeping the whole state machine
// in memory a second time for that would double a member's footprint.
//
// Raft asks from its own goroutine, while the hand-over goroutine may be
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
	snapshot, err := snap.Read(s.lg, filepath.Join(s.dir, datadir.SnapFileName(md.GetTerm(), md.GetIndex())))
	if err != nil {
		s.lg.Warn("cannot read the snapshot to send a follower", zap.Uint64("index", md.GetIndex()), zap.Error(err))
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return snapshot, nil
}

// withoutData is snapshot with its metadata only, for the MemoryStorage.
func withoutData(snapshot *raftpb.Snapshot) *raftpb.Snapshot {
	return &raftpb.Snapshot{Metadata: snapshot.GetMetadata()}
}

// purgeOldFiles deletes old snapshot and WAL files beyond the newest few.
// A WAL file is deleted only once the WAL has released it, after a snapshot
// covers it.
func (rc *raftNode) purgeOldFiles() {
	const interval = 30 * time.Second
	lg := logging.NewPurgeLogger(rc.lg)
	snapErrC := fileutil.PurgeFile(lg, datadir.SnapDir(rc.cfg.DataDir), "snap", maxSnapFiles, interval, rc.stopC)
	walErrC := fileutil.PurgeFile(lg, datadir.WALDir(rc.cfg.DataDir), "wal", maxWALFiles, interval, rc.stopC)
	select {
	case err := <-snapErrC:
		rc.lg.Warn("stopped purging old snapshot files", zap.Error(err))
	case err := <-walErrC:
		rc.lg.Warn("stopped purging old WAL files", zap.Error(err))
	case <-rc.stopC:
	}
}
