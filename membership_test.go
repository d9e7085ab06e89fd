package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
)

// Membership through the client API: reading one member, the checks that
// keep a change from costing the cluster its quorum, and removing the
// leader without an election.

// TestHTTPGetMember proves GET /members/{id} serves the Location a 201 to POST /members names, as GET /members lists it, with 400 for a bad id and 404 for a stranger.
func TestHTTPGetMember(t *testing.T) {
	_, h := httpTestCluster(t, nil)
	for _, tc := range []struct {
		target string
		code   int
	}{
		{"/members/abc", http.StatusBadRequest},
		{"/members/0", http.StatusBadRequest},
		{"/members/-1", http.StatusBadRequest},
		{"/members/18446744073709551616", http.StatusBadRequest},
		{"/members/2", http.StatusNotFound},
	} {
		rec := httpTestServe(h, http.MethodGet, tc.target, "", false)
		if rec.Code != tc.code {
			t.Errorf("GET %s: %d %q, want %d", tc.target, rec.Code, rec.Body.String(), tc.code)
		}
		httpTestOneLine(t, "GET "+tc.target, rec.Body.String())
	}

	// A lone member may add a second (see mayAddMember); it never runs.
	body := fmt.Sprintf(`{"id":2,"peerURL":"http://%s","clientURL":"http://%s"}`, freeAddr(t), freeAddr(t))
	rec := httpTestServe(h, http.MethodPost, "/members", body, false)
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST /members: %d %q, want 201", rec.Code, rec.Body.String())
	}
	list := httpTestGetMembers(t, h)
	if len(list) != 2 {
		t.Fatalf("GET /members after adding member 2: %+v", list)
	}
	for _, target := range []string{"/members/1", rec.Header().Get("Location")} {
		got := httpTestGetJSON(t, h, target)
		var m memberView
		dec := json.NewDecoder(got.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("GET %s: %v in %q", target, err, got.Body.String())
		}
		want, _ := clusterFindMember(list, m.ID)
		if fmt.Sprint(m) != fmt.Sprint(want) || target != fmt.Sprintf("/members/%d", m.ID) {
			t.Errorf("GET %s: %+v, want %+v as GET /members lists it", target, m, want)
		}
	}
}

// membershipAdd asks member via to add a member that never runs and
// returns the answer.
func membershipAdd(t *testing.T, c *testCluster, via, id uint64) response {
	t.Helper()
	body := fmt.Sprintf(`{"id":%d,"peerURL":"http://%s","clientURL":"http://%s"}`, id, freeAddr(t), freeAddr(t))
	return do(t, http.MethodPost, c.url(via, "/members"), body)
}

// TestStrictReconfigAdd proves adding voters that never start is refused with a 409 naming the numbers once the healthy voters would fall below a quorum, so the cluster keeps its quorum and can still remove them.
func TestStrictReconfigAdd(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitLeader()
	eventually(t, 5*time.Second, "member 1 to be connected to members 2 and 3", func() bool {
		return c.server(1).raft.peerConnected(2) && c.server(1).raft.peerConnected(3)
	})
	// 3 healthy of 4, then of 5: a quorum (3) either way.
	for _, id := range []uint64{4, 5} {
		if r := membershipAdd(t, c, 1, id); r.code != http.StatusCreated {
			t.Fatalf("POST /members for member %d: %d %q, want 201", id, r.code, r.body)
		}
	}
	// 3 healthy of 6 is not a quorum (4).
	r := membershipAdd(t, c, 1, 6)
	if r.code != http.StatusConflict {
		t.Fatalf("POST /members for a sixth voter with three started: %d %q, want 409", r.code, r.body)
	}
	clusterOneLineBody(t, "POST /members refused", r)
	if want := "adding member 6 would make 6 voters, 3 of them healthy, and a quorum is 4"; !strings.Contains(r.body, want) {
		t.Errorf("POST /members refused: %q, want it to say %q", r.body, want)
	}
	if ms := clusterMembers(t, c, 1); len(ms) != 5 {
		t.Fatalf("GET /members after a refused add lists %d members, want 5", len(ms))
	}
	// The cluster still commits: the members that never ran can be removed,
	// through a member that has applied their addition too.
	eventually(t, 5*time.Second, "member 2 to list the 5 members", func() bool { return len(clusterMembers(t, c, 2)) == 5 })
	for _, id := range []uint64{5, 4} {
		if r := do(t, http.MethodDelete, c.url(2, fmt.Sprintf("/members/%d", id)), ""); r.code != http.StatusNoContent {
			t.Fatalf("DELETE /members/%d: %d %q, want 204", id, r.code, r.body)
		}
	}
	clusterPut(t, c, 3, "strict/after", "ok")
}

