package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.uber.org/zap"
)

// Restart tests: what a member serves when it restarts alone, every other
// member down, so that all it knows is what its own data dir holds.
//
// startServer serves nothing until the kvstore has applied the commit index
// found in the WAL. Raft runs with asynchronous storage writes: a new commit
// index goes to the append goroutine and the entries it commits to the
// apply goroutine side by side, and etcd's wal.Save fsyncs only when
// raft.MustSync says so (new entries, term or vote). A hard state that only
// moves the commit index waits in the WAL encoder's buffer, in this
// process's memory, for the next fsync or for wal.Close. So what the WAL's
// commit index covers depends on how the member stopped:
//
//   - A clean stop (SIGTERM, server.stop) stops serving clients, then
//     saves the appends still queued (saveQueuedAppends) and closes the
//     WAL, which syncs the buffer. Raft queues each commit index for the
//     append goroutine before the entries it commits for the apply
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
		restartCleanStop(t, c, m, restartOptions{restart: func(cfg *config) { cfg.snapshotCount = 1 }})
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
	restart          func(*config)
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
	applied := c.server(m).store.appliedIndex.Load()
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

// restartWALState is what a stopped member's WAL holds, as a restart reads it.
type restartWALState struct {
	commit, term uint64 // from the last hard state record
	lastIndex    uint64 // of the last entry
}

// restartReadWAL reads the WAL in dataDir without locking or repairing it,
// from the start of the log: it is only read before the member has taken a
// snapshot.
func restartReadWAL(t testing.TB, dataDir string) restartWALState {
	t.Helper()
	w, err := wal.OpenForRead(zap.NewNop(), walDir(dataDir), &walpb.Snapshot{Index: new(uint64(0)), Term: new(uint64(0))})
	if err != nil {
		t.Fatalf("open WAL in %s: %v", dataDir, err)
	}
	defer w.Close()
	_, hs, entries, err := w.ReadAll()
	if err != nil {
		t.Fatalf("read WAL in %s: %v", dataDir, err)
	}
	var st restartWALState
	if hs != nil {
		st.commit, st.term = hs.GetCommit(), hs.GetTerm()
	}
	if len(entries) > 0 {
		st.lastIndex = entries[len(entries)-1].GetIndex()
	}
	return st
}

// restartE2EPut writes key=value through member id, requires it
// acknowledged and returns its X-Raft-Index.
func restartE2EPut(c *e2eCluster, id uint64, key, value string) uint64 {
	c.t.Helper()
	r := c.do("PUT", id, "/keys/"+key, value)
	if !restartAcknowledged(r.code) {
		c.t.Fatalf("PUT %s on member %d: %d %q, want 204 or 201", key, id, r.code, r.body)
	}
	index, err := strconv.ParseUint(r.header.Get("X-Raft-Index"), 10, 64)
	if err != nil || index == 0 {
		c.t.Fatalf("PUT %s on member %d: X-Raft-Index %q is not a positive integer", key, id, r.header.Get("X-Raft-Index"))
	}
	return index
}

// restartE2EStop stops member id's process, with sig, and waits for it to
// be gone: SIGTERM must end in exit status 0, SIGKILL in the kill.
func restartE2EStop(c *e2eCluster, id uint64, sig syscall.Signal) {
	c.t.Helper()
	p := c.expectExit(id)
	if err := p.cmd.Process.Signal(sig); err != nil {
		c.t.Fatal(err)
	}
	if sig == syscall.SIGTERM {
		c.waitExit(p, 10*time.Second, "after SIGTERM")
		return
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		c.t.Fatalf("%s still running 10s after %s", p.name, sig)
	}
}

// TestRestartAfterSIGKILL finds out what a member knows after a real kill -9
// right after it acknowledged a write, then restarting alone, and proves
// the write is not lost once the others are back. The member is the leader,
// then a follower; either way the write is the last of a few, after entries
// of 1 MiB that make its replay slow (it restarts with --snapshot-count 1,
// as "long replay" in TestRestartCleanStopServesAcknowledged does).
//
// Always true, and asserted: the WAL holds the write's entry (raft hands
// out an entry to apply only once it is stable on this member, and the
// leader counts itself towards a quorum only then); restarted alone, the
// member serves from exactly the commit index its WAL holds, from its first
// answer on, and learns nothing more; once the others are back, the first
// consistent read it answers, and a default read, see the write.
//
// Deterministic here, and asserted: that commit index is the previous
// write's, one below the acknowledged one, so the stale read shows the
// value the acknowledged write replaced. The write's entry was fsynced with
// the previous write's commit index; its own commit index was only
// buffered, and the kill comes before anything else makes this member
// fsync: nobody proposes (every member has published its client URL) and
// nothing changes its term or vote (an election needs a second without
// heartbeats). Should a stall that long happen anyway, an entry after the
// write or a higher term in the WAL would show it: the test then logs what
// it found and checks only what always holds.
func TestRestartAfterSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	bin := e2eBuild(t)
	for _, role := range []string{"leader", "follower"} {
		t.Run(role, func(t *testing.T) { restartAfterSIGKILL(t, bin, role) })
	}
}

