package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// End-to-end tests of cluster identity on real processes: clusters whose
// peer URLs cross stay apart, and a member whose data dir was lost rejoins
// under a new id on its old host and ports.

// e2eIdentityMismatch is what rafthttp logs, on both sides, when it turns
// away a peer request from another cluster.
const e2eIdentityMismatch = "cluster ID mismatch"

// e2eIdentity is one member's view of its cluster: which cluster, who
// leads in which term, and the members with their peer URLs.
type e2eIdentity struct {
	clusterID    string
	leader, term uint64
	members      string // "1=http://...,3=http://..."
}

func (v e2eIdentity) String() string {
	return fmt.Sprintf("cluster %s, leader %d in term %d, members %s", v.clusterID, v.leader, v.term, v.members)
}

// e2eIdentityOf asks member id for its view of its cluster.
func e2eIdentityOf(c *e2eCluster, id uint64) e2eIdentity {
	c.t.Helper()
	st := c.status(id)
	var ms []string
	for _, m := range c.members(id) {
		ms = append(ms, fmt.Sprintf("%d=%s", m.ID, strings.Join(m.PeerURLs, "+")))
	}
	return e2eIdentity{clusterID: st.ClusterID, leader: st.Leader, term: st.Term, members: strings.Join(ms, ",")}
}

// e2eIdentitySettled waits until the members with these ids agree on a
// leader and the leader's client URL is advertised (the last entry a quiet
// start commits), and returns their common view.
func e2eIdentitySettled(c *e2eCluster, ids ...uint64) e2eIdentity {
	c.t.Helper()
	var view e2eIdentity
	c.eventually(20*time.Second, fmt.Sprintf("members %v to agree on a leader", ids), func() bool {
		view = e2eIdentity{}
		for _, id := range ids {
			r, err := e2eTry(e2eClient, "GET", c.url(id, "/keys/settled?level=default"), "")
			if err != nil || r.code != http.StatusNotFound && r.code != http.StatusTemporaryRedirect {
				return false
			}
			v := e2eIdentityOf(c, id)
			if v.leader == 0 || (view != e2eIdentity{} && v != view) {
				return false
			}
			view = v
		}
		return true
	})
	return view
}

// e2eLogHas reports whether process p's log contains s.
func e2eLogHas(p *e2eProc, s string) bool {
	b, err := os.ReadFile(p.log)
	return err == nil && strings.Contains(string(b), s)
}

// e2eIdentityLeaderAmong waits until the members with these ids agree on
// a leader among themselves: once a stopped member was leader, the others
// forward writes to it until they notice it is gone.
func e2eIdentityLeaderAmong(c *e2eCluster, ids ...uint64) {
	c.t.Helper()
	c.eventually(15*time.Second, fmt.Sprintf("members %v to agree on a leader among them", ids), func() bool {
		leader := c.status(ids[0]).Leader
		for _, id := range ids {
			if c.status(id).Leader != leader {
				return false
			}
		}
		return slices.Contains(ids, leader)
	})
}

// TestE2EClusterIDIsolation proves two clusters whose peer URLs cross never exchange raft messages: cluster B lists cluster A's member 3 as its own member 3, rafthttp refuses B's requests on both sides with a cluster-ID mismatch, and neither cluster's members, leader or term change.
func TestE2EClusterIDIsolation(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	bin := e2eBuild(t)
	a, b := newE2ECluster(t, bin), newE2ECluster(t, bin)
	for range 6 {
		a.allocate() // six distinct pairs of ports; B takes the last three
	}
	b.peers, b.clients = slices.Clone(a.peers[3:]), slices.Clone(a.clients[3:])
	a.peers, a.clients = a.peers[:3], a.clients[:3]
	// B's member 3 is A's: no process of B runs on that URL.
	b.peers[2] = a.peers[2]
	for id := uint64(1); id <= 3; id++ {
		a.start(id, fmt.Sprintf("a%d", id), append(a.args(id, 3), "--cluster-token", "cluster-a")...)
	}
	viewA := e2eIdentitySettled(a, 1, 2, 3)
	for id := uint64(1); id <= 2; id++ {
		b.start(id, fmt.Sprintf("b%d", id), append(b.args(id, 3), "--cluster-token", "cluster-b")...)
	}
	viewB := e2eIdentitySettled(b, 1, 2)
	if viewA.clusterID == viewB.clusterID {
		t.Fatalf("both clusters have the same ID: A %s; B %s", viewA, viewB)
	}
	t.Logf("A: %s; B: %s", viewA, viewB)

	// B's members keep dialling their member 3; A's member 3 turns them away.
	b.eventually(10*time.Second, "A's member 3 and B's members to log a cluster ID mismatch", func() bool {
		return e2eLogHas(a.running[3], e2eIdentityMismatch) && e2eLogHas(b.running[1], e2eIdentityMismatch) && e2eLogHas(b.running[2], e2eIdentityMismatch)
	})
	// Writes on each side stay on that side.
	a.expect("PUT", 1, "/keys/side", "a", http.StatusCreated, "")
	b.expect("PUT", 1, "/keys/side", "b", http.StatusCreated, "")
	for id := uint64(1); id <= 3; id++ {
		a.expect("GET", id, "/keys/side?level=consistent", "", http.StatusOK, "a")
		if got := e2eIdentityOf(a, id); got != viewA {
			t.Errorf("cluster A's member %d: %s; before B started: %s", id, got, viewA)
		}
	}
	for id := uint64(1); id <= 2; id++ {
		b.expect("GET", id, "/keys/side?level=consistent", "", http.StatusOK, "b")
		if got := e2eIdentityOf(b, id); got != viewB {
			t.Errorf("cluster B's member %d: %s; before: %s", id, got, viewB)
		}
	}
}

