package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3"

	"raftkv/config"
	"raftkv/membership"
)

// Membership changes (confchange.go): members added and removed through
// the /members routes and --join, learners and their promotion, the strict
// reconfiguration checks, and removing the leader without an election.

// memberBodyBytes bounds the body of POST /members (package membership's
// maxBodyBytes).
const memberBodyBytes = 64 << 10

// TestHTTPMembers proves GET /members shows the table, bad or conflicting changes get 400/404/409 unproposed, and a valid POST 201.
func TestHTTPMembers(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	peer1, client1 := c.peerURLs[0], c.clients[0]

	members := httpTestGetMembers(t, h)
	want := []membership.View{{Member: membership.Member{ID: 1, PeerURLs: []string{peer1}, ClientURLs: []string{client1}}, IsLeader: true}}
	if fmt.Sprint(members) != fmt.Sprint(want) {
		t.Fatalf("GET /members: %+v, want %+v", members, want)
	}
	applied := httpTestGetStatus(t, h).AppliedIndex

	// Addresses nothing listens on: the new member never runs.
	newPeer, newClient := "http://"+freeAddr(t), "http://"+freeAddr(t)
	body := func(id uint64, peerURL, clientURL string) string {
		return fmt.Sprintf(`{"id":%d,"peerURL":%q,"clientURL":%q}`, id, peerURL, clientURL)
	}
	rejected := []struct {
		name   string
		method string
		target string
		body   string
		code   int
	}{
		{"bad JSON", "POST", "/members", `{"id":2,`, 400},
		{"not an object", "POST", "/members", `[2]`, 400},
		{"empty body", "POST", "/members", ``, 400},
		{"unknown field", "POST", "/members", `{"id":2,"peerURL":"` + newPeer + `","name":"two"}`, 400},
		{"two values", "POST", "/members", body(2, newPeer, newClient) + body(3, newPeer, newClient), 400},
		{"body too large", "POST", "/members", `{"id":2,"peerURL":"` + newPeer + `","clientURL":"` + strings.Repeat(" ", memberBodyBytes) + `"}`, 413},
		{"id 0", "POST", "/members", body(0, newPeer, newClient), 400},
		{"id missing", "POST", "/members", `{"peerURL":"` + newPeer + `"}`, 400},
		{"id 70000", "POST", "/members", body(70000, newPeer, newClient), 400},
		{"negative id", "POST", "/members", `{"id":-2,"peerURL":"` + newPeer + `"}`, 400},
		{"peerURL ftp", "POST", "/members", body(2, "ftp://x", newClient), 400},
		{"peerURL without port", "POST", "/members", body(2, "http://host-without-port", newClient), 400},
		{"peerURL empty", "POST", "/members", body(2, "", newClient), 400},
		{"peerURL with path", "POST", "/members", body(2, newPeer+"/raft", newClient), 400},
		{"clientURL without scheme", "POST", "/members", body(2, newPeer, "localhost"), 400},
		{"clientURL without port", "POST", "/members", body(2, newPeer, "http://localhost"), 400},
		{"clientURL with path", "POST", "/members", body(2, newPeer, newClient+"/api"), 400},
		{"clientURL ftp", "POST", "/members", body(2, newPeer, "ftp://127.0.0.1:1"), 400},
		{"peerURL with a space", "POST", "/members", body(2, " "+newPeer, newClient), 400},
		{"peerURL https", "POST", "/members", body(2, strings.Replace(newPeer, "http:", "https:", 1), newClient), 400},
		{"peerURL unix", "POST", "/members", body(2, strings.Replace(newPeer, "http:", "unix:", 1), newClient), 400},
		{"peerURL port 99999", "POST", "/members", body(2, "http://127.0.0.1:99999", newClient), 400},
		{"peerURL long host", "POST", "/members", body(2, "http://"+strings.Repeat("h", 10000)+":1", newClient), 400},
		{"peerURL user info", "POST", "/members", body(2, "http://me@127.0.0.1:1", newClient), 400},
		{"clientURL https", "POST", "/members", body(2, newPeer, strings.Replace(newClient, "http:", "https:", 1)), 400},
		{"clientURL same as peerURL", "POST", "/members", body(2, newPeer, newPeer), 400},
		{"existing id", "POST", "/members", body(1, newPeer, newClient), 409},
		{"existing peer URL", "POST", "/members", body(2, peer1, newClient), 409},
		{"existing peer URL spelled otherwise", "POST", "/members", body(2, strings.Replace(peer1, "http:", "HTTP:", 1)+"/", newClient), 409},
		{"existing client URL", "POST", "/members", body(2, newPeer, client1), 409},
		{"existing client URL as peer URL", "POST", "/members", body(2, client1, newClient), 409},
		{"remove id not a number", "DELETE", "/members/abc", "", 400},
		{"remove id 0", "DELETE", "/members/0", "", 400},
		{"remove negative id", "DELETE", "/members/-1", "", 400},
		{"remove unknown id", "DELETE", "/members/99", "", 404},
		{"remove the only member", "DELETE", "/members/1", "", 409},
	}
	for _, tc := range rejected {
		rec := httpTestServe(h, tc.method, tc.target, tc.body, false)
		what := tc.name + ": " + tc.method + " " + tc.target
		if rec.Code != tc.code {
			t.Errorf("%s: %d %q, want %d", what, rec.Code, rec.Body.String(), tc.code)
			continue
		}
		httpTestOneLine(t, what, rec.Body.String())
		if v := rec.Header().Get("X-Raft-Index"); v != "" {
			t.Errorf("%s: X-Raft-Index %q on a rejected request", what, v)
		}
	}
	if got := httpTestGetStatus(t, h).AppliedIndex; got != applied {
		t.Errorf("appliedIndex %d after only rejected membership requests, was %d", got, applied)
	}
	if got := httpTestGetMembers(t, h); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("GET /members after rejected requests: %+v, want %+v", got, want)
	}

	// Last: adding a voter that never runs costs this cluster its quorum.
	rec := httpTestServe(h, "POST", "/members", body(2, newPeer, newClient), false)
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST /members: %d %q, want 201", rec.Code, rec.Body.String())
	}
	addIndex := httpTestRaftIndex(t, "POST /members", rec)
	if loc := rec.Header().Get("Location"); loc != "/members/2" {
		t.Errorf("POST /members: Location %q, want /members/2", loc)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("POST /members: Content-Type %q, want application/json", ct)
	}
	var added membership.View
	if err := json.Unmarshal(rec.Body.Bytes(), &added); err != nil {
		t.Fatalf("POST /members: %v in %q", err, rec.Body.String())
	}
	if wantAdded := (membership.View{Member: membership.Member{ID: 2, PeerURLs: []string{newPeer}, ClientURLs: []string{newClient}}}); fmt.Sprint(added) != fmt.Sprint(wantAdded) {
		t.Errorf("POST /members: body %+v, want %+v", added, wantAdded)
	}
	got := httpTestGetMembers(t, h)
	if len(got) != 2 || got[0].ID != 1 || got[1].ID != 2 || got[1].IsLeader ||
		!slices.Equal(got[1].PeerURLs, []string{newPeer}) || !slices.Equal(got[1].ClientURLs, []string{newClient}) {
		t.Errorf("GET /members after adding member 2: %+v", got)
	}
	if _, ok := c.server(1).raft.node.Status().Config.Voters.IDs()[2]; !ok {
		t.Errorf("raft's voters %v do not include member 2", c.server(1).raft.node.Status().Config.Voters)
	}
	// A conf change is snapshotted at once, so that a member added after
	// compaction can catch up from a snapshot that includes it.
	eventually(t, 5*time.Second, fmt.Sprintf("a snapshot at the conf change's index %d", addIndex), func() bool {
		return httpTestGetStatus(t, h).SnapshotIndex >= addIndex
	})

	// The checks before proposing need no quorum.
	for _, tc := range []struct{ name, body string }{
		{"same member again", body(2, newPeer, newClient)},
		{"new id, member 2's peer URL", body(3, newPeer, newClient)},
	} {
		rec := httpTestServe(h, "POST", "/members", tc.body, false)
		if rec.Code != http.StatusConflict {
			t.Errorf("POST /members %s: %d %q, want 409", tc.name, rec.Code, rec.Body.String())
			continue
		}
		httpTestOneLine(t, tc.name, rec.Body.String())
	}
}

