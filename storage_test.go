package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap/snappb"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"raftkv/api"
	"raftkv/codec"
	"raftkv/config"
	"raftkv/datadir"
	"raftkv/idempotency"
	"raftkv/keyspace"
	"raftkv/membership"
	"raftkv/status"
)

// Storage (storage.go): restarts from the WAL and snapshots, snapshots
// taken, sent to followers and loaded, damage on disk, what the WAL
// records of the cluster, and GET /snapshot, the copy of the state a
// backup is.

// TestClusterRestartCatchesUp proves a stopped member keeps what it had applied across a restart and then catches up with the writes it missed.
func TestClusterRestartCatchesUp(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	f := c.follower()
	index := clusterPut(t, c, leader, "restart/before", "old")
	eventually(t, 5*time.Second, "the follower to apply the write", func() bool {
		return c.server(f).store.AppliedIndex() >= index
	})
	if err := c.stop(f); err != nil {
		t.Fatalf("stop member %d: %v", f, err)
	}

	for i := range 10 {
		clusterPut(t, c, leader, fmt.Sprintf("restart/missed-%d", i), strconv.Itoa(i))
	}
	if r := clusterGet(t, c, leader, "restart/before", levelConsistent); r.code != http.StatusOK {
		t.Fatalf("two of three members must still serve: %d %q", r.code, r.body)
	}

	c.start(f)
	// startServer returns only after the WAL is replayed: no waiting here.
	clusterMustRead(t, c, f, "restart/before", levelStale, "old")
	if st := clusterStatus(t, c, f); st.AppliedIndex < index {
		t.Fatalf("restarted member %d applied %d, below the %d it had applied before", f, st.AppliedIndex, index)
	}

	c.waitLeader()
	for i := range 10 {
		clusterMustRead(t, c, f, fmt.Sprintf("restart/missed-%d", i), levelConsistent, strconv.Itoa(i))
	}
	// And it takes part again: a write through it commits.
	clusterPut(t, c, f, "restart/after", "new")
	clusterMustRead(t, c, leader, "restart/after", levelConsistent, "new")
}

// clusterSnapshotCluster starts 3 members that snapshot every 20 entries
// and writes keys through the leader, so that the leader compacts its log.
func clusterSnapshotCluster(t *testing.T, keys int) *testCluster {
	t.Helper()
	c := newTestCluster(t, 3, func(cfg *config.Config) { cfg.SnapshotCount = 20 })
	leader := c.waitLeader()
	for i := range keys {
		clusterPut(t, c, leader, fmt.Sprintf("snap/%03d", i), fmt.Sprintf("v%d", i))
	}
	if st := clusterStatus(t, c, leader); st.SnapshotIndex == 0 {
		t.Fatalf("leader %d has no snapshot after %d writes with snapshotCount 20: %+v", leader, keys, st)
	}
	return c
}

// TestClusterSnapshotNewMember proves a member added after the leader compacted its log is brought up to date by a snapshot and serves every key.
func TestClusterSnapshotNewMember(t *testing.T) {
	const keys = 100
	c := clusterSnapshotCluster(t, keys)
	leader := c.waitLeader()

	added := c.addMember(leader)
	leader = c.waitLeader()
	// No client writes from here on: the new member must catch up with
	// what is committed now, without a later snapshot to help it along.
	target := clusterStatus(t, c, leader).CommitIndex
	eventually(t, 5*time.Second, fmt.Sprintf("added member %d to apply up to the leader's commit index %d", added, target), func() bool {
		return clusterStatus(t, c, added).AppliedIndex >= target
	})
	for i := range keys {
		clusterMustRead(t, c, added, fmt.Sprintf("snap/%03d", i), levelConsistent, fmt.Sprintf("v%d", i))
	}
	if st := clusterStatus(t, c, added); st.SnapshotIndex == 0 {
		t.Fatalf("added member %d caught up without a snapshot, though the leader compacted its log: %+v", added, st)
	}
	if m, ok := clusterFindMember(clusterMembers(t, c, leader), added); !ok || m.IsLeader {
		t.Fatalf("GET /members on the leader: added member %d listed=%v %+v", added, ok, m)
	}
	// It is a full voter: a write through it commits and is seen everywhere.
	clusterPut(t, c, added, "snap/through-added", "x")
	for _, id := range c.runningIDs() {
		clusterMustRead(t, c, id, "snap/through-added", levelConsistent, "x")
	}
}

