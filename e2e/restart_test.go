package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.uber.org/zap"

	"raftkv/datadir"
	"raftkv/keyspace"
)

// Restart tests: what a member serves when it restarts alone, every other
// member down, so that all it knows is what its own data dir holds.
//
// The server (main.go's startServer) serves nothing until the kvstore has
// applied the commit index found in the WAL. Raft runs with asynchronous storage writes: a new commit
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

// restartAcknowledged reports whether a write's answer acknowledges it: a
// 204, or a 201 from a server that answers a PUT creating a key so.
func restartAcknowledged(code int) bool {
	return code == http.StatusNoContent || code == http.StatusCreated
}

// restartBulkEntries is how many 1 MiB entries "long replay" writes before
// the writes it checks.
const restartBulkEntries = 8

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
	w, err := wal.OpenForRead(zap.NewNop(), datadir.WALDir(dataDir), &walpb.Snapshot{Index: new(uint64(0)), Term: new(uint64(0))})
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
	wantCode, want := http.StatusNotFound, keyspace.ErrKeyNotFound.Error()+"\n"
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