// TestHTTPMembersTrailingData proves POST /members refuses with 400, adding no one, a body with anything after the JSON object.
func TestHTTPMembersTrailingData(t *testing.T) {
	// A member wrongly added costs the quorum; later proposals time out.
	_, h := httpTestCluster(t, func(cfg *config.Config) { cfg.RequestTimeout = time.Second })
	applied := httpTestGetStatus(t, h).AppliedIndex
	// Each case names a different new member, so one wrongly accepted
	// does not turn the next into a 409.
	for i, trailer := range []string{" x", " {}", ",", "}", "]"} {
		id := i + 2
		body := fmt.Sprintf(`{"id":%d,"peerURL":"http://%s"}`, id, freeAddr(t)) + trailer
		rec := httpTestServe(h, "POST", "/members", body, false)
		if rec.Code != http.StatusBadRequest {
			t.Errorf("POST /members %s: %d %q, want 400", body, rec.Code, rec.Body.String())
			continue
		}
		httpTestOneLine(t, body, rec.Body.String())
	}
	if got := httpTestGetMembers(t, h); len(got) != 1 {
		t.Errorf("GET /members after only malformed POSTs: %+v, want member 1 alone", got)
	}
	if got := httpTestGetStatus(t, h).AppliedIndex; got != applied {
		t.Errorf("appliedIndex %d after only malformed POSTs, was %d", got, applied)
	}
}