// TestClusterSnapshotRestart proves a member restarted after snapshotting recovers from its snapshot plus WAL tail, then catches up with what it missed.
func TestClusterSnapshotRestart(t *testing.T) {
	const keys = 100
	c := clusterSnapshotCluster(t, keys)
	leader := c.waitLeader()
	r := c.follower()

	// Make sure r has applied entries past its newest snapshot, so that a
	// restart needs both the snapshot and the WAL after it.
	tail := 0
	eventually(t, 10*time.Second, fmt.Sprintf("member %d to have applied entries past its snapshot", r), func() bool {
		st := clusterStatus(t, c, r)
		if tail > 0 && st.SnapshotIndex > 0 && st.AppliedIndex > st.SnapshotIndex {
			return true
		}
		clusterPut(t, c, leader, fmt.Sprintf("snap/tail-%d", tail), strconv.Itoa(tail))
		tail++
		return false
	})
	eventually(t, 10*time.Second, fmt.Sprintf("member %d to apply the last tail write", r), func() bool {
		return clusterGet(t, c, r, fmt.Sprintf("snap/tail-%d", tail-1), levelStale).code == http.StatusOK
	})
	before := clusterStatus(t, c, r)
	if err := c.stop(r); err != nil {
		t.Fatalf("stop member %d: %v", r, err)
	}
	// Enough writes while it is down that the leader compacts past them.
	const missed = 60
	for i := range missed {
		clusterPut(t, c, leader, fmt.Sprintf("snap/missed-%d", i), strconv.Itoa(i))
	}

	c.start(r)
	// No waiting: startServer returns once the snapshot and WAL are applied.
	after := clusterStatus(t, c, r)
	if after.SnapshotIndex == 0 || after.AppliedIndex < before.AppliedIndex {
		t.Fatalf("restarted member %d: status %+v, before the stop %+v", r, after, before)
	}
	for i := range keys {
		clusterMustRead(t, c, r, fmt.Sprintf("snap/%03d", i), levelStale, fmt.Sprintf("v%d", i))
	}
	for i := range tail {
		clusterMustRead(t, c, r, fmt.Sprintf("snap/tail-%d", i), levelStale, strconv.Itoa(i))
	}
	c.waitLeader()
	for i := range missed {
		clusterMustRead(t, c, r, fmt.Sprintf("snap/missed-%d", i), levelConsistent, strconv.Itoa(i))
	}
}

// TestDiskSnapshotsWhileWriting proves that raft asking for the snapshot
// its log names while the hand-over goroutine is still writing that
// snapshot's file (as happens when a conf change adds a member) gets
// "temporarily unavailable" and leaves the file alone, rather than taking
// the half written file for broken and renaming it, after which the
// snapshot would never be available (found by BenchmarkJoin); and that once
// the file is written whole, raft gets it.
func TestDiskSnapshotsWhileWriting(t *testing.T) {
	dir := t.TempDir()
	ms := raft.NewMemoryStorage()
	var saved atomic.Uint64
	s := diskSnapshots{MemoryStorage: ms, lg: zap.NewNop(), dir: dir, saved: &saved}
	full := &raftpb.Snapshot{
		Data:     codec.State{Members: membership.NewTable([]membership.Member{{ID: 1}}, nil), Keys: keyspace.New()}.Encode(),
		Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(10)), Term: new(uint64(2)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}},
	}
	if err := ms.ApplySnapshot(withoutData(full)); err != nil {
		t.Fatal(err)
	}
	// Half the file is on disk; a newer one is being written too.
	file := filepath.Join(dir, datadir.SnapFileName(2, 10))
	half := []byte("\x0a\x05trunc")
	for _, f := range []string{file, filepath.Join(dir, datadir.SnapFileName(2, 11))} {
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

// TestMetricsSnapshots proves a member counts the snapshots it takes, with
// the size of the last, and the one it loads when it restarts.
func TestMetricsSnapshots(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *config.Config) { cfg.SnapshotCount = 5 })
	start := scrapeMetrics(t, c.clientURL(1))
	for i := range 10 {
		clusterPut(t, c, 1, fmt.Sprintf("snap-%d", i), "v")
	}
	// The hand-over goroutine takes a snapshot once the kvstore has applied
	// its index, which may be after the write's handler was answered.
	var s scrape
	was := start.get(t, "raftkv_snapshot_save_duration_seconds")
	eventually(t, 5*time.Second, "two more snapshots saved after 10 writes at --snapshot-count 5", func() bool {
		s = scrapeMetrics(t, c.clientURL(1))
		return s.get(t, "raftkv_snapshot_save_duration_seconds") >= was+2
	})
	if got := s.get(t, "raftkv_snapshot_size_bytes"); got < float64(10*len("snap-0")) {
		t.Errorf("last snapshot size: %v bytes, want at least the keys' %d", got, 10*len("snap-0"))
	}
	if got := s.get(t, "raftkv_raft_snapshot_index"); got < 10 {
		t.Errorf("snapshot index: %v after 10 writes at --snapshot-count 5, want at least 10", got)
	}
	if got := s.get(t, "raftkv_snapshot_load_duration_seconds"); got != 0 {
		t.Errorf("snapshots loaded by a member that started empty: %v, want 0", got)
	}
	c.stop(1)
	c.start(1)
	if got := scrapeMetrics(t, c.clientURL(1)).get(t, "raftkv_snapshot_load_duration_seconds"); got != 1 {
		t.Errorf("snapshots loaded by a restarted member: %v, want 1", got)
	}
}