// restartAfterSIGKILL is TestRestartAfterSIGKILL with the member that
// acknowledges the write, and is killed, in the given role.
func restartAfterSIGKILL(t *testing.T, bin, role string) {
	start := time.Now()
	c := newE2ECluster(t, bin)
	c.startThree()
	before := e2eIdentitySettled(c, 1, 2, 3)
	m := before.leader
	if role == "follower" {
		m = m%3 + 1
	}
	// Every member's client URL is published: no entry but the test's own
	// can be proposed from here on.
	c.eventually(10*time.Second, "every member to publish its client URL", func() bool {
		for _, mv := range c.members(before.leader) {
			if len(mv.ClientURLs) == 0 {
				return false
			}
		}
		return true
	})
	// Entries of 1 MiB first, for a restart with --snapshot-count 1 to
	// replay slowly (see "long replay" in the clean-stop test): a member
	// that answered before replaying its WAL would be caught at it.
	big := strings.Repeat("x", 1<<20-64)
	for i := range restartBulkEntries {
		restartE2EPut(c, m, fmt.Sprintf("restart/bulk-%02d", i), big)
	}
	oldIndex := restartE2EPut(c, m, "restart/k", "old")
	index := restartE2EPut(c, m, "restart/k", "new")
	restartE2EStop(c, m, syscall.SIGKILL)
	for id := uint64(1); id <= 3; id++ {
		if id != m {
			restartE2EStop(c, id, syscall.SIGTERM)
		}
	}
	dataDir := filepath.Join(c.dir, fmt.Sprintf("raftkv-%d", m))
	onDisk := restartReadWAL(t, dataDir)
	t.Logf("%s %d acknowledged index %d (the write before: %d), term %d, and was killed; its WAL holds entries to %d, commit index %d, term %d",
		role, m, index, oldIndex, before.term, onDisk.lastIndex, onDisk.commit, onDisk.term)
	if onDisk.lastIndex < index {
		t.Fatalf("member %d acknowledged index %d, but its WAL holds entries only to %d", m, index, onDisk.lastIndex)
	}

	// Restarted alone, it serves what its WAL says is committed, from its
	// first answer: the request is sent while it starts.
	c.start(m, fmt.Sprintf("raftkv%d-alone", m), append(c.args(m, 3), "--snapshot-count", "1")...)
	var stale response
	c.eventually(10*time.Second, fmt.Sprintf("restarted member %d to accept requests", m), func() bool {
		var err error
		stale, err = e2eTry(e2eClient, "GET", c.url(m, "/keys/restart/k?level=stale"), "")
		return err == nil
	})
	st := c.status(m)
	t.Logf("restarted alone, member %d serves from applied index %d (commit index %d, leader %d); stale read of the acknowledged write: %d %q",
		m, st.AppliedIndex, st.CommitIndex, st.Leader, stale.code, stale.body)
	if st.Leader != 0 {
		t.Fatalf("restarted member %d reports leader %d with every other member down", m, st.Leader)
	}
	if st.AppliedIndex != onDisk.commit || st.CommitIndex != onDisk.commit {
		t.Fatalf("restarted member %d: applied index %d, commit index %d; its WAL's commit index is %d", m, st.AppliedIndex, st.CommitIndex, onDisk.commit)
	}
	// What the log up to that index says of the key.
	wantCode, want := http.StatusNotFound, ErrKeyNotFound.Error()+"\n"
	switch {
	case onDisk.commit >= index:
		wantCode, want = http.StatusOK, "new"
	case onDisk.commit >= oldIndex:
		wantCode, want = http.StatusOK, "old"
	}
	if stale.code != wantCode || stale.body != want {
		t.Fatalf("stale read on restarted member %d, WAL commit index %d: %d %q, want %d %q", m, onDisk.commit, stale.code, stale.body, wantCode, want)
	}
	if onDisk.lastIndex > index || onDisk.term > before.term {
		// Something fsynced after the write's entry: see the test's comment.
		t.Logf("member %d fsynced again after acknowledging the write (entries to %d, term %d): commit index %d is not pinned", m, onDisk.lastIndex, onDisk.term, onDisk.commit)
	} else if onDisk.commit != oldIndex {
		t.Fatalf("member %d's WAL: commit index %d, term %d after a kill right after acknowledging %d in term %d, want %d, the write before's (if the commit index now reaches the disk sooner on purpose, update this test, main.go's startServer and the README)",
			m, onDisk.commit, onDisk.term, index, before.term, oldIndex)
	}

	// With the others back, the write is there.
	for id := uint64(1); id <= 3; id++ {
		if id != m {
			c.start(id, fmt.Sprintf("raftkv%d-restarted", id), c.args(id, 3)...)
		}
	}
	// Every consistent read that answers must see the write: poll only
	// until one answers, while the others elect a leader.
	var consistent response
	c.eventually(15*time.Second, fmt.Sprintf("member %d to answer a consistent read", m), func() bool {
		var err error
		consistent, err = e2eTry(e2eClient, "GET", c.url(m, "/keys/restart/k?level=consistent"), "")
		return err == nil && consistent.code != http.StatusServiceUnavailable
	})
	if consistent.code != http.StatusOK || consistent.body != "new" {
		t.Fatalf("first consistent read answered by member %d with the others back: %d %q, want 200 \"new\"", m, consistent.code, consistent.body)
	}
	if got, err := e2eTry(e2eFollowClient, "GET", c.url(m, "/keys/restart/k?level=default"), ""); err != nil || got.code != http.StatusOK || got.body != "new" {
		t.Fatalf("default read through member %d, following redirects: %d %q %v, want 200 \"new\"", m, got.code, got.body, err)
	}
	if st := c.status(m); st.AppliedIndex < index {
		t.Fatalf("member %d served a consistent read of index %d at applied index %d", m, index, st.AppliedIndex)
	}
	c.expect("GET", m, "/keys/restart/k?level=stale", "", http.StatusOK, "new")
	t.Logf("%s: with the others back, member %d reads the write at every level", time.Since(start).Round(time.Millisecond), m)
}
