package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap/snappb"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// Recovery tests: a member is stopped, its WAL or snapshot files are damaged
// on disk the way a crash or a bad disk would damage them, and it is started
// again on the same data dir through the real raftNode, WAL and snapshotter.
// Whatever the damage, a member may refuse to start, but it must never serve
// a state that lacks a write it acknowledged (204 means committed and fsynced).

// recoveryFrame is one record of an etcd WAL file as it lies on disk.
//
// etcd frames every record as an 8-byte little-endian length word followed
// by the record, padded to 8 bytes so that a length word never straddles a
// sector and cannot itself be torn. The lower 56 bits of the word are the
// record's length; if the top bit is set, the low 3 bits of the top byte are
// the padding (wal/encoder.go encodeFrameSize, wal/decoder.go decodeFrameSize).
type recoveryFrame struct {
	off  int64 // where the length word starts
	size int64 // record bytes, without padding
	pad  int64 // zero bytes after the record
	rec  *walpb.Record
}

// data is where the record itself starts, after the length word.
func (f recoveryFrame) data() int64 { return f.off + 8 }

// end is where the next frame starts.
func (f recoveryFrame) end() int64 { return f.data() + f.size + f.pad }

// entry decodes the raft entry an entry record carries; ok is false for
// every other kind of record (hard state, snapshot, CRC, metadata).
func (f recoveryFrame) entry(t testing.TB) (e *raftpb.Entry, ok bool) {
	t.Helper()
	if f.rec.GetType() != wal.EntryType {
		return nil, false
	}
	e = &raftpb.Entry{}
	if err := proto.Unmarshal(f.rec.GetData(), e); err != nil {
		t.Fatalf("WAL entry record at offset %d: %v", f.off, err)
	}
	return e, true
}

// recoveryReadFrames walks the frames of one WAL file to the end of its
// data. WAL files are preallocated (64 MB of zeros), so the file size says
// nothing about where the data ends: a zero length word does, as it does for
// etcd's decoder.
func recoveryReadFrames(t testing.TB, path string) []recoveryFrame {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var frames []recoveryFrame
	var off int64
	for {
		var word [8]byte
		if _, err := io.ReadFull(r, word[:]); errors.Is(err, io.EOF) {
			return frames
		} else if err != nil {
			t.Fatalf("%s: length word at offset %d: %v", path, off, err)
		}
		lenField := binary.LittleEndian.Uint64(word[:])
		if lenField == 0 {
			return frames
		}
		fr := recoveryFrame{off: off, size: int64(lenField &^ (0xff << 56))}
		if lenField&(1<<63) != 0 {
			fr.pad = int64(lenField>>56) & 0x7
		}
		buf := make([]byte, fr.size+fr.pad)
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatalf("%s: record at offset %d (%d bytes): %v", path, off, fr.size, err)
		}
		fr.rec = &walpb.Record{}
		if err := proto.Unmarshal(buf[:fr.size], fr.rec); err != nil {
			t.Fatalf("%s: record at offset %d: %v", path, off, err)
		}
		frames = append(frames, fr)
		off = fr.end()
	}
}

