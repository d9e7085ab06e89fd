package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Multi-member tests: several in-process members on loopback, driven only
// through the client API, except where a test must see a member stop.
//

// clusterPut writes key=value through member id, requires a 201 (created)
// or 204 (replaced) with a positive X-Raft-Index, and returns that index.
func clusterPut(t testing.TB, c *testCluster, id uint64, key, value string) uint64 {
	t.Helper()
	r := do(t, http.MethodPut, c.url(id, "/keys/"+key), value)
	if r.code != http.StatusCreated && r.code != http.StatusNoContent {
		t.Fatalf("PUT %s on member %d: %d %q, want 201 or 204", key, id, r.code, r.body)
	}
	raw := r.header.Get("X-Raft-Index")
	index, err := strconv.ParseUint(raw, 10, 64)
	if err != nil || index == 0 {
		t.Fatalf("PUT %s on member %d: X-Raft-Index %q is not a positive integer", key, id, raw)
	}
	return index
}

// clusterGet reads key from member id at the given level.
func clusterGet(t testing.TB, c *testCluster, id uint64, key, level string) response {
	t.Helper()
	return do(t, http.MethodGet, c.url(id, "/keys/"+key+"?level="+level), "")
}

// clusterMustRead requires a read of key on member id at level to answer
// 200 with want, at once.
func clusterMustRead(t testing.TB, c *testCluster, id uint64, key, level, want string) {
	t.Helper()
	r := clusterGet(t, c, id, key, level)
	if r.code != http.StatusOK || r.body != want {
		t.Fatalf("GET %s?level=%s on member %d: %d %q, want 200 %q", key, level, id, r.code, r.body, want)
	}
}

// clusterStatus is member id's GET /status.
func clusterStatus(t testing.TB, c *testCluster, id uint64) statusView {
	t.Helper()
	r := do(t, http.MethodGet, c.url(id, "/status"), "")
	if r.code != http.StatusOK {
		t.Fatalf("GET /status on member %d: %d %q", id, r.code, r.body)
	}
	var st statusView
	if err := json.Unmarshal([]byte(r.body), &st); err != nil {
		t.Fatalf("GET /status on member %d: %v in %q", id, err, r.body)
	}
	return st
}

// clusterMembers is member id's GET /members.
func clusterMembers(t testing.TB, c *testCluster, id uint64) []memberView {
	t.Helper()
	r := do(t, http.MethodGet, c.url(id, "/members"), "")
	if r.code != http.StatusOK {
		t.Fatalf("GET /members on member %d: %d %q", id, r.code, r.body)
	}
	var ms []memberView
	if err := json.Unmarshal([]byte(r.body), &ms); err != nil {
		t.Fatalf("GET /members on member %d: %v in %q", id, err, r.body)
	}
	return ms
}

// clusterFindMember returns the member with id in ms.
func clusterFindMember(ms []memberView, id uint64) (memberView, bool) {
	for _, m := range ms {
		if m.ID == id {
			return m, true
		}
	}
	return memberView{}, false
}

// clusterWaitClosed fails the test unless ch closes within timeout.
func clusterWaitClosed(t testing.TB, ch <-chan struct{}, timeout time.Duration, what string) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// clusterOneLineBody requires an error body to be exactly one non-empty line.
func clusterOneLineBody(t testing.TB, what string, r response) {
	t.Helper()
	line := strings.TrimSuffix(r.body, "\n")
	if strings.TrimSpace(line) == "" || strings.ContainsAny(line, "\r\n") {
		t.Fatalf("%s: body %q is not one non-empty line", what, r.body)
	}
}

// clusterOther returns the lowest-numbered running member that is none of
// the given ids.
func clusterOther(t testing.TB, c *testCluster, not ...uint64) uint64 {
	t.Helper()
	ids := c.runningIDs()
	slices.Sort(ids)
	for _, id := range ids {
		skip := false
		for _, n := range not {
			skip = skip || id == n
		}
		if !skip {
			return id
		}
	}
	t.Fatalf("no running member other than %v", not)
	return 0
}

// TestClusterFollowerWriteIsConsistentEverywhere proves a write a follower acknowledged is seen at once by a consistent read on every member.
func TestClusterFollowerWriteIsConsistentEverywhere(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	var last uint64
	for i := range 6 {
		// Alternate between the two followers, so each answers some writes.
		via := clusterOther(t, c, leader)
		if i%2 == 1 {
			via = clusterOther(t, c, leader, via)
		}
		key, value := fmt.Sprintf("rw/%d", i), fmt.Sprintf("value-%d", i)
		index := clusterPut(t, c, via, key, value)
		if index <= last {
			t.Fatalf("write %d: X-Raft-Index %d not above the previous write's %d", i, index, last)
		}
		last = index
		// No polling: the 204 means committed, so every member must see it now.
		for _, id := range []uint64{1, 2, 3} {
			clusterMustRead(t, c, id, key, levelConsistent, value)
		}
		// The leader's default read waits for what it knows committed.
		clusterMustRead(t, c, leader, key, levelDefault, value)
	}
}