// TestE2ERejoinUnderNewID proves the recovery for a member whose data dir is lost: remove it, then start it under a new id on its old ports with --join and a --cluster naming only itself; it catches up, and the same command restarts it.
func TestE2ERejoinUnderNewID(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	c := newE2ECluster(t, e2eBuild(t))
	c.startThree()
	e2eIdentitySettled(c, 1, 2, 3)
	for _, k := range []string{"a", "b", "c"} {
		c.expect("PUT", 1, "/keys/"+k, "before-"+k, http.StatusCreated, "")
	}
	c.expect("GET", 2, "/keys/c?level=consistent", "", http.StatusOK, "before-c")

	// Member 2 loses its data dir.
	lost := c.expectExit(2)
	if err := lost.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	c.waitExit(lost, 10*time.Second, "after SIGTERM")
	if err := os.RemoveAll(filepath.Join(c.dir, "raftkv-2")); err != nil {
		t.Fatal(err)
	}
	e2eIdentityLeaderAmong(c, 1, 3)
	c.expect("DELETE", 1, "/members/2", "", http.StatusNoContent, "")

	// Member 4 takes member 2's host and ports.
	c.peers = append(c.peers, c.peers[1])
	c.clients = append(c.clients, c.clients[1])
	args := []string{
		"--id", "4",
		"--cluster", "4=" + c.peers[3],
		"--port", c.clients[3][strings.LastIndex(c.clients[3], ":")+1:],
		"--join", c.clients[0],
		"--data-dir", filepath.Join(c.dir, "raftkv-4"),
	}
	c.start(4, "raftkv4", args...)
	for _, k := range []string{"a", "b", "c"} {
		c.eventuallyGet(4, "/keys/"+k+"?level=consistent", "before-"+k, 20*time.Second)
	}
	want := fmt.Sprintf("1=%s,3=%s,4=%s", c.peers[0], c.peers[2], c.peers[3])
	view := e2eIdentitySettled(c, 1, 3, 4)
	if view.members != want {
		t.Fatalf("after the rejoin: %s, want members %s", view, want)
	}
	t.Logf("after the rejoin: %s", view)

	// The same command restarts it: its WAL holds the cluster ID and the
	// log names the other members.
	stopped := c.expectExit(4)
	if err := stopped.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	c.waitExit(stopped, 10*time.Second, "after SIGTERM")
	e2eIdentityLeaderAmong(c, 1, 3)
	c.expect("PUT", 1, "/keys/d", "while-4-was-down", http.StatusCreated, "")
	c.start(4, "raftkv4-restarted", args...)
	c.eventuallyGet(4, "/keys/d?level=consistent", "while-4-was-down", 20*time.Second)
	c.expect("PUT", 4, "/keys/e", "through-4", http.StatusCreated, "")
	c.expect("GET", 3, "/keys/e?level=consistent", "", http.StatusOK, "through-4")
	// Stopping member 4 may have cost an election; nothing else changed.
	if got := e2eIdentitySettled(c, 1, 3, 4); got.clusterID != view.clusterID || got.members != want {
		t.Errorf("after restarting member 4: %s; before: %s", got, view)
	}
}