// recoveryFiles lists the files in dir whose names end in suffix, oldest
// first: etcd names WAL files seq-index and snapshot files term-index, both
// in fixed-width hex, so name order is log order.
func recoveryFiles(t testing.TB, dir, suffix string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*"+suffix))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// recoveryDataDir is member id's data dir; its WAL is in walDir(dataDir)
// and its snapshots in the snap subdirectory (raftNode.snapDir).
func recoveryDataDir(c *testCluster, id uint64) string { return c.config(id, "").dataDir }

// recoverySnapDir is where member id's snapshot files are.
func recoverySnapDir(c *testCluster, id uint64) string {
	return filepath.Join(recoveryDataDir(c, id), "snap")
}

// recoveryNewestWAL returns the path of member id's newest WAL file: the one
// a crash tears, since only the tail of the log is ever being written.
func recoveryNewestWAL(t testing.TB, c *testCluster, id uint64) string {
	t.Helper()
	names := recoveryFiles(t, walDir(recoveryDataDir(c, id)), ".wal")
	if len(names) == 0 {
		t.Fatalf("member %d has no WAL file", id)
	}
	return names[len(names)-1]
}

// recoveryKV copies member id's applied key-value state, to compare what a
// restarted member holds with what it held, key for key.
func recoveryKV(t testing.TB, c *testCluster, id uint64) map[string]string {
	t.Helper()
	s := c.server(id)
	if s == nil {
		t.Fatalf("member %d is not running", id)
	}
	s.store.mu.RLock()
	defer s.store.mu.RUnlock()
	kv := make(map[string]string, s.store.kv.Len())
	s.store.kv.Scan(func(k string, v keyValue) bool {
		kv[k] = v.value
		return true
	})
	return kv
}

// recoveryCheckKV requires running member id to hold exactly want: the same
// keys with the same values in its applied state, and consistent reads of
// every key (and of each key in gone) to agree through the client API.
func recoveryCheckKV(t testing.TB, c *testCluster, id uint64, want map[string]string, gone ...string) {
	t.Helper()
	if got := recoveryKV(t, c, id); !maps.Equal(got, want) {
		t.Fatalf("member %d holds %d keys %v, want exactly the %d keys %v", id, len(got), got, len(want), want)
	}
	c.waitLeader()
	for k, v := range want {
		clusterMustRead(t, c, id, k, levelConsistent, v)
	}
	for _, k := range gone {
		if r := clusterGet(t, c, id, k, levelConsistent); r.code != http.StatusNotFound {
			t.Fatalf("consistent read of deleted key %s on member %d: %d %q, want 404", k, id, r.code, r.body)
		}
	}
}

// recoveryTryStart starts member id on its data dir and returns why it
// refused, or nil if it runs. A port someone else took is retried, as
// startWith does, so that an error is about the data dir.
func recoveryTryStart(t testing.TB, c *testCluster, id uint64) error {
	t.Helper()
	var err error
	eventually(t, 10*time.Second, fmt.Sprintf("member %d to start or refuse", id), func() bool {
		err = c.tryStart(c.config(id, ""))
		return !portTaken(err)
	})
	return err
}

// recoveryStartFails starts member id on its data dir, expecting it to
// refuse, and returns why; if it starts after all, the test fails (and the
// harness stops it).
func recoveryStartFails(t testing.TB, c *testCluster, id uint64) error {
	t.Helper()
	err := recoveryTryStart(t, c, id)
	if err == nil {
		t.Fatalf("member %d started on a damaged data dir; want it to refuse with a clear error", id)
	}
	t.Logf("member %d refused to start: %v", id, err)
	return err
}

// recoveryFastTick shortens a lone member's raft tick. With no peers there
// are no heartbeats to miss, so a short tick only makes the election after
// every restart quick (50-100ms instead of 200-400ms), and these tests
// restart a lot.
func recoveryFastTick(cfg *config) { cfg.tickInterval = 5 * time.Millisecond }

// recoveryWrite is one acknowledged PUT and the raft index it got.
type recoveryWrite struct {
	key, value string
	index      uint64
}

// recoveryPuts writes n keys prefix/0.. through member via, each one
// acknowledged with 204, and returns them in order. Values are short, or
// padded to at least pad bytes (never zeros, which etcd reads as torn).
func recoveryPuts(t testing.TB, c *testCluster, via uint64, prefix string, n, pad int) []recoveryWrite {
	t.Helper()
	writes := make([]recoveryWrite, n)
	for i := range writes {
		value := fmt.Sprintf("value-%d", i)
		value += strings.Repeat("v", max(0, pad-len(value)))
		w := recoveryWrite{key: fmt.Sprintf("%s/%02d", prefix, i), value: value}
		w.index = clusterPut(t, c, via, w.key, w.value)
		writes[i] = w
	}
	return writes
}

// recoveryStop stops member id cleanly; a clean stop fsyncs and closes the
// WAL, so the damage a test does afterwards is the only damage there is.
func recoveryStop(t testing.TB, c *testCluster, id uint64) {
	t.Helper()
	if err := c.stop(id); err != nil {
		t.Fatalf("stop member %d: %v", id, err)
	}
}

// recoveryTear truncates the newest WAL file of member id in the middle of
// the record pick chooses, as a crash in the middle of writing it would
// leave it, and returns the indexes of the entries whose records lie wholly
// before the cut and the torn record itself.
func recoveryTear(t testing.TB, c *testCluster, id uint64, pick func([]recoveryFrame) int) (kept map[uint64]bool, torn recoveryFrame) {
	t.Helper()
	path := recoveryNewestWAL(t, c, id)
	frames := recoveryReadFrames(t, path)
	i := pick(frames)
	if i < 0 {
		t.Fatalf("%s: no record to tear among %d", path, len(frames))
	}
	torn = frames[i]
	kept = make(map[uint64]bool)
	for _, f := range frames[:i] {
		if e, ok := f.entry(t); ok {
			kept[e.GetIndex()] = true
		}
	}
	// Cut inside the record's bytes, past its length word: the decoder
	// reads a length that runs past the end of the file.
	cut := torn.data() + torn.size/2
	if err := os.Truncate(path, cut); err != nil {
		t.Fatal(err)
	}
	t.Logf("tore %s at offset %d, in the middle of a type-%d record of %d bytes at offset %d",
		filepath.Base(path), cut, torn.rec.GetType(), torn.size, torn.off)
	return kept, torn
}

// recoveryLastRecord picks the last record in the file, whatever it is.
func recoveryLastRecord(frames []recoveryFrame) int { return len(frames) - 1 }

// recoveryLastEntry picks the last entry record, so that the tear takes a
// client's write with it, and everything after it.
func recoveryLastEntry(frames []recoveryFrame) int {
	for i := len(frames) - 1; i >= 0; i-- {
		if frames[i].rec.GetType() == wal.EntryType {
			return i
		}
	}
	return -1
}

// recoveryWALBackup requires the .broken copy etcd's wal.Repair leaves of a
// file it truncated: proof that the member did cut the torn record off.
func recoveryWALBackup(t testing.TB, c *testCluster, id uint64) {
	t.Helper()
	if backups := recoveryFiles(t, walDir(recoveryDataDir(c, id)), ".wal.broken"); len(backups) == 0 {
		t.Fatalf("member %d started on a torn WAL without repairing it (no .wal.broken copy)", id)
	}
}

// TestRecoveryTornWAL proves that a single member restarted on a WAL whose
// last record is torn cuts that record off and recovers everything before
// it: every write whose entry record is intact reads back, at most the very
// last write is missing, and the member keeps working across new writes and
// a second restart. A crash while appending tears only the tail, and only
// records not yet fsynced, which no client was told were saved.
func TestRecoveryTornWAL(t *testing.T) {
	for _, tc := range []struct {
		name string
		pick func([]recoveryFrame) int
	}{
		// The last record is the hard state that commits the last write;
		// its entry is intact, so the member's own log still has it.
		{"last record", recoveryLastRecord},
		// The last entry record is the last write itself.
		{"last entry record", recoveryLastEntry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t, 1, recoveryFastTick)
			writes := recoveryPuts(t, c, 1, "torn", 10, 0)
			recoveryStop(t, c, 1)
			kept, torn := recoveryTear(t, c, 1, tc.pick)
			tornEntry, tornIsEntry := torn.entry(t)

			c.start(1)
			recoveryWALBackup(t, c, 1)
			c.waitLeader()
			// On its own the member re-commits whatever entries survive in its
			// log once it is elected, so every intact entry must be served.
			want := make(map[string]string)
			var missing []string
			for i, w := range writes {
				r := clusterGet(t, c, 1, w.key, levelConsistent)
				switch {
				case kept[w.index]:
					if r.code != http.StatusOK || r.body != w.value {
						t.Fatalf("write %s (index %d, before the torn record): read %d %q, want 200 %q", w.key, w.index, r.code, r.body, w.value)
					}
					want[w.key] = w.value
				case i != len(writes)-1:
					t.Fatalf("write %s (index %d) is not the last write, yet its entry was not before the torn record", w.key, w.index)
				case tornIsEntry && tornEntry.GetIndex() == w.index && r.code != http.StatusNotFound:
					// Nothing but this member ever had the entry: serving
					// it now would mean the tear was not real.
					t.Fatalf("write %s was torn off the only member's WAL, yet reads %d %q", w.key, r.code, r.body)
				case r.code == http.StatusNotFound:
					missing = append(missing, w.key)
				default:
					t.Fatalf("last write %s: read %d %q, want its value %q or 404", w.key, r.code, r.body, w.value)
				}
			}
			t.Logf("writes missing after the repair: %v", missing)
			recoveryCheckKV(t, c, 1, want, missing...)

			recoveryKeepsWorking(t, c, "torn/after", want, missing...)
		})
	}
}

