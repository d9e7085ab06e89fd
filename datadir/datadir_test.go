package datadir_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.uber.org/zap"

	"raftkv/datadir"
	"raftkv/membership"
)

// TestWALMetadata proves the WAL metadata round-trips, that a WAL from before cluster IDs (the member id alone) reads as the legacy cluster, and that anything else is refused.
func TestWALMetadata(t *testing.T) {
	for _, m := range []datadir.Metadata{{MemberID: 1, ClusterID: 0x1000}, {MemberID: membership.MaxMemberID, ClusterID: 1<<64 - 1}, {MemberID: 3, ClusterID: 0}} {
		got, err := datadir.DecodeMetadata(m.Encode())
		if err != nil || got != m {
			t.Errorf("decode(encode(%+v)) = %+v, %v", m, got, err)
		}
	}
	for _, id := range []uint64{1, 8, 300, membership.MaxMemberID} {
		got, err := datadir.DecodeMetadata(binary.AppendUvarint(nil, id))
		if want := (datadir.Metadata{MemberID: id, ClusterID: datadir.LegacyClusterID}); err != nil || got != want {
			t.Errorf("decode(uvarint(%d)) = %+v, %v; want %+v", id, got, err, want)
		}
	}
	for _, b := range [][]byte{nil, {0x80}, {0x01, 0x80}, append(datadir.Metadata{MemberID: 1, ClusterID: 2}.Encode(), 0)} {
		if got, err := datadir.DecodeMetadata(b); !errors.Is(err, datadir.ErrBadMetadata) {
			t.Errorf("decode(%x) = %+v, %v; want ErrBadMetadata", b, got, err)
		}
	}
}

// TestCheckFree proves a data dir whose WAL another process holds open is
// refused with ErrLocked, naming the data dir, and that one nobody holds,
// one without a WAL and one that does not exist are let through. (The
// WAL's lock is an open file description's, so this process's own open
// WAL stands for another process's.)
func TestCheckFree(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "raftkv-1")
	if err := datadir.CheckFree(dir); err != nil {
		t.Errorf("CheckFree of a data dir that does not exist: %v", err)
	}
	if err := os.MkdirAll(datadir.WALDir(dir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := datadir.CheckFree(dir); err != nil {
		t.Errorf("CheckFree of an empty WAL dir: %v", err)
	}
	if err := os.Remove(datadir.WALDir(dir)); err != nil {
		t.Fatal(err)
	}
	w, err := wal.Create(zap.NewNop(), datadir.WALDir(dir), datadir.Metadata{MemberID: 1, ClusterID: 2}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !datadir.HasWAL(dir) {
		t.Errorf("HasWAL(%s) = false with a WAL in it", dir)
	}
	err = datadir.CheckFree(dir)
	if !errors.Is(err, datadir.ErrLocked) || !strings.Contains(err.Error(), "data dir "+dir) || strings.ContainsAny(err.Error(), "\r\n") {
		t.Errorf("CheckFree of a data dir whose WAL is open: %v, want ErrLocked in one line naming %s", err, dir)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := datadir.CheckFree(dir); err != nil {
		t.Errorf("CheckFree once the WAL is closed: %v", err)
	}
	// CheckFree's own lock is let go: the WAL opens, and locks, after it.
	w, err = wal.Open(zap.NewNop(), datadir.WALDir(dir), &walpb.Snapshot{Index: new(uint64(0)), Term: new(uint64(0))})
	if err != nil {
		t.Fatalf("open the WAL after CheckFree: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}