// TestHTTPMembersAtFirstStart proves the API knows the --cluster members as soon as a member's first start returns.
func TestHTTPMembersAtFirstStart(t *testing.T) {
	c, h := httpTestLoneOfThree(t)
	got := httpTestGetMembers(t, h)
	ids := make([]uint64, 0, len(got))
	for _, m := range got {
		ids = append(ids, m.ID)
	}
	if !slices.Equal(ids, []uint64{1, 2, 3}) {
		t.Errorf("GET /members right after the first start: %+v, want members 1, 2 and 3 from --cluster %v", got, c.peerURLs)
	}
	// No leader: a known member gets 503, an unknown one would get 404.
	if rec := httpTestServe(h, "DELETE", "/members/2", "", false); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("DELETE /members/2 right after the first start: %d %q, want 503 (no leader)", rec.Code, rec.Body.String())
	}
}

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

	// A lone member may add a second (membership.CheckAddVoter); it never runs.
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
		var m membership.View
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
		return c.server(1).raft.Connected(2) && c.server(1).raft.Connected(3)
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
		return !c.server(leader).raft.Connected(down)
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
			c := newTestCluster(t, 3, func(cfg *config.Config) { cfg.TickInterval = tick })
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
					l := c.server(id).raft.Leader()
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

// Learners.

// learnerConfig is the config of learner id, which joins through member
// via and stays a learner (--learner) unless stay is false.
func (c *testCluster) learnerConfig(id, via uint64, stay bool) config.Config {
	cfg := c.config(id, c.clientURL(via))
	cfg.StayLearner = stay
	return cfg
}

// addLearner allocates a member, joins it through member via with --join
// and --learner, and returns its id once it runs.
func (c *testCluster) addLearner(via uint64) uint64 {
	c.t.Helper()
	id := c.allocate()
	c.startWith(c.learnerConfig(id, via, true))
	return id
}

// learnerPost is a POST with an empty body.
func learnerPost(t *testing.T, c *testCluster, id uint64, path string) response {
	t.Helper()
	return do(t, http.MethodPost, c.url(id, path), "")
}