// TestRecoveryTornWALFollowerCatchesUp proves that in a three-member
// cluster a member whose WAL was torn in the middle of its last entry record
// starts, and is given back by the leader the entry it lost and the writes it
// missed, since the cluster, not that member alone, acknowledged them.
//
// The whole cluster stops before the tear, as in a power cut. A torn record
// was never fsynced, so its member never acknowledged it; here it was, and a
// leader that lived through the tear would still count it as on the member's
// disk and tell the member to commit past its log, which raft refuses with a
// panic ("tocommit(N) is out of range [lastIndex(N-1)]"). Restarted leaders
// learn each follower's log afresh, as they would after a real crash.
func TestRecoveryTornWALFollowerCatchesUp(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	f := c.follower()
	writes := recoveryPuts(t, c, leader, "torn3", 8, 0)
	last := writes[len(writes)-1].index
	eventually(t, 5*time.Second, fmt.Sprintf("follower %d to apply index %d", f, last), func() bool {
		return c.server(f).store.appliedIndex.Load() >= last
	})
	for _, id := range []uint64{1, 2, 3} {
		recoveryStop(t, c, id)
	}
	_, torn := recoveryTear(t, c, f, recoveryLastEntry)
	if _, ok := torn.entry(t); !ok {
		t.Fatalf("torn record is not an entry: type %d", torn.rec.GetType())
	}

	// The other two are a quorum: they elect a leader and take writes
	// while the torn member is still down.
	var others []uint64
	for _, id := range []uint64{1, 2, 3} {
		if id != f {
			c.start(id)
			others = append(others, id)
		}
	}
	missed := recoveryPuts(t, c, c.waitLeader(), "torn3-missed", 4, 0)

	c.start(f)
	recoveryWALBackup(t, c, f)
	c.waitLeader()
	all := slices.Concat(writes, missed)
	for _, w := range all {
		clusterMustRead(t, c, f, w.key, levelConsistent, w.value)
	}
	all = append(all, recoveryWrite{key: "torn3/after", value: "new", index: clusterPut(t, c, f, "torn3/after", "new")})
	recoveryStop(t, c, f)
	c.start(f)
	c.waitLeader()
	for _, w := range all {
		clusterMustRead(t, c, f, w.key, levelConsistent, w.value)
	}
	for _, id := range others {
		clusterMustRead(t, c, id, "torn3/after", levelConsistent, "new")
	}
}

