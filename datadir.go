package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// The data dir, and how a restart recovers from it.
//
//	<data-dir>/wal/   etcd's WAL: every entry and hard state, fsynced
//	<data-dir>/snap/  etcd's snapshot files, the newest few
//
// A first start creates both. A restart loads the newest valid snapshot,
// replays the WAL after it into raft's in-memory log, and restarts raft from
// the hard state (term, vote, commit index) the WAL last recorded. The
// kvstore then loads the snapshot and applies the committed entries, and
// startServer serves clients only once it has applied up to bootIndex.

// openStorage creates the data dir on first start, recording in the WAL whose
// log it is (walMetadata); on a restart it loads the newest valid snapshot,
// replays the WAL after it into raftStorage and takes the cluster ID the
// WAL recorded.
func (rc *raftNode) openStorage() (walExisted bool, err error) {
	walDir, snapDir := rc.walDir(), rc.snapDir()
	if rc.cfg.forceNewCluster && !wal.Exist(walDir) {
		return false, fmt.Errorf("%w: data dir %s has no WAL; --force-new-cluster restarts a member from its own data", ErrCannotForce, rc.cfg.dataDir)
	}
	if err := fileutil.TouchDirAll(rc.lg, snapDir); err != nil {
		return false, fmt.Errorf("data dir %s: %w", rc.cfg.dataDir, err)
	}
	rc.snapshotter = snap.New(rc.lg, snapDir)

	if !wal.Exist(walDir) {
		rc.clusterID = rc.cfg.clusterID
		rc.wal, err = wal.Create(rc.lg, walDir, walMetadata{memberID: rc.id, clusterID: rc.clusterID}.encode())
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
		rc.queuedIndex = snapshot.GetMetadata().GetIndex()
		rc.lastSnapshotIndex.Store(rc.queuedIndex)
		rc.savedSnapshotIndex.Store(rc.queuedIndex)
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
	owner, err := decodeWALMetadata(metadata)
	if err != nil {
		rc.wal.Close()
		return true, fmt.Errorf("data dir %s: %w", rc.cfg.dataDir, err)
	}
	if owner.memberID != rc.id {
		rc.wal.Close()
		return true, fmt.Errorf("data dir %s belongs to member %d, not %d", rc.cfg.dataDir, owner.memberID, rc.id)
	}
	rc.clusterID = owner.clusterID
	if rc.cfg.forceNewCluster {
		if hardState, entries, err = rc.forceNewCluster(rc.confState, walSnap.GetIndex(), hardState, entries); err != nil {
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
		zap.Uint64("snapshot-index", rc.queuedIndex),
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

// walDir and snapDir are where this member's WAL and snapshot files live,
// as etcd lays out a member's data dir.
func (rc *raftNode) walDir() string  { return walDir(rc.cfg.dataDir) }
func (rc *raftNode) snapDir() string { return filepath.Join(rc.cfg.dataDir, "snap") }

// walDir is the WAL directory of the data dir dataDir.
func walDir(dataDir string) string { return filepath.Join(dataDir, "wal") }

// hasWAL reports whether dataDir holds a member's WAL: a restart, not a first start.
func hasWAL(dataDir string) bool { return wal.Exist(walDir(dataDir)) }