// learnerCheckTable fails unless member id's GET /members lists exactly
// the learners given as learners, and every other member as a voter.
func learnerCheckTable(t *testing.T, c *testCluster, id uint64, learners ...uint64) {
	t.Helper()
	for _, m := range clusterMembers(t, c, id) {
		if m.IsLearner != slices.Contains(learners, m.ID) {
			t.Errorf("GET /members on member %d: member %d has isLearner %v, want learners %v", id, m.ID, m.IsLearner, learners)
		}
	}
}

// learnerIsVoter reports whether member id of c counts member l a voter:
// in its member table and in raft's configuration.
func learnerIsVoter(c *testCluster, id, l uint64) bool {
	s := c.server(id)
	m, ok := s.store.Table().Lookup(l)
	_, voter := s.raft.node.Status().Config.Voters.IDs()[l]
	return ok && !m.IsLearner && voter
}

// TestLearnerReceivesDataButDoesNotVote proves that learners added with
// --join --learner get every write, are learners in every member's table
// and in raft's configuration, and count towards no quorum: with two of
// three voters stopped, the last voter and two learners (three of five
// members) elect no leader and commit nothing, and the learners, which
// still name the stopped leader, answer /health with 503.
func TestLearnerReceivesDataButDoesNotVote(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	clusterPut(t, c, leader, "learn/before", "1")
	l1 := c.addLearner(leader)
	l2 := c.addLearner(c.follower())
	clusterPut(t, c, leader, "learn/after", "2")
	for _, l := range []uint64{l1, l2} {
		eventually(t, 10*time.Second, fmt.Sprintf("learner %d to apply both writes", l), func() bool {
			return clusterGet(t, c, l, "learn/before", levelStale).body == "1" && clusterGet(t, c, l, "learn/after", levelStale).body == "2"
		})
	}
	for _, id := range c.runningIDs() {
		eventually(t, 5*time.Second, fmt.Sprintf("member %d to list 5 members", id), func() bool { return len(clusterMembers(t, c, id)) == 5 })
		learnerCheckTable(t, c, id, l1, l2)
		cfg := c.server(id).raft.node.Status().Config
		if _, ok := cfg.Learners[l1]; !ok || len(cfg.Learners) != 2 || len(cfg.Voters.IDs()) != 3 {
			t.Errorf("member %d: raft's voters %v, learners %v; want 3 voters and learners %d and %d", id, cfg.Voters, cfg.Learners, l1, l2)
		}
	}
	// A consistent read and a write through a learner work: raft forwards them.
	clusterMustRead(t, c, l1, "learn/after", levelConsistent, "2")
	clusterPut(t, c, l2, "learn/through-learner", "3")

	last := clusterOther(t, c, leader, l1, l2)
	for _, id := range []uint64{1, 2, 3} {
		if id != last {
			if err := c.stop(id); err != nil {
				t.Fatalf("stop voter %d: %v", id, err)
			}
		}
	}
	// (A learner never campaigns, so it goes on naming the stopped leader:
	// only a voter times out and forgets it.)
	eventually(t, 10*time.Second, fmt.Sprintf("voter %d to know no leader", last), func() bool {
		return c.server(last).raft.Leader() == raft.None
	})
	// That no leader is elected can only be seen by waiting: for ten
	// election timeouts, none of the three may lead. Were the learners
	// voters, three of five would elect one within two.
	for deadline := time.Now().Add(10 * electionTicks * testTick); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, id := range []uint64{last, l1, l2} {
			if st := c.server(id).raft.node.Status(); st.RaftState == raft.StateLeader {
				t.Fatalf("member %d leads in term %d with two of three voters stopped: the learners voted", id, st.Term)
			}
		}
	}
	if r := do(t, http.MethodPut, c.url(last, "/keys/learn/no-quorum"), "x"); r.code != http.StatusServiceUnavailable {
		t.Fatalf("PUT with one voter of three and two learners up: %d %q, want 503", r.code, r.body)
	}
	// Still naming the stopped leader, a learner must not call itself ready.
	for _, l := range []uint64{l1, l2} {
		eventually(t, 10*time.Second, fmt.Sprintf("learner %d's /health to say it cannot reach the leader", l), func() bool {
			r := do(t, http.MethodGet, c.url(l, "/health"), "")
			return r.code == http.StatusServiceUnavailable && strings.Contains(r.body, "cannot reach the leader")
		})
	}
}