// recoverySnapshotWrites makes member 1 of c, which snapshots every few
// entries, take several snapshots over writes that overwrite keys and
// delete one, so that a state rebuilt from an older snapshot is right only
// if the WAL after it is replayed, in order. It returns the deleted keys.
func recoverySnapshotWrites(t testing.TB, c *testCluster) (gone []string) {
	t.Helper()
	for round := range 4 {
		for k := range 6 {
			clusterPut(t, c, 1, fmt.Sprintf("snap/%d", k), fmt.Sprintf("round-%d", round))
		}
	}
	if r := do(t, http.MethodDelete, c.url(1, "/keys/snap/0"), ""); r.code != http.StatusNoContent {
		t.Fatalf("DELETE snap/0: %d %q, want 204", r.code, r.body)
	}
	clusterPut(t, c, 1, "snap/tail", "last")
	return []string{"snap/0"}
}

// recoveryCorruptSnap flips bytes in the middle of a snapshot file, inside
// the snapshot it wraps, so that etcd's CRC check of the file fails; it
// checks that etcd's snap.Read does see the damage.
func recoveryCorruptSnap(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) / 2; i < len(b)/2+4 && i < len(b); i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Read(zap.NewNop(), path); !errors.Is(err, snap.ErrCRCMismatch) {
		t.Fatalf("snap.Read(%s) after flipping bytes = %v, want %v", filepath.Base(path), err, snap.ErrCRCMismatch)
	}
}