// What the WAL records of the cluster.

// clusterIDOf asks the member at clientURL for its cluster ID, in GET /status and in the header, and fails unless both say the same.
func clusterIDOf(t *testing.T, clientURL string) string {
	t.Helper()
	r := do(t, "GET", clientURL+"/status", "")
	var st status.View
	if err := json.Unmarshal([]byte(r.body), &st); r.code != http.StatusOK || err != nil {
		t.Fatalf("GET /status: %d %q %v", r.code, r.body, err)
	}
	if h := r.header.Get(api.ClusterIDHeader); h != st.ClusterID {
		t.Fatalf("GET /status: %s %q, body says cluster %q", api.ClusterIDHeader, h, st.ClusterID)
	}
	return st.ClusterID
}

// TestClusterIDRecordedInWAL proves a member keeps the cluster ID it first started with, whatever its config says when it restarts.
func TestClusterIDRecordedInWAL(t *testing.T) {
	cfg := flagTestConfig(t, filepath.Join(t.TempDir(), "raftkv-1"))
	s, err := flagTestStart(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := types.ID(cfg.ClusterID).String()
	if got := clusterIDOf(t, cfg.ClientURL); got != want {
		t.Fatalf("first start: cluster ID %s, want %s as derived", got, want)
	}
	s.stop()

	cfg.ClusterID = membership.DeriveClusterID(cfg.Cluster, "another-token")
	if _, err := flagTestStart(t, cfg); err != nil {
		t.Fatal(err)
	}
	if got := clusterIDOf(t, cfg.ClientURL); got != want {
		t.Errorf("restart told cluster ID %x: serves %s, want %s from the WAL", cfg.ClusterID, got, want)
	}
}

// TestClusterIDLegacyDataDir proves a data dir written before cluster IDs, whose WAL metadata is the member id alone, still starts, in cluster 0x1000, as it was.
func TestClusterIDLegacyDataDir(t *testing.T) {
	cfg := flagTestConfig(t, filepath.Join(t.TempDir(), "raftkv-1"))
	// What such a member wrote on its first start: the metadata, then the
	// conf change that StartNode commits for it as the only member.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	w, err := wal.Create(zap.NewNop(), datadir.WALDir(cfg.DataDir), binary.AppendUvarint(nil, cfg.ID))
	if err != nil {
		t.Fatal(err)
	}
	add := kvAddEntry(t, 1, membership.Member{ID: cfg.ID, PeerURLs: []string{cfg.PeerURL()}})
	if err := w.Save(&raftpb.HardState{Term: new(uint64(1)), Commit: new(uint64(1))}, []*raftpb.Entry{add}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := flagTestStart(t, cfg)
	if err != nil {
		t.Fatalf("start on a data dir from before cluster IDs: %v", err)
	}
	if got, want := clusterIDOf(t, cfg.ClientURL), fmt.Sprintf("%x", datadir.LegacyClusterID); got != want {
		t.Errorf("cluster ID %s, want %s", got, want)
	}
	eventually(t, 10*time.Second, "the member to elect itself", func() bool { return s.raft.Leader() == cfg.ID })
}

// Restarts: what a member serves when it restarts alone, every other
// member down, so that all it knows is what its own data dir holds.
//
// startServer serves nothing until the kvstore has applied the commit index
// found in the WAL. Raft runs with asynchronous storage writes: a new commit
// index goes to the append goroutine and the entries it commits to the
// hand-over goroutine side by side, and etcd's wal.Save fsyncs only when
// raft.MustSync says so (new entries, term or vote). A hard state that only
// moves the commit index waits in the WAL encoder's buffer, in this
// process's memory, for the next fsync or for wal.Close. So what the WAL's
// commit index covers depends on how the member stopped:
//
//   - A clean stop (SIGTERM, server.stop) stops serving clients, then
//     saves the appends still queued (saveQueuedAppends) and closes the
//     WAL, which syncs the buffer. Raft queues each commit index for the
//     append goroutine before the entries it commits for the hand-over
//     goroutine, so the commit index on disk covers everything the member
//     applied while it served clients: every write it acknowledged, every
//     value a read on it returned.
//   - A SIGKILL loses the buffer: the commit index on disk is the one the
//     last fsync wrote. A write's own entry is fsynced before it commits,
//     but its commit index only with whatever fsyncs next; in a quiet
//     cluster nothing does, and the member restarts one write behind.

// restartWrite is one acknowledged write and the raft index it got.
type restartWrite struct {
	method, key, value string // value is "" for a DELETE
	index              uint64
}

// restartWrites are the writes the clean-stop test makes, in order: a key
// overwritten, a key deleted, so that a restart missing the last writes
// would show an older value, or a deleted key, rather than only nothing.
var restartWrites = []restartWrite{
	{method: http.MethodPut, key: "restart/a", value: "a1"},
	{method: http.MethodPut, key: "restart/b", value: "b1"},
	{method: http.MethodPut, key: "restart/a", value: "a2"},
	{method: http.MethodDelete, key: "restart/b"},
	{method: http.MethodPut, key: "restart/c", value: "c1"},
	{method: http.MethodPut, key: "restart/a", value: "a3"},
}

// restartAcknowledged reports whether a write's answer acknowledges it: a
// 204, or a 201 from a server that answers a PUT creating a key so.
func restartAcknowledged(code int) bool {
	return code == http.StatusNoContent || code == http.StatusCreated
}

// restartDo makes one write through member id of an in-process cluster,
// requires it acknowledged with a positive X-Raft-Index, and returns that
// index.
func restartDo(t testing.TB, c *testCluster, id uint64, w restartWrite) uint64 {
	t.Helper()
	r := do(t, w.method, c.url(id, "/keys/"+w.key), w.value)
	if !restartAcknowledged(r.code) {
		t.Fatalf("%s %s on member %d: %d %q, want 204 or 201", w.method, w.key, id, r.code, r.body)
	}
	index, err := strconv.ParseUint(r.header.Get("X-Raft-Index"), 10, 64)
	if err != nil || index == 0 {
		t.Fatalf("%s %s on member %d: X-Raft-Index %q is not a positive integer", w.method, w.key, id, r.header.Get("X-Raft-Index"))
	}
	return index
}

// restartFinal is what the writes leave: each key's last value, or "" for
// a key whose last write deleted it.
func restartFinal(writes []restartWrite) map[string]string {
	final := make(map[string]string)
	for _, w := range writes {
		final[w.key] = w.value
	}
	return final
}

// TestRestartCleanStopServesAcknowledged proves that a member stopped cleanly
// right after acknowledging writes, and restarted while every other member
// is down, serves at once, at level=stale, every write it acknowledged and
// everything else it had applied: the commit index a clean stop leaves in
// the WAL covers them all, and startServer waits until it is applied.
//
// The acknowledging member is the leader and a follower, which learn of a
// commit differently (a quorum of appends, the leader's next message).
//
// In "long replay" the log holds entries of 1 MiB before the writes, which
// raft hands out one per Ready, and the member restarts with
// --snapshot-count 1, so that it saves a snapshot (two fsyncs) after each
// one before raft hands out the next. Its replay then takes far longer than
// the rest of startServer, and a member that served before replaying would
// be caught answering from part of its log: without the wait, it answered
// having applied 7 to 9 of 21 entries, in 10 runs out of 10.
//
// In "under load" writes forwarded by a follower keep the leader's append
// goroutine busy while it stops, so the commit index of its last write may
// still be queued for serveAppends, which saveQueuedAppends then writes.
// That happens in a few runs in a hundred here, so the subtest mostly shows
// that a stop amid traffic loses nothing either.
func TestRestartCleanStopServesAcknowledged(t *testing.T) {
	t.Run("leader", func(t *testing.T) {
		c := newTestCluster(t, 3, nil)
		restartCleanStop(t, c, c.waitLeader(), restartOptions{})
	})
	t.Run("follower", func(t *testing.T) {
		c := newTestCluster(t, 3, nil)
		restartCleanStop(t, c, c.follower(), restartOptions{})
	})
	t.Run("long replay", func(t *testing.T) {
		c := newTestCluster(t, 3, nil)
		m := c.waitLeader()
		big := strings.Repeat("x", 1<<20-64)
		for i := range restartBulkEntries {
			clusterPut(t, c, m, fmt.Sprintf("restart/bulk-%02d", i), big)
		}
		restartCleanStop(t, c, m, restartOptions{restart: func(cfg *config.Config) { cfg.SnapshotCount = 1 }})
	})
	t.Run("under load", func(t *testing.T) {
		c := newTestCluster(t, 3, nil)
		m := c.waitLeader()
		stopLoad := restartLoad(c, c.follower(), 4)
		defer stopLoad()
		restartCleanStop(t, c, m, restartOptions{beforeOthersStop: stopLoad})
	})
}

// restartBulkEntries is how many 1 MiB entries "long replay" writes before
// the writes it checks.
const restartBulkEntries = 8

// restartOptions adjust restartCleanStop: beforeOthersStop runs once the
// member under test has stopped, before the others stop; restart adjusts
// its config for the restart.
type restartOptions struct {
	beforeOthersStop func()
	restart          func(*config.Config)
}

// restartCleanStop makes restartWrites through member m, stops m cleanly
// at once, then every other member, restarts m alone and requires it to
// serve every write it acknowledged and at least everything it had applied.
func restartCleanStop(t *testing.T, c *testCluster, m uint64, opts restartOptions) {
	t.Helper()
	writes := make([]restartWrite, len(restartWrites))
	for i, w := range restartWrites {
		w.index = restartDo(t, c, m, w)
		writes[i] = w
	}
	last := writes[len(writes)-1].index
	// Stop at once: the commit index of the last write is most likely
	// still in the WAL's buffer, or queued for serveAppends. Whatever m
	// has applied by now, a client may have seen.
	applied := c.server(m).store.AppliedIndex()
	if err := c.stop(m); err != nil {
		t.Fatalf("stop member %d: %v", m, err)
	}
	if opts.beforeOthersStop != nil {
		opts.beforeOthersStop()
	}
	clusterStopAllBut(t, c, m)

	cfg := c.config(m, "")
	if opts.restart != nil {
		opts.restart(&cfg)
	}
	c.startWith(cfg)
	// No waiting: startServer returns once the WAL is replayed, and with
	// no other member up nothing more can reach this one.
	for key, value := range restartFinal(writes) {
		r := clusterGet(t, c, m, key, levelStale)
		switch {
		case value == "" && r.code != http.StatusNotFound:
			t.Errorf("stale read of deleted %s on restarted member %d: %d %q, want 404", key, m, r.code, r.body)
		case value != "" && (r.code != http.StatusOK || r.body != value):
			t.Errorf("stale read of %s on restarted member %d: %d %q, want 200 %q", key, m, r.code, r.body, value)
		}
	}
	st := clusterStatus(t, c, m)
	t.Logf("member %d acknowledged up to index %d and had applied %d when stopped; restarted alone it serves from applied index %d (commit index %d, leader %d)",
		m, last, applied, st.AppliedIndex, st.CommitIndex, st.Leader)
	if st.Leader != 0 {
		t.Fatalf("restarted member %d reports leader %d with every other member down", m, st.Leader)
	}
	if st.AppliedIndex < applied || st.CommitIndex < applied {
		t.Fatalf("restarted member %d: applied index %d, commit index %d, below the %d it had applied before a clean stop",
			m, st.AppliedIndex, st.CommitIndex, applied)
	}
}

// restartLoad writes small values through member id from n goroutines,
// answers unchecked, until the returned function is called; it cancels the
// writes in flight and waits for the goroutines, and may be called more than
// once. It keeps the cluster's append goroutines busy with fsyncs.
func restartLoad(c *testCluster, id uint64, n int) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.url(id, fmt.Sprintf("/keys/restart/load-%d-%d", g, i)), strings.NewReader("load"))
				if err != nil {
					return
				}
				if resp, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// Recovery: a member is stopped, its WAL or snapshot files are damaged on
// disk the way a crash or a bad disk would damage them, and it is started
// again on the same data dir through the real raftNode, WAL and
// snapshotter. Whatever the damage, a member may refuse to start, but it
// must never serve a state that lacks a write it acknowledged (204 means
// committed and fsynced).

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

// recoveryDataDir is member id's data dir; its WAL is in datadir.WALDir
// and its snapshots in datadir.SnapDir.
func recoveryDataDir(c *testCluster, id uint64) string { return c.config(id, "").DataDir }

// recoverySnapDir is where member id's snapshot files are.
func recoverySnapDir(c *testCluster, id uint64) string {
	return datadir.SnapDir(recoveryDataDir(c, id))
}

// recoveryNewestWAL returns the path of member id's newest WAL file: the one
// a crash tears, since only the tail of the log is ever being written.
func recoveryNewestWAL(t testing.TB, c *testCluster, id uint64) string {
	t.Helper()
	names := recoveryFiles(t, datadir.WALDir(recoveryDataDir(c, id)), ".wal")
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
	kv := make(map[string]string, s.store.keys.Len())
	s.store.keys.Scan(func(k string, v keyspace.Value) bool {
		kv[k] = v.Data
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
func recoveryFastTick(cfg *config.Config) { cfg.TickInterval = 5 * time.Millisecond }

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
	if backups := recoveryFiles(t, datadir.WALDir(recoveryDataDir(c, id)), ".wal.broken"); len(backups) == 0 {
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
		return c.server(f).store.AppliedIndex() >= last
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
	c = newTestCluster(t, 1, func(cfg *config.Config) {
		recoveryFastTick(cfg)
		cfg.SnapshotCount = 4
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
// from its name (term-index in hex, datadir.SnapFileName).
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
		if first := recoveryFiles(t, datadir.WALDir(recoveryDataDir(c, 1)), ".wal")[0]; recoveryWALIndex(t, first) != 0 {
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
		if !errors.Is(err, codec.ErrCorrupt) || !strings.Contains(err.Error(), "snapshot") {
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
	walFiles := recoveryFiles(t, datadir.WALDir(recoveryDataDir(c, 1)), ".wal")
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
		if backups := recoveryFiles(t, datadir.WALDir(recoveryDataDir(c, 1)), ".wal.broken"); len(backups) > 0 {
			t.Fatalf("attempt %d: the member tried to repair a WAL corrupt in the middle: %v", attempt+1, backups)
		}
	}
	if after := recoveryReadFrames(t, path); len(after) != len(frames) {
		t.Fatalf("refusing to start changed the WAL: %d frames, had %d", len(after), len(frames))
	}
}

// Backups: GET /snapshot, the replicated state at one index (package
// recovery serves it from the kvstore's PointInTime).

// backupTestHeader is what a snapshot file says about the copy it holds.
type backupTestHeader struct {
	index, term, clusterID, memberID uint64
}

// backupTestParse reads a snapshot file as package recovery documents it
// (magic "RAFTKVSN", format version 1, then index, term, cluster ID,
// member id and snapshot length as big-endian uint64s, the snapshot, and
// the SHA-256 of everything before it), and refuses one that is not whole
// and intact. The test reads the format by itself: the parser restore
// uses is package recovery's own.
func backupTestParse(file []byte) (backupTestHeader, []byte, error) {
	const magic, format = "RAFTKVSN", 1
	const headerSize = len(magic) + 2 + 5*8
	if len(file) < headerSize+sha256.Size || !bytes.HasPrefix(file, []byte(magic)) {
		return backupTestHeader{}, nil, fmt.Errorf("not a whole snapshot file: %d bytes", len(file))
	}
	b := file[len(magic):]
	if v := binary.BigEndian.Uint16(b); v != format {
		return backupTestHeader{}, nil, fmt.Errorf("format version %d, want %d", v, format)
	}
	b = b[2:]
	field := func() uint64 {
		n := binary.BigEndian.Uint64(b)
		b = b[8:]
		return n
	}
	hd := backupTestHeader{index: field(), term: field(), clusterID: field(), memberID: field()}
	dataLen := field()
	if uint64(len(file)) != uint64(headerSize)+dataLen+sha256.Size {
		return backupTestHeader{}, nil, fmt.Errorf("%d bytes, but the header says %d of snapshot", len(file), dataLen)
	}
	body := file[:len(file)-sha256.Size]
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], file[len(body):]) {
		return backupTestHeader{}, nil, errors.New("checksum mismatch")
	}
	return hd, body[headerSize:], nil
}

// backupTestWrite is a write the cluster answered definitely, at index.
type backupTestWrite struct {
	index  uint64
	key    string
	value  string
	delete bool
}

// backupTestClient is for the load: no redirects (writes never redirect),
// a deadline well past --request-timeout.
var backupTestClient = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{}}

// backupTestLoad writes and deletes a few keys through every member of
// clients (client URLs), from several goroutines, until stop is closed;
// wait returns every write with a definite answer (PUT 201 or 204, DELETE
// 204) and the first error: an answer of unknown outcome makes the state
// at an index unknowable, and a healthy cluster gives none.
func backupTestLoad(clients []string, stop <-chan struct{}) (wait func() ([]backupTestWrite, error)) {
	const writers, keys = 6, 16
	var (
		mu       sync.Mutex
		writes   []backupTestWrite
		firstErr error
		wg       sync.WaitGroup
	)
	for w := range writers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("load/k%02d", (i*7+w*3)%keys)
				write := backupTestWrite{key: key, value: fmt.Sprintf("w%d-%d", w, i), delete: i%5 == 4}
				method := http.MethodPut
				if write.delete {
					method, write.value = http.MethodDelete, ""
				}
				index, code, reason, err := backupTestSend(method, clients[(w+i)%len(clients)]+"/keys/"+key, write.value)
				switch {
				case err == nil && code == http.StatusServiceUnavailable && strings.HasPrefix(reason, api.ErrNoLeader.Error()):
					// Not applied: an election on a busy machine.
				case err == nil && (code == http.StatusCreated || code == http.StatusNoContent):
					write.index = index
					mu.Lock()
					writes = append(writes, write)
					mu.Unlock()
				case err == nil && code == http.StatusNotFound && write.delete:
				default:
					mu.Lock()
					firstErr = cmp.Or(firstErr, fmt.Errorf("%s %s: %d %v: outcome unknown", method, key, code, err))
					mu.Unlock()
					return
				}
			}
		})
	}
	return func() ([]backupTestWrite, error) {
		wg.Wait()
		return writes, firstErr
	}
}