// TestLearnerPromote proves POST /members/{id}/promote: a follower
// redirects it to the leader; the leader refuses a learner that has stopped
// (409, not connected) and one that lags (409, entries behind), with the
// numbers, and changes nothing; once the learner is back and caught up it
// is promoted (200, isLearner false) on every member and in raft; a voter,
// a stranger, a bad id and a body are refused.
func TestLearnerPromote(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	follower := c.follower()
	l := c.addLearner(leader)
	path := fmt.Sprintf("/members/%d/promote", l)

	r := learnerPost(t, c, follower, path)
	if want := c.clientURL(leader) + path; r.code != http.StatusTemporaryRedirect || r.header.Get("Location") != want {
		t.Fatalf("POST %s on follower %d: %d Location %q, want 307 to %s", path, follower, r.code, r.header.Get("Location"), want)
	}

	eventually(t, 10*time.Second, fmt.Sprintf("learner %d's log to match the leader's", l), func() bool {
		st := c.server(leader).raft.node.Status()
		return st.Progress[l].Match == st.Progress[leader].Match && c.server(l).store.AppliedIndex() == st.Progress[leader].Match
	})
	if err := c.stop(l); err != nil {
		t.Fatalf("stop learner %d: %v", l, err)
	}
	eventually(t, 5*time.Second, fmt.Sprintf("leader %d to see learner %d disconnected", leader, l), func() bool {
		return !c.server(leader).raft.Connected(l)
	})
	r = learnerPost(t, c, leader, path)
	if r.code != http.StatusConflict || !strings.Contains(r.body, "learner not caught up") || !strings.Contains(r.body, "not connected") {
		t.Fatalf("POST %s with the learner stopped: %d %q, want 409 not caught up, not connected", path, r.code, r.body)
	}
	for i := range 50 {
		clusterPut(t, c, leader, fmt.Sprintf("learn/missed-%d", i), "x")
	}
	r = learnerPost(t, c, leader, path)
	if r.code != http.StatusConflict || !strings.Contains(r.body, "learner not caught up") || !strings.Contains(r.body, "entries behind") {
		t.Fatalf("POST %s with the learner 50 writes behind: %d %q, want 409 not caught up, entries behind", path, r.code, r.body)
	}
	clusterOneLineBody(t, "promotion refused", r)
	if r.header.Get("X-Raft-Index") != "" {
		t.Errorf("refused promotion carries X-Raft-Index %q", r.header.Get("X-Raft-Index"))
	}
	learnerCheckTable(t, c, leader, l)

	c.startWith(c.learnerConfig(l, leader, true))
	eventually(t, 10*time.Second, fmt.Sprintf("the leader to promote learner %d", l), func() bool {
		r = learnerPost(t, c, leader, path)
		return r.code != http.StatusConflict
	})
	var promoted membership.View
	if r.code != http.StatusOK || json.Unmarshal([]byte(r.body), &promoted) != nil || promoted.ID != l || promoted.IsLearner || r.header.Get("X-Raft-Index") == "" {
		t.Fatalf("POST %s once caught up: %d %q, want 200 with the member, a voter, and X-Raft-Index", path, r.code, r.body)
	}
	for _, id := range c.runningIDs() {
		eventually(t, 5*time.Second, fmt.Sprintf("member %d to list member %d as a voter", id, l), func() bool {
			return learnerIsVoter(c, id, l)
		})
		learnerCheckTable(t, c, id)
	}
	for _, tc := range []struct {
		path, body string
		code       int
	}{
		{path, "", http.StatusConflict},
		{fmt.Sprintf("/members/%d/promote", leader), "", http.StatusConflict},
		{"/members/99/promote", "", http.StatusNotFound},
		{"/members/x/promote", "", http.StatusBadRequest},
		{path, "{}", http.StatusBadRequest},
	} {
		r := do(t, http.MethodPost, c.url(leader, tc.path), tc.body)
		if r.code != tc.code {
			t.Errorf("POST %s %q: %d %q, want %d", tc.path, tc.body, r.code, r.body, tc.code)
		}
		clusterOneLineBody(t, "POST "+tc.path, r)
	}
	clusterPut(t, c, l, "learn/through-promoted", "y")
}