// recoverySnapshotCluster starts one member that snapshots every 4 entries,
// makes it take at least two snapshots, and returns it stopped, with the
// exact state it held, the keys it deleted and its snapshot files.
func recoverySnapshotCluster(t testing.TB) (c *testCluster, want map[string]string, gone, snaps []string) {
	t.Helper()
	c = newTestCluster(t, 1, func(cfg *config) {
		recoveryFastTick(cfg)
		cfg.snapshotCount = 4
	})
	gone = recoverySnapshotWrites(t, c)
	want = recoveryKV(t, c, 1)
	recoveryStop(t, c, 1)
	snaps = recoveryFiles(t, recoverySnapDir(c, 1), ".snap")
	if len(snaps) < 2 {
		t.Fatalf("member 1 took %d snapshots, want at least 2: %v", len(snaps), snaps)
	}
	return c, want, gone, snaps
}

// recoverySnapIndex is the raft index of the snapshot in a snapshot file,
// from its name (term-index in hex, snap.Snapshotter.save).
func recoverySnapIndex(t testing.TB, path string) uint64 {
	t.Helper()
	var term, index uint64
	if _, err := fmt.Sscanf(filepath.Base(path), "%016x-%016x.snap", &term, &index); err != nil {
		t.Fatalf("snapshot file name %s: %v", path, err)
	}
	return index
}

// recoveryWALIndex is the index of the first entry a WAL file may hold,
// from its name (seq-index in hex).
func recoveryWALIndex(t testing.TB, path string) uint64 {
	t.Helper()
	var seq, index uint64
	if _, err := fmt.Sscanf(filepath.Base(path), "%016x-%016x.wal", &seq, &index); err != nil {
		t.Fatalf("WAL file name %s: %v", path, err)
	}
	return index
}

// recoveryRestartAround starts member 1 past its corrupt snapshots and
// checks it has exactly want, has set each of corrupt aside as .broken, and
// keeps working: a new write, then a second restart.
func recoveryRestartAround(t *testing.T, c *testCluster, want map[string]string, gone []string, corrupt ...string) {
	t.Helper()
	c.start(1)
	recoveryCheckKV(t, c, 1, want, gone...)
	for _, s := range corrupt {
		if _, err := os.Stat(s + ".broken"); err != nil {
			t.Fatalf("corrupt snapshot %s was not set aside as .broken: %v", filepath.Base(s), err)
		}
	}
	recoveryKeepsWorking(t, c, "snap/after", want, gone...)
}

// recoveryKeepsWorking proves member 1 keeps working after a recovery: a
// new write to key commits, and it and everything in want survive another
// restart, with gone still absent.
func recoveryKeepsWorking(t *testing.T, c *testCluster, key string, want map[string]string, gone ...string) {
	t.Helper()
	clusterPut(t, c, 1, key, "new")
	want[key] = "new"
	recoveryStop(t, c, 1)
	c.start(1)
	recoveryCheckKV(t, c, 1, want, gone...)
}