// TestStrictReconfigRemove proves that with one of three members down, removing a live one is refused with a 409 naming the numbers, while removing the one that is down succeeds.
func TestStrictReconfigRemove(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	down := c.follower()
	live := clusterOther(t, c, leader, down)
	if err := c.stop(down); err != nil {
		t.Fatalf("stop member %d: %v", down, err)
	}
	eventually(t, 5*time.Second, fmt.Sprintf("member %d to see member %d disconnected", leader, down), func() bool {
		return !c.server(leader).raft.peerConnected(down)
	})
	r := do(t, http.MethodDelete, c.url(leader, fmt.Sprintf("/members/%d", live)), "")
	if r.code != http.StatusConflict {
		t.Fatalf("DELETE /members/%d with member %d down: %d %q, want 409", live, down, r.code, r.body)
	}
	clusterOneLineBody(t, "DELETE /members refused", r)
	if want := fmt.Sprintf("removing member %d would leave 2 voters, 1 of them healthy, and a quorum is 2", live); !strings.Contains(r.body, want) {
		t.Errorf("DELETE /members/%d refused: %q, want it to say %q", live, r.body, want)
	}
	if r := do(t, http.MethodDelete, c.url(leader, fmt.Sprintf("/members/%d", down)), ""); r.code != http.StatusNoContent {
		t.Fatalf("DELETE /members/%d, the member that is down: %d %q, want 204", down, r.code, r.body)
	}
	clusterPut(t, c, live, "strict/after", "ok")
}

// TestRemoveLeaderWithoutElection proves that removing the leader, through itself or through a follower, hands leadership over first: the others know a new leader, one term on, sooner than any of them could have timed out and campaigned.
func TestRemoveLeaderWithoutElection(t *testing.T) {
	const tick = 50 * time.Millisecond
	// A follower campaigns only after hearing nothing for electionTicks
	// ticks; the old leader heartbeats every tick until it leaves.
	const electionTimeout = electionTicks * tick
	for _, through := range []string{"itself", "follower"} {
		t.Run("through "+through, func(t *testing.T) {
			c := newTestCluster(t, 3, func(cfg *config) { cfg.tickInterval = tick })
			old := c.waitLeader()
			via := old
			if through == "follower" {
				via = c.follower()
			}
			term := clusterStatus(t, c, old).Term
			start := time.Now()
			clusterRemove(t, c, via, old)
			var leader uint64
			eventually(t, 5*time.Second, "the remaining members to agree on a new leader", func() bool {
				leader = 0
				for _, id := range c.runningIDs() {
					l := c.server(id).raft.leaderID()
					if l == raft.None || l == old || (leader != 0 && l != leader) {
						return false
					}
					leader = l
				}
				return true
			})
			took := time.Since(start)
			t.Logf("member %d removed and member %d leading %s after the DELETE", old, leader, took.Round(time.Millisecond))
			if took >= electionTimeout/2 {
				t.Errorf("a new leader took %s after the DELETE, election timeout %s: an election, not a hand-over", took, electionTimeout)
			}
			if st := clusterStatus(t, c, leader); st.Term != term+1 {
				t.Errorf("new leader %d is at term %d, the removed one was at %d: want exactly one term on", leader, st.Term, term)
			}
			clusterPut(t, c, leader, "handoff/after", "ok")
		})
	}
}