// TestClusterReadLevels proves default reads redirect from followers to the leader's client URL, unknown levels are refused and stale reads converge.
func TestClusterReadLevels(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	f := c.follower()
	const key, value = "levels/a", "hello"
	clusterPut(t, c, f, key, value)

	r := clusterGet(t, c, f, key, levelDefault)
	if r.code != http.StatusTemporaryRedirect {
		t.Fatalf("default read on follower %d: %d %q, want 307", f, r.code, r.body)
	}
	if want := c.clientURL(leader) + "/keys/" + key + "?level=default"; r.header.Get("Location") != want {
		t.Fatalf("default read on follower %d: Location %q, want %q", f, r.header.Get("Location"), want)
	}
	// No level at all is the default level, and the query is kept as sent.
	r = do(t, http.MethodGet, c.url(f, "/keys/"+key), "")
	if want := c.clientURL(leader) + "/keys/" + key; r.code != http.StatusTemporaryRedirect || r.header.Get("Location") != want {
		t.Fatalf("level-less read on follower %d: %d Location %q, want 307 %q", f, r.code, r.header.Get("Location"), want)
	}
	// Following the redirect lands on the leader, which answers itself.
	r = do(t, http.MethodGet, r.header.Get("Location"), "")
	if r.code != http.StatusOK || r.body != value {
		t.Fatalf("following the redirect: %d %q, want 200 %q", r.code, r.body, value)
	}
	clusterMustRead(t, c, leader, key, levelDefault, value)

	for _, id := range []uint64{1, 2, 3} {
		r := clusterGet(t, c, id, key, "bogus")
		if r.code != http.StatusBadRequest {
			t.Fatalf("level=bogus on member %d: %d %q, want 400", id, r.code, r.body)
		}
		clusterOneLineBody(t, "level=bogus", r)
	}

	for _, id := range []uint64{1, 2, 3} {
		eventually(t, 5*time.Second, fmt.Sprintf("stale read on member %d to show the write", id), func() bool {
			r := clusterGet(t, c, id, key, levelStale)
			return r.code == http.StatusOK && r.body == value
		})
	}
	// A stale read of a key nobody wrote is a plain 404 on any member.
	for _, id := range []uint64{1, 2, 3} {
		if r := clusterGet(t, c, id, "levels/never", levelStale); r.code != http.StatusNotFound {
			t.Fatalf("stale read of a missing key on member %d: %d %q, want 404", id, r.code, r.body)
		}
	}
}

// TestClusterDelete proves DELETE answers 204 for a present key, after which consistent reads everywhere 404, and 404 when the key is gone.
func TestClusterDelete(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	f := c.follower()
	const key = "del/k"
	clusterPut(t, c, c.waitLeader(), key, "doomed")

	r := do(t, http.MethodDelete, c.url(f, "/keys/"+key), "")
	if r.code != http.StatusNoContent {
		t.Fatalf("DELETE on follower %d: %d %q, want 204", f, r.code, r.body)
	}
	if index, err := strconv.ParseUint(r.header.Get("X-Raft-Index"), 10, 64); err != nil || index == 0 {
		t.Fatalf("DELETE: X-Raft-Index %q is not a positive integer", r.header.Get("X-Raft-Index"))
	}
	for _, id := range []uint64{1, 2, 3} {
		if r := clusterGet(t, c, id, key, levelConsistent); r.code != http.StatusNotFound {
			t.Fatalf("consistent read after DELETE on member %d: %d %q, want 404", id, r.code, r.body)
		}
	}
	for _, id := range []uint64{f, c.waitLeader()} {
		r := do(t, http.MethodDelete, c.url(id, "/keys/"+key), "")
		if r.code != http.StatusNotFound {
			t.Fatalf("second DELETE on member %d: %d %q, want 404", id, r.code, r.body)
		}
		clusterOneLineBody(t, "second DELETE", r)
	}
}