// TestRecoveryCorruptSnapshot proves that a member whose snapshot files are
// corrupt either comes back with exactly the state it had, or refuses to
// start with an error that names the problem, and never serves a state
// missing acknowledged writes.
func TestRecoveryCorruptSnapshot(t *testing.T) {
	// The newest snapshot is corrupt: etcd's snapshotter skips it (renaming
	// it .broken) for the newest older one the WAL has a record of, and the
	// WAL replays from there, over the same writes the corrupt one held.
	t.Run("newest", func(t *testing.T) {
		c, want, gone, snaps := recoverySnapshotCluster(t)
		newest := snaps[len(snaps)-1]
		recoveryCorruptSnap(t, newest)

		recoveryRestartAround(t, c, want, gone, newest)
	})

	// Every snapshot is corrupt, but the WAL still reaches back to the start
	// of the log (its first file is never purged while it is the only one):
	// the member replays the whole log and has everything.
	t.Run("all, WAL complete", func(t *testing.T) {
		c, want, gone, snaps := recoverySnapshotCluster(t)
		for _, s := range snaps {
			recoveryCorruptSnap(t, s)
		}
		if first := recoveryFiles(t, walDir(recoveryDataDir(c, 1)), ".wal")[0]; recoveryWALIndex(t, first) != 0 {
			t.Fatalf("the WAL does not start at index 0: %s", first)
		}

		recoveryRestartAround(t, c, want, gone, snaps...)
	})

	// The newest snapshot's checksum is right but what it holds does not
	// decode as a kvstore snapshot (written by a buggy or different
	// version, or damaged before it was checksummed): the snapshotter
	// cannot tell, so the kvstore finds out when it loads it, and the
	// member must refuse to start, saying so.
	t.Run("content corrupt, checksum valid", func(t *testing.T) {
		c, _, _, snaps := recoverySnapshotCluster(t)
		recoveryRewriteSnap(t, snaps[len(snaps)-1], func(data []byte) []byte { return data[:len(data)-1] })
		err := recoveryStartFails(t, c, 1)
		if !errors.Is(err, ErrCorruptEntry) || !strings.Contains(err.Error(), "snapshot") {
			t.Fatalf("refused to start with %q, want an error saying the snapshot is corrupt", err)
		}
	})
}