// backupTestSend sends one request and returns its X-Raft-Index, status
// and body.
func backupTestSend(method, url, body string) (uint64, int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, 0, "", err
	}
	resp, err := backupTestClient.Do(req)
	if err != nil {
		return 0, 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	index, _ := strconv.ParseUint(resp.Header.Get("X-Raft-Index"), 10, 64)
	return index, resp.StatusCode, string(b), err
}

// backupTestStateAt is the key space the writes leave at index, versions
// included: each write up to index, in log order. One entry writes a key
// at most once, so the index orders any two writes to a key.
func backupTestStateAt(writes []backupTestWrite, index uint64) map[string]keyspace.Value {
	sorted := slices.SortedFunc(slices.Values(writes), func(a, b backupTestWrite) int { return cmp.Compare(a.index, b.index) })
	kv := make(map[string]keyspace.Value)
	for _, w := range sorted {
		if w.index > index {
			break
		}
		if w.delete {
			delete(kv, w.key)
			continue
		}
		v := keyspace.Version{CreateIndex: w.index, ModIndex: w.index}
		if cur, ok := kv[w.key]; ok {
			v.CreateIndex = cur.CreateIndex
		}
		kv[w.key] = keyspace.Value{Data: w.value, Version: v}
	}
	return kv
}

// backupTestDiff describes how got differs from want under prefix, "" if
// not at all.
func backupTestDiff(got, want map[string]keyspace.Value, prefix string) string {
	var diffs []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok || g != want[k] {
			diffs = append(diffs, fmt.Sprintf("%s = %+v (present %t), want %+v", k, g, ok, want[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok && strings.HasPrefix(k, prefix) {
			diffs = append(diffs, fmt.Sprintf("%s = %+v, want absent", k, got[k]))
		}
	}
	return strings.Join(diffs, "; ")
}

// backupTestGet fetches GET /snapshot from url and returns the file, the
// parsed header and the state it holds.
func backupTestGet(t *testing.T, url string) ([]byte, backupTestHeader, stateContent) {
	t.Helper()
	resp, err := backupTestClient.Get(url + "/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	file, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /snapshot: %d %q", resp.StatusCode, file)
	}
	hd, data, err := backupTestParse(file)
	if err != nil {
		t.Fatalf("GET /snapshot: %v", err)
	}
	if got := resp.Header.Get("X-Raft-Index"); got != strconv.FormatUint(hd.index, 10) {
		t.Errorf("GET /snapshot: X-Raft-Index %q, the file says %d", got, hd.index)
	}
	if got := resp.Header.Get("Content-Type"); got != "application/octet-stream" {
		t.Errorf("GET /snapshot: Content-Type %q", got)
	}
	if got, want := resp.Header.Get("Content-Disposition"), fmt.Sprintf(`attachment; filename="raftkv-%s-%d.snap"`, types.ID(hd.clusterID), hd.index); got != want {
		t.Errorf("GET /snapshot: Content-Disposition %q, want %q", got, want)
	}
	if resp.ContentLength != int64(len(file)) {
		t.Errorf("GET /snapshot: Content-Length %d, body %d bytes", resp.ContentLength, len(file))
	}
	st, err := codec.DecodeState(data)
	if err != nil {
		t.Fatalf("GET /snapshot: the snapshot does not decode: %v", err)
	}
	return file, hd, contentOf(st)
}

// backupTestPreload writes n keys big/<i> of size bytes each through
// store, many at a time.
func backupTestPreload(t *testing.T, store *kvstore, n, size int) {
	t.Helper()
	value := bytes.Repeat([]byte("v"), size)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			for i := g; i < n; i += 64 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := writeTest(ctx, store, true, fmt.Sprintf("big/%05d", i), value, keyspace.Condition{}, idempotency.Key{})
				cancel()
				if errors.Is(err, api.ErrNoLeader) {
					i -= 64 // not applied: a busy machine can cost a leader its lease; again
					continue
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatalf("preload: %v", err)
	}
}

// TestHTTPSnapshotUnderWrites proves that GET /snapshot, from a follower
// while every member takes writes, is the state at exactly the index it
// names: every key and version equal to what the acknowledged writes up to
// that index leave, none of the later ones, and, at the default consistent
// level, every write acknowledged before the request. It also checks the
// answer's headers, the member table and the level parameter.
func TestHTTPSnapshotUnderWrites(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	follower := c.follower()
	// Enough state before the load's keys that encoding takes a while, so
	// that a copy that changed as it was encoded would show it.
	backupTestPreload(t, c.server(leader).store, 4000, 1000)
	stop := make(chan struct{})
	wait := backupTestLoad(c.clients, stop)
	// Let the load get going, then write once more and take the copy.
	eventually(t, 10*time.Second, "the load to write", func() bool { return c.server(leader).store.AppliedIndex() > 50 })
	before, code, _, err := backupTestSend(http.MethodPut, c.url(leader, "/keys/before"), "x")
	if err != nil || code != http.StatusCreated {
		t.Fatalf("PUT /keys/before: %d %v", code, err)
	}
	_, hd, st := backupTestGet(t, c.url(follower, ""))
	// More writes after the copy, which it must not hold.
	eventually(t, 10*time.Second, "the load to write past the copy", func() bool {
		return c.server(leader).store.AppliedIndex() > hd.index+50
	})
	close(stop)
	writes, err := wait()
	if err != nil {
		t.Fatal(err)
	}

	t.Logf("copy at index %d; %d writes, the last at %d", hd.index, len(writes), slices.MaxFunc(writes, func(a, b backupTestWrite) int { return cmp.Compare(a.index, b.index) }).index)
	if hd.index < before {
		t.Errorf("copy at index %d misses PUT /keys/before, acknowledged at %d before the request", hd.index, before)
	}
	if hd.memberID != follower || hd.clusterID != c.server(follower).raft.clusterID || hd.term == 0 {
		t.Errorf("header %+v, want member %d, cluster %x, a term", hd, follower, c.server(follower).raft.clusterID)
	}
	want := backupTestStateAt(writes, hd.index)
	want["before"] = keyspace.Value{Data: "x", Version: keyspace.Version{CreateIndex: before, ModIndex: before}}
	got := st.keys
	if d := backupTestDiff(got, want, "load/"); d != "" {
		t.Errorf("copy at index %d of %d writes: %s", hd.index, len(writes), d)
	}
	if len(got) != len(want)+4000 {
		t.Errorf("copy holds %d keys, want the %d preloaded and %d more", len(got), 4000, len(want))
	}
	if later := len(writes) - len(slices.DeleteFunc(slices.Clone(writes), func(w backupTestWrite) bool { return w.index > hd.index })); later == 0 {
		t.Errorf("no write after the copy's index %d: the test proves nothing", hd.index)
	}
	var ids []uint64
	for _, m := range st.members {
		ids = append(ids, m.ID)
	}
	if fmt.Sprint(ids) != "[1 2 3]" {
		t.Errorf("copy holds members %v, want [1 2 3]", ids)
	}

	for _, target := range []string{"/snapshot?level=default", "/snapshot?level=x", "/snapshot?index=3"} {
		r := do(t, http.MethodGet, c.url(follower, target), "")
		if r.code != http.StatusBadRequest {
			t.Errorf("GET %s: %d %q, want 400", target, r.code, r.body)
		}
	}
	r := do(t, http.MethodGet, c.url(follower, "/snapshot?level=stale"), "")
	if _, _, err := backupTestParse([]byte(r.body)); r.code != http.StatusOK || err != nil {
		t.Errorf("GET /snapshot?level=stale: %d, %v", r.code, err)
	}
}

// TestLeasesSurviveRestartAndSnapshots proves leases are replicated state:
// a lease and its keys come back after every member is stopped and
// started again (from snapshots and the WAL after them), reach a member
// added after the leader compacted its log, through the snapshot it is
// sent, and a revoke then deletes its keys on every member.
func TestLeasesSurviveRestartAndSnapshots(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config.Config) { cfg.SnapshotCount = 5 })
	leader := c.waitLeader()
	id := leaseGrant(t, c, leader, 60)
	lease := strconv.FormatUint(id, 10)
	if r := leaseDo(t, "PUT", c.url(leader, "/keys/svc/a"), "1", "Lease", lease); r.code != http.StatusCreated {
		t.Fatalf("PUT svc/a: %d %q", r.code, r.body)
	}
	for i := range 20 { // snapshots, and compaction past the lease's entries
		clusterPut(t, c, leader, fmt.Sprintf("pad/%02d", i), "x")
	}
	for _, m := range c.runningIDs() {
		if err := c.stop(m); err != nil {
			t.Fatal(err)
		}
	}
	for m := uint64(1); m <= 3; m++ {
		c.start(m)
	}
	leader = c.waitLeader()
	var v leaseView
	eventually(t, 5*time.Second, "the restarted leader to serve the lease", func() bool {
		r := leaseDo(t, "GET", c.url(c.waitLeader(), "/leases/"+lease), "")
		return r.code == 200 && json.Unmarshal([]byte(r.body), &v) == nil
	})
	if !slices.Equal(v.Keys, []string{"svc/a"}) || v.TTL != 60 || *v.Remaining < 55 {
		t.Fatalf("after a restart of every member: lease %+v (remaining %d), want svc/a, TTL 60, held a full TTL again", v, *v.Remaining)
	}
	added := c.addMember(c.waitLeader())
	eventually(t, 10*time.Second, fmt.Sprintf("member %d to have svc/a with its lease", added), func() bool {
		r := leaseDo(t, "GET", c.url(added, "/keys/svc/a?level=consistent"), "")
		return r.code == 200 && r.header.Get("Lease") == lease
	})
	if st := clusterStatus(t, c, added); st.SnapshotIndex == 0 {
		t.Fatalf("member %d caught up without a snapshot: %+v", added, st)
	}
	if r := leaseDo(t, "DELETE", c.url(added, "/leases/"+lease), ""); r.code != http.StatusNoContent {
		t.Fatalf("DELETE /leases/%s on member %d: %d %q", lease, added, r.code, r.body)
	}
	for _, m := range c.runningIDs() {
		if r := leaseDo(t, "GET", c.url(m, "/keys/svc/a?level=consistent"), ""); r.code != http.StatusNotFound {
			t.Errorf("svc/a on member %d after its lease was revoked: %d", m, r.code)
		}
	}
}