// TestLearnerMembershipChecks proves strict reconfiguration counts only
// voters: with one voter of three down and a learner up, a fourth voter is
// refused (were the learner counted, 3 healthy of 5 would pass), while a
// learner that never runs is added and removed; and that removing the
// leader through a learner hands leadership to a voter; and that a learner
// can be removed.
func TestLearnerMembershipChecks(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	l := c.addLearner(leader)
	down := clusterOther(t, c, leader, l)
	if err := c.stop(down); err != nil {
		t.Fatalf("stop member %d: %v", down, err)
	}
	eventually(t, 5*time.Second, fmt.Sprintf("leader %d to see member %d disconnected and learner %d connected", leader, down, l), func() bool {
		return !c.server(leader).raft.Connected(down) && c.server(leader).raft.Connected(l)
	})
	r := membershipAdd(t, c, leader, 10)
	if want := "adding member 10 would make 4 voters, 2 of them healthy, and a quorum is 3"; r.code != http.StatusConflict || !strings.Contains(r.body, want) {
		t.Fatalf("POST /members for a voter with one of three down: %d %q, want 409 saying %q", r.code, r.body, want)
	}
	body := fmt.Sprintf(`{"id":11,"peerURL":"http://%s","clientURL":"http://%s","learner":true}`, freeAddr(t), freeAddr(t))
	r = do(t, http.MethodPost, c.url(leader, "/members"), body)
	var added membership.Member
	if r.code != http.StatusCreated || json.Unmarshal([]byte(r.body), &added) != nil || !added.IsLearner {
		t.Fatalf("POST /members for a learner with one voter of three down: %d %q, want 201 with isLearner", r.code, r.body)
	}
	learnerCheckTable(t, c, leader, l, 11)
	if r := do(t, http.MethodDelete, c.url(leader, "/members/11"), ""); r.code != http.StatusNoContent {
		t.Fatalf("DELETE /members/11, a learner, with one voter of three down: %d %q, want 204", r.code, r.body)
	}
	c.start(down)
	leader = c.waitLeader()

	clusterRemove(t, c, l, leader)
	newLeader := c.waitLeader()
	if newLeader == l {
		t.Fatalf("learner %d leads", l)
	}
	learnerCheckTable(t, c, newLeader, l)
	clusterRemove(t, c, newLeader, l)
	learnerCheckTable(t, c, newLeader)
	if ms := clusterMembers(t, c, newLeader); len(ms) != 2 {
		t.Fatalf("GET /members after removing the leader and the learner: %+v, want 2 members", ms)
	}
	clusterPut(t, c, newLeader, "learn/after-removals", "ok")
}

// TestJoinPromotesRestartedLearner proves the promotion outlives a
// restart: a member that joined and is still a learner (here kept one by
// --learner while it was down), started again without --learner (its
// --join then ignored: its data dir has a WAL), catches up and asks to be
// promoted, and every member then counts it a voter; and a promoted
// member restarts with the same command.
func TestJoinPromotesRestartedLearner(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	l := c.addLearner(leader)
	if err := c.stop(l); err != nil {
		t.Fatalf("stop learner %d: %v", l, err)
	}
	for i := range 20 {
		clusterPut(t, c, leader, fmt.Sprintf("learn/while-down-%d", i), "x")
	}
	c.startWith(c.learnerConfig(l, leader, false))
	for _, id := range c.runningIDs() {
		eventually(t, 10*time.Second, fmt.Sprintf("member %d to count member %d a voter", id, l), func() bool {
			return learnerIsVoter(c, id, l)
		})
	}
	clusterMustRead(t, c, l, "learn/while-down-19", levelStale, "x")
	if err := c.stop(l); err != nil {
		t.Fatalf("stop member %d: %v", l, err)
	}
	c.startWith(c.learnerConfig(l, leader, false))
	c.waitLeader()
	clusterPut(t, c, l, "learn/after-restart", "y")
}

