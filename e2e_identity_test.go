package main

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// End-to-end tests of cluster identity on real processes: clusters whose
// peer URLs cross stay apart.

// e2eIdentityMismatch is what rafthttp logs, on both sides, when it turns
// away a peer request from another cluster.
const e2eIdentityMismatch = "cluster ID mismatch"

// e2eIdentityView is one member's view of its cluster: who leads in which
// term, and the members with their peer URLs.
func e2eIdentityView(c *e2eCluster, id uint64) string {
	c.t.Helper()
	st := c.status(id)
	var ms []string
	for _, m := range c.members(id) {
		ms = append(ms, fmt.Sprintf("%d=%s", m.ID, strings.Join(m.PeerURLs, "+")))
	}
	return fmt.Sprintf("cluster %s, leader %d in term %d, members %s", st.ClusterID, st.Leader, st.Term, strings.Join(ms, ","))
}

// e2eIdentitySettled waits until the members with these ids agree on a leader and the
// leader's client URL is published (the last entry a quiet start commits),
// and returns their common view.
func e2eIdentitySettled(c *e2eCluster, ids ...uint64) string {
	c.t.Helper()
	var view string
	c.eventually(20*time.Second, fmt.Sprintf("members %v to agree on a leader", ids), func() bool {
		view = ""
		for _, id := range ids {
			r, err := e2eTry(e2eClient, "GET", c.url(id, "/keys/settled?level=default"), "")
			if err != nil || r.code != http.StatusNotFound && r.code != http.StatusTemporaryRedirect {
				return false
			}
			v := e2eIdentityView(c, id)
			if strings.Contains(v, "leader 0 ") || (view != "" && v != view) {
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
	if a.status(1).ClusterID == b.status(1).ClusterID {
		t.Fatalf("both clusters have the same ID: A %s; B %s", viewA, viewB)
	}
	t.Logf("A: %s; B: %s", viewA, viewB)

	// B's members keep dialling their member 3; A's member 3 turns them away.
	b.eventually(10*time.Second, "A's member 3 and B's members to log a cluster ID mismatch", func() bool {
		return e2eLogHas(a.running[3], e2eIdentityMismatch) && e2eLogHas(b.running[1], e2eIdentityMismatch) && e2eLogHas(b.running[2], e2eIdentityMismatch)
	})
	// Writes on each side stay on that side.
	a.expect("PUT", 1, "/keys/side", "a", http.StatusNoContent, "")
	b.expect("PUT", 1, "/keys/side", "b", http.StatusNoContent, "")
	for id := uint64(1); id <= 3; id++ {
		a.expect("GET", id, "/keys/side?level=consistent", "", http.StatusOK, "a")
		if got := e2eIdentityView(a, id); got != viewA {
			t.Errorf("cluster A's member %d: %s; before B started: %s", id, got, viewA)
		}
	}
	for id := uint64(1); id <= 2; id++ {
		b.expect("GET", id, "/keys/side?level=consistent", "", http.StatusOK, "b")
		if got := e2eIdentityView(b, id); got != viewB {
			t.Errorf("cluster B's member %d: %s; before: %s", id, got, viewB)
		}
	}
}
