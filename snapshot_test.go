package main

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// TestDiskSnapshotsWhileWriting proves that raft asking for the snapshot
// its log names while the apply goroutine is still writing that snapshot's
// file (as happens when a conf change adds a member) gets "temporarily
// unavailable" and leaves the file alone, rather than taking the half
// written file for broken and renaming it, after which the snapshot would
// never be available (found by BenchmarkJoin); and that once the file is
// written whole, raft gets it.
func TestDiskSnapshotsWhileWriting(t *testing.T) {
	dir := t.TempDir()
	ms := raft.NewMemoryStorage()
	var saved atomic.Uint64
	s := diskSnapshots{MemoryStorage: ms, lg: zap.NewNop(), dir: dir, saved: &saved}
	full := &raftpb.Snapshot{
		Data:     encodeSnapshot(map[uint64]*member{1: {ID: 1}}, nil, newKeySpace(), nil),
		Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(10)), Term: new(uint64(2)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}},
	}
	if err := ms.ApplySnapshot(withoutData(full)); err != nil {
		t.Fatal(err)
	}
	// Half the file is on disk; a newer one is being written too.
	file := filepath.Join(dir, snapFileName(2, 10))
	half := []byte("\x0a\x05trunc")
	for _, f := range []string{file, filepath.Join(dir, snapFileName(2, 11))} {
		if err := os.WriteFile(f, half, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, savedIndex := range []uint64{9, 10} { // not yet recorded as written; recorded too early
		saved.Store(savedIndex)
		if _, err := s.Snapshot(); !errors.Is(err, raft.ErrSnapshotTemporarilyUnavailable) {
			t.Errorf("saved %d: Snapshot() = %v while the file is half written, want ErrSnapshotTemporarilyUnavailable", savedIndex, err)
		}
		if _, err := os.Stat(file); err != nil {
			t.Fatalf("saved %d: the half-written snapshot file is gone: %v", savedIndex, err)
		}
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if err := snap.New(zap.NewNop(), dir).SaveSnap(full); err != nil {
		t.Fatal(err)
	}
	got, err := s.Snapshot()
	if err != nil || got.GetMetadata().GetIndex() != 10 || string(got.GetData()) != string(full.GetData()) {
		t.Fatalf("Snapshot() once written = index %d, %v; want index 10 with the data", got.GetMetadata().GetIndex(), err)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "*.broken")); len(matches) > 0 {
		t.Errorf("files renamed broken: %v", matches)
	}
}