// TestClusterRestartCatchesUp proves a stopped member keeps what it had applied across a restart and then catches up with the writes it missed.
func TestClusterRestartCatchesUp(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	f := c.follower()
	index := clusterPut(t, c, leader, "restart/before", "old")
	eventually(t, 5*time.Second, "the follower to apply the write", func() bool {
		return c.server(f).store.appliedIndex.Load() >= index
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
	c := newTestCluster(t, 3, func(cfg *config) { cfg.snapshotCount = 20 })
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

// TestClusterAddMemberExplicitly proves POST /members adds a member that, started with --join, takes the 409 for itself as success and serves the data.
func TestClusterAddMemberExplicitly(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	clusterPut(t, c, c.waitLeader(), "add/k", "v")

	id := c.allocate()
	body := fmt.Sprintf(`{"id":%d,"peerURL":%q,"clientURL":%q}`, id, c.peerURLs[id-1], c.clientURL(id))
	r := do(t, http.MethodPost, c.url(1, "/members"), body)
	if r.code != http.StatusCreated {
		t.Fatalf("POST /members: %d %q, want 201", r.code, r.body)
	}
	if want := fmt.Sprintf("/members/%d", id); r.header.Get("Location") != want {
		t.Fatalf("POST /members: Location %q, want %q", r.header.Get("Location"), want)
	}
	m, ok := clusterFindMember(clusterMembers(t, c, 1), id)
	if !ok {
		t.Fatalf("GET /members on member 1 does not list new member %d", id)
	}
	if m.IsLeader || len(m.PeerURLs) != 1 || m.PeerURLs[0] != c.peerURLs[id-1] ||
		len(m.ClientURLs) != 1 || m.ClientURLs[0] != c.clientURL(id) {
		t.Fatalf("GET /members lists new member as %+v", m)
	}
	// Adding it again conflicts; that is the 409 the joining member accepts.
	if r := do(t, http.MethodPost, c.url(1, "/members"), body); r.code != http.StatusConflict {
		t.Fatalf("second POST /members: %d %q, want 409", r.code, r.body)
	}

	c.startWith(c.config(id, c.clientURL(1)))
	c.waitLeader()
	clusterMustRead(t, c, id, "add/k", levelConsistent, "v")
	clusterPut(t, c, id, "add/through-new", "w")
	for _, other := range []uint64{1, 2, 3} {
		clusterMustRead(t, c, other, "add/through-new", levelConsistent, "w")
	}
	if ms := clusterMembers(t, c, id); len(ms) != 4 {
		t.Fatalf("GET /members on the new member lists %d members, want 4: %+v", len(ms), ms)
	}
}

// clusterRemove removes member id through member via, requires a 204, and
// waits for the removed member to stop by itself with ErrRemoved.
func clusterRemove(t testing.TB, c *testCluster, via, id uint64) {
	t.Helper()
	s := c.server(id)
	r := do(t, http.MethodDelete, c.url(via, fmt.Sprintf("/members/%d", id)), "")
	if r.code != http.StatusNoContent {
		t.Fatalf("DELETE /members/%d on member %d: %d %q, want 204", id, via, r.code, r.body)
	}
	clusterWaitClosed(t, s.raft.done(), 5*time.Second, fmt.Sprintf("removed member %d to stop", id))
	if err := c.stop(id); !errors.Is(err, ErrRemoved) {
		t.Fatalf("stop removed member %d: %v, want ErrRemoved", id, err)
	}
}

// TestClusterRemoveFollower proves DELETE /members/{id} through another member stops the removed member with ErrRemoved while the rest keep serving.
func TestClusterRemoveFollower(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	removed := c.follower()
	via := clusterOther(t, c, leader, removed)
	clusterRemove(t, c, via, removed)

	if _, ok := clusterFindMember(clusterMembers(t, c, via), removed); ok {
		t.Fatalf("GET /members on member %d still lists removed member %d", via, removed)
	}
	eventually(t, 5*time.Second, "the leader to drop the removed member", func() bool {
		_, ok := clusterFindMember(clusterMembers(t, c, leader), removed)
		return !ok
	})
	for _, id := range []uint64{leader, via} {
		key := fmt.Sprintf("rm/after-%d", id)
		clusterPut(t, c, id, key, "ok")
		for _, other := range []uint64{leader, via} {
			clusterMustRead(t, c, other, key, levelConsistent, "ok")
		}
	}

	r := do(t, http.MethodDelete, c.url(via, fmt.Sprintf("/members/%d", removed)), "")
	if r.code != http.StatusNotFound {
		t.Fatalf("second DELETE /members/%d: %d %q, want 404", removed, r.code, r.body)
	}
	body := fmt.Sprintf(`{"id":%d,"peerURL":%q,"clientURL":%q}`, removed, c.peerURLs[removed-1], c.clientURL(removed))
	r = do(t, http.MethodPost, c.url(via, "/members"), body)
	if r.code != http.StatusConflict {
		t.Fatalf("POST /members re-adding removed id %d: %d %q, want 409", removed, r.code, r.body)
	}
	clusterOneLineBody(t, "re-adding a removed id", r)
}

// TestClusterRemoveLeader proves the leader can be removed, through a follower or through itself: it stops with ErrRemoved, a new leader is elected and writes succeed.
func TestClusterRemoveLeader(t *testing.T) {
	for _, through := range []string{"follower", "itself"} {
		t.Run("through "+through, func(t *testing.T) {
			c := newTestCluster(t, 3, nil)
			old := c.waitLeader()
			clusterPut(t, c, old, "rml/before", "1")
			via := old
			if through == "follower" {
				via = c.follower()
			}
			clusterRemove(t, c, via, old)

			leader := c.waitLeader()
			if leader == old {
				t.Fatalf("removed member %d is still the leader", old)
			}
			for _, id := range c.runningIDs() {
				key := fmt.Sprintf("rml/after-%d", id)
				clusterPut(t, c, id, key, "ok")
				clusterMustRead(t, c, clusterOther(t, c, id), key, levelConsistent, "ok")
				clusterMustRead(t, c, id, "rml/before", levelConsistent, "1")
				if _, ok := clusterFindMember(clusterMembers(t, c, id), old); ok {
					t.Fatalf("GET /members on member %d still lists removed leader %d", id, old)
				}
			}
		})
	}
}

// clusterStopAllBut cleanly stops every running member except keep.
func clusterStopAllBut(t testing.TB, c *testCluster, keep uint64) {
	t.Helper()
	for _, id := range c.runningIDs() {
		if id != keep {
			if err := c.stop(id); err != nil {
				t.Fatalf("stop member %d: %v", id, err)
			}
		}
	}
}

// TestClusterNoLeader proves a member without a quorum answers 503 with Retry-After, and a leader that just lost its followers fails a write with a one-line 503 or 504.
func TestClusterNoLeader(t *testing.T) {
	t.Run("survivor", func(t *testing.T) {
		c := newTestCluster(t, 3, nil)
		survivor := c.waitLeader()
		clusterPut(t, c, survivor, "noleader/k", "v")
		clusterStopAllBut(t, c, survivor)
		// CheckQuorum makes the lone leader step down within an election timeout or two.
		eventually(t, 5*time.Second, "the survivor to report no leader", func() bool {
			return do(t, http.MethodGet, c.url(survivor, "/health"), "").code == http.StatusServiceUnavailable
		})
		for _, req := range []struct{ method, path string }{
			{http.MethodGet, "/health"},
			{http.MethodPut, "/keys/noleader/k"},
			{http.MethodDelete, "/keys/noleader/k"},
			{http.MethodGet, "/keys/noleader/k?level=consistent"},
			{http.MethodGet, "/keys/noleader/k?level=default"},
		} {
			r := do(t, req.method, c.url(survivor, req.path), "w")
			what := req.method + " " + req.path
			if r.code != http.StatusServiceUnavailable {
				t.Fatalf("%s on the survivor: %d %q, want 503", what, r.code, r.body)
			}
			if r.header.Get("Retry-After") == "" {
				t.Fatalf("%s on the survivor: 503 without Retry-After", what)
			}
			clusterOneLineBody(t, what, r)
		}
		// Stale reads still answer from what the survivor has.
		clusterMustRead(t, c, survivor, "noleader/k", levelStale, "v")
	})

	t.Run("leader loses followers", func(t *testing.T) {
		const timeout = 500 * time.Millisecond
		c := newTestCluster(t, 3, func(cfg *config) { cfg.requestTimeout = timeout })
		leader := c.waitLeader()
		clusterPut(t, c, leader, "noleader/k", "v")
		clusterStopAllBut(t, c, leader)
		start := time.Now()
		r := do(t, http.MethodPut, c.url(leader, "/keys/noleader/k"), "w")
		if r.code != http.StatusGatewayTimeout && r.code != http.StatusServiceUnavailable {
			t.Fatalf("PUT on a leader without followers: %d %q, want 504 or 503", r.code, r.body)
		}
		if elapsed := time.Since(start); elapsed > timeout+2*time.Second {
			t.Fatalf("PUT on a leader without followers took %s with a request timeout of %s", elapsed, timeout)
		}
		clusterOneLineBody(t, "PUT on a leader without followers", r)
		if r.code == http.StatusServiceUnavailable && r.header.Get("Retry-After") == "" {
			t.Fatalf("PUT on a leader without followers: 503 without Retry-After")
		}
		// The write never committed: the old value is what the leader has.
		clusterMustRead(t, c, leader, "noleader/k", levelStale, "v")
	})
}