// recoveryRewriteSnap replaces the kvstore data in a snapshot file with
// edit's result and writes the file back with a correct checksum, as
// snap.Snapshotter.save does, so that only the kvstore can see the damage.
func recoveryRewriteSnap(t testing.TB, path string, edit func([]byte) []byte) {
	t.Helper()
	s, err := snap.Read(zap.NewNop(), path)
	if err != nil {
		t.Fatal(err)
	}
	s.Data = edit(s.GetData())
	data, err := proto.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	crc := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))
	b, err := proto.Marshal(&snappb.Snapshot{Crc: &crc, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Read(zap.NewNop(), path); err != nil {
		t.Fatalf("rewritten snapshot %s does not read back: %v", filepath.Base(path), err)
	}
}

// TestRecoveryCorruptSnapshotsWALPurged proves that a member whose snapshot
// files are all corrupt, and whose WAL no longer reaches back to the start
// of the log, refuses to start with an error that says the snapshots are
// unusable: nothing on disk holds the early writes any more.
//
// The WAL files the snapshots covered are gone as purgeOldFiles deletes
// them, once a snapshot has released them. It is its own test, not a
// subtest run alongside others, because it shrinks etcd's global WAL
// segment size while its member runs.
func TestRecoveryCorruptSnapshotsWALPurged(t *testing.T) {
	// Small WAL segments, so that a few writes span several files.
	old := wal.SegmentSizeBytes
	wal.SegmentSizeBytes = 1024
	t.Cleanup(func() { wal.SegmentSizeBytes = old }) // registered first, so it runs after the member stops
	c, want, gone, snaps := recoverySnapshotCluster(t)

	// Delete the WAL files before the one holding the newest snapshot's
	// index: those are the ones the WAL released to purgeOldFiles.
	walFiles := recoveryFiles(t, walDir(recoveryDataDir(c, 1)), ".wal")
	snapIndex := recoverySnapIndex(t, snaps[len(snaps)-1])
	keep := 0
	for i, f := range walFiles {
		if recoveryWALIndex(t, f) <= snapIndex {
			keep = i
		}
	}
	if keep == 0 {
		t.Fatalf("the newest snapshot (index %d) is in the first WAL file, nothing to purge: %v", snapIndex, walFiles)
	}
	for _, f := range walFiles[:keep] {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	// With its snapshots intact the member does not need those files.
	c.start(1)
	recoveryCheckKV(t, c, 1, want, gone...)
	recoveryStop(t, c, 1)

	for _, s := range recoveryFiles(t, recoverySnapDir(c, 1), ".snap") {
		recoveryCorruptSnap(t, s)
	}
	err := recoveryStartFails(t, c, 1)
	// The error must say what is wrong: the snapshots, not the WAL.
	msg := err.Error()
	if !strings.Contains(msg, "snapshot") || !(strings.Contains(msg, "corrupt") || strings.Contains(msg, "crc mismatch") || errors.Is(err, snap.ErrNoSnapshot)) {
		t.Fatalf("refused to start with %q: it does not say the snapshots are unusable", msg)
	}
}

// recoveryEntryFrame returns the frame of the entry record of write w in
// frames, failing the test if there is none.
func recoveryEntryFrame(t testing.TB, frames []recoveryFrame, w recoveryWrite) recoveryFrame {
	t.Helper()
	for _, f := range frames {
		if e, ok := f.entry(t); ok && e.GetIndex() == w.index {
			return f
		}
	}
	t.Fatalf("no entry record for index %d", w.index)
	return recoveryFrame{}
}

// recoveryEditFile rewrites bytes [from, to) of a file in place with
// edit's changes, leaving the rest (a WAL file's 64 MB) untouched.
func recoveryEditFile(t testing.TB, path string, from, to int64, edit func([]byte)) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, to-from)
	if _, err := f.ReadAt(b, from); err != nil {
		t.Fatal(err)
	}
	edit(b)
	if _, err := f.WriteAt(b, from); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestRecoveryCorruptWALRecord proves that a member whose WAL has a corrupt
// record in the middle refuses to start with a CRC error naming the file,
// and does not "repair" it: cutting the WAL there would silently drop the
// acknowledged writes after it. Each WAL record carries the CRC of the log
// up to it, so etcd's decoder tells a flipped byte from a torn tail.
func TestRecoveryCorruptWALRecord(t *testing.T) {
	c := newTestCluster(t, 1, recoveryFastTick)
	writes := recoveryPuts(t, c, 1, "crc", 10, 0)
	recoveryStop(t, c, 1)
	path := recoveryNewestWAL(t, c, 1)
	frames := recoveryReadFrames(t, path)

	// A record whose bytes all lie in one 512-byte sector: etcd takes a CRC
	// failure in a record with an all-zero sector's worth of bytes for a torn
	// write, which the zeroed-sector test covers.
	var target recoveryFrame
	for _, w := range writes[len(writes)/2:] {
		f := recoveryEntryFrame(t, frames, w)
		if f.data()/512 == (f.end()-1)/512 {
			target = f
			break
		}
	}
	if target.rec == nil {
		t.Fatal("no entry record of the later writes lies within one sector")
	}
	// The record's data field comes last, and the entry's data last in it:
	// the record's last byte is the last byte of the value.
	at := target.data() + target.size - 1
	recoveryEditFile(t, path, at, at+1, func(b []byte) { b[0] ^= 0xff })

	for attempt := range 2 {
		err := recoveryStartFails(t, c, 1)
		if !errors.Is(err, walpb.ErrCRCMismatch) || !strings.Contains(err.Error(), filepath.Base(path)) {
			t.Fatalf("attempt %d: refused with %q, want a WAL CRC mismatch naming %s", attempt+1, err, filepath.Base(path))
		}
		if backups := recoveryFiles(t, walDir(recoveryDataDir(c, 1)), ".wal.broken"); len(backups) > 0 {
			t.Fatalf("attempt %d: the member tried to repair a WAL corrupt in the middle: %v", attempt+1, backups)
		}
	}
	if after := recoveryReadFrames(t, path); len(after) != len(frames) {
		t.Fatalf("refusing to start changed the WAL: %d frames, had %d", len(after), len(frames))
	}
}