// TestHTTPMembersLearner proves, on a lone member, that adding a learner
// that never runs leaves the quorum alone (writes go on; a voter would
// have stopped them, see TestHTTPMembers), that an Idempotency-Key on
// POST /members replays the learner's answer and tells a learner from a
// voter in its fingerprint, that the only voter cannot be removed though a
// learner remains, that a learner that never ran cannot be promoted, and
// that a learner can be removed.
func TestHTTPMembersLearner(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	peer, client := "http://"+freeAddr(t), "http://"+freeAddr(t)
	learnerBody := fmt.Sprintf(`{"id":2,"peerURL":%q,"clientURL":%q,"learner":true}`, peer, client)
	voterBody := fmt.Sprintf(`{"id":2,"peerURL":%q,"clientURL":%q}`, peer, client)
	idem := []string{"Idempotency-Key", "add-learner-2"}

	first := versionsReq(h, "POST", "/members", learnerBody, idem...)
	var added membership.Member
	if first.Code != http.StatusCreated || json.Unmarshal(first.Body.Bytes(), &added) != nil || !added.IsLearner || added.ID != 2 {
		t.Fatalf("POST /members for a learner: %d %q, want 201 with isLearner", first.Code, first.Body.String())
	}
	if cfg := c.server(1).raft.node.Status().Config; len(cfg.Learners) != 1 || len(cfg.Voters.IDs()) != 1 {
		t.Errorf("raft's configuration after adding a learner: voters %v, learners %v", cfg.Voters, cfg.Learners)
	}
	if rec := versionsReq(h, "PUT", "/keys/k", "v"); rec.Code != http.StatusCreated {
		t.Fatalf("PUT with a learner that never ran: %d %q, want 201", rec.Code, rec.Body.String())
	}
	retry := versionsReq(h, "POST", "/members", learnerBody, idem...)
	if retry.Code != http.StatusCreated || retry.Header().Get("Idempotent-Replayed") != "true" || retry.Body.String() != first.Body.String() {
		t.Errorf("retried POST /members: %d %q replayed %q, want the first answer replayed", retry.Code, retry.Body.String(), retry.Header().Get("Idempotent-Replayed"))
	}
	if rec := versionsReq(h, "POST", "/members", voterBody, idem...); rec.Code != http.StatusUnprocessableEntity {
		t.Errorf("POST /members for a voter under the learner's Idempotency-Key: %d %q, want 422", rec.Code, rec.Body.String())
	}
	members := httpTestGetMembers(t, h)
	if len(members) != 2 || members[0].IsLearner || !members[1].IsLearner {
		t.Errorf("GET /members: %+v, want voter 1 and learner 2", members)
	}
	for _, tc := range []struct {
		method, target string
		code           int
		says           string
	}{
		{"DELETE", "/members/1", http.StatusConflict, "only voter"},
		{"POST", "/members/2/promote", http.StatusConflict, "learner not caught up"},
		{"DELETE", "/members/2", http.StatusNoContent, ""},
		{"PUT", "/keys/k", http.StatusNoContent, ""},
	} {
		rec := versionsReq(h, tc.method, tc.target, "")
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.says) {
			t.Errorf("%s %s: %d %q, want %d saying %q", tc.method, tc.target, rec.Code, rec.Body.String(), tc.code, tc.says)
		}
	}
	if got := httpTestGetMembers(t, h); len(got) != 1 {
		t.Errorf("GET /members after removing the learner: %+v", got)
	}
}
