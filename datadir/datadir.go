// Package datadir is the layout of a member's data dir, as etcd lays out
// a member's:
//
//	<data-dir>/wal/   etcd's WAL: every entry and hard state
//	<data-dir>/snap/  etcd's snapshot files, the newest few
//
// and what the WAL records, once, when it is created: whose log it is
// (Metadata). The raft node opens the WAL and snapshots here; the bootstrap
// checks and restore look at them before it does.
package datadir

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/storage/wal"
)

// WALDir is the WAL directory of the data dir dataDir.
func WALDir(dataDir string) string { return filepath.Join(dataDir, "wal") }

// SnapDir is the snapshot directory of the data dir dataDir.
func SnapDir(dataDir string) string { return filepath.Join(dataDir, "snap") }

// HasWAL reports whether dataDir holds a member's WAL: a restart, not a
// first start.
func HasWAL(dataDir string) bool { return wal.Exist(WALDir(dataDir)) }

// SnapFileName is the name etcd's snap package gives the snapshot at term
// and index (Snapshotter.SaveSnap).
func SnapFileName(term, index uint64) string {
	return fmt.Sprintf("%016x-%016x.snap", term, index)
}

// ErrLocked is a data dir another process has open.
var ErrLocked = errors.New("data dir in use")

// CheckFree refuses a data dir another process has open. etcd's wal
// package locks every WAL file it writes (fileutil.TryLockFile), and a
// running member always holds its WAL's last file: if taking that lock
// for a moment fails, someone holds it. It must run before anything reads
// the data dir, since reading the snapshots another process is writing
// could set a good one aside as broken. Any other failure is left for
// opening the WAL to report.
func CheckFree(dataDir string) error {
	names, err := fileutil.ReadDir(WALDir(dataDir), fileutil.WithExt(".wal"))
	if err != nil || len(names) == 0 {
		return nil
	}
	f, err := fileutil.TryLockFile(filepath.Join(WALDir(dataDir), names[len(names)-1]), os.O_RDWR, fileutil.PrivateFileMode)
	if errors.Is(err, fileutil.ErrLocked) {
		return fmt.Errorf("%w: another raftkv process is using data dir %s (its WAL is locked); stop that process first, or give this one a --data-dir of its own",
			ErrLocked, dataDir)
	}
	if err != nil {
		return nil
	}
	return f.Close()
}

// ErrBadMetadata is WAL metadata that does not decode.
var ErrBadMetadata = errors.New("unreadable WAL metadata")

// LegacyClusterID is the ID every raftkv cluster used before IDs were
// derived. A WAL whose metadata holds only the member id was written by
// such a member, and its cluster keeps this ID.
const LegacyClusterID = 0x1000

// Metadata is what a WAL records, once, when it is created: whose log it
// is. The member id keeps a data dir from ever being replayed as another
// member's; the cluster ID keeps a member in the cluster it first started
// in, whatever --cluster says when it restarts.
type Metadata struct {
	MemberID  uint64
	ClusterID uint64
}

// Encode writes the metadata as two uvarints, member id first. Data dirs
// from before cluster IDs hold the member id alone.
func (m Metadata) Encode() []byte {
	return binary.AppendUvarint(binary.AppendUvarint(nil, m.MemberID), m.ClusterID)
}

// DecodeMetadata reads what Encode wrote, or the member id alone, which a
// WAL written before cluster IDs holds: its cluster is LegacyClusterID.
func DecodeMetadata(b []byte) (Metadata, error) {
	memberID, n := binary.Uvarint(b)
	if n <= 0 {
		return Metadata{}, fmt.Errorf("%w: no member id in %x", ErrBadMetadata, b)
	}
	if n == len(b) {
		return Metadata{MemberID: memberID, ClusterID: LegacyClusterID}, nil
	}
	clusterID, m := binary.Uvarint(b[n:])
	if m <= 0 || n+m != len(b) {
		return Metadata{}, fmt.Errorf("%w: no cluster ID after member %d in %x", ErrBadMetadata, memberID, b)
	}
	return Metadata{MemberID: memberID, ClusterID: clusterID}, nil
}
