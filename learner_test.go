package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// proposeConfChange runs call, commits the conf change it proposed at the
// next index, and returns the call's error, the conf change's type, and
// whether the kvstore took it (which decides whether raft applies it).
func (h *kvTest) proposeConfChange(call func(context.Context) (uint64, error)) (raftpb.ConfChangeType, bool, error) {
	h.t.Helper()
	resC := h.start(call)
	e := h.nextProposal(h.s.appliedIndex.Load() + 1)
	var cc raftpb.ConfChange
	if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
		h.t.Fatalf("not a conf change: %v", err)
	}
	b := &applyBatch{entries: []*raftpb.Entry{e}, applied: make(chan struct{})}
	h.send(b)
	kvWait(h.t, b.applied, "the conf change to apply")
	return cc.GetType(), b.confChangeTaken, kvRecv(h.t, resC, "the proposer to return").err
}

// promote is a proposing call for promoteMember, as the handler makes it.
func (h *kvTest) promote(id uint64) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		o, err := h.s.promoteMember(ctx, id)
		return o.index, err
	}
}

// TestKVStoreLearners proves the member table's side of learners: an add
// with IsLearner proposes AddLearnerNode and records a learner; a promotion
// makes it a voter, and is refused, not taken (so raft never applies it),
// for a voter or a stranger; an add never turns an existing learner into a
// voter, or a voter into a learner (raft would demote it); a learner can be
// removed.
func TestKVStoreLearners(t *testing.T) {
	h := newKVTest(t)
	m1 := member{ID: 1, PeerURLs: []string{"http://p1"}}
	m4 := member{ID: 4, PeerURLs: []string{"http://p4"}, ClientURLs: []string{"http://c4"}, IsLearner: true}
	m4Voter := m4
	m4Voter.IsLearner = false
	steps := []struct {
		name        string
		call        func(context.Context) (uint64, error)
		wantErr     error
		wantType    raftpb.ConfChangeType
		wantMembers []member
	}{
		{"add voter 1", h.addMember(m1), nil, raftpb.ConfChangeAddNode, []member{m1}},
		{"add learner 4", h.addMember(m4), nil, raftpb.ConfChangeAddLearnerNode, []member{m1, m4}},
		{"add learner 4 again", h.addMember(m4), ErrMemberExists, raftpb.ConfChangeAddLearnerNode, []member{m1, m4}},
		{"add learner 4 as a voter", h.addMember(m4Voter), ErrMemberExists, raftpb.ConfChangeAddNode, []member{m1, m4}},
		{"add voter 1 as a learner", h.addMember(member{ID: 1, PeerURLs: m1.PeerURLs, IsLearner: true}), ErrMemberExists, raftpb.ConfChangeAddLearnerNode, []member{m1, m4}},
		{"promote voter 1", h.promote(1), ErrNotLearner, raftpb.ConfChangeAddNode, []member{m1, m4}},
		{"promote stranger 9", h.promote(9), ErrMemberNotFound, raftpb.ConfChangeAddNode, []member{m1, m4}},
		{"promote learner 4", h.promote(4), nil, raftpb.ConfChangeAddNode, []member{m1, m4Voter}},
		{"promote 4 again", h.promote(4), ErrNotLearner, raftpb.ConfChangeAddNode, []member{m1, m4Voter}},
		{"add learner 5", h.addMember(member{ID: 5, PeerURLs: []string{"http://p5"}, IsLearner: true}), nil, raftpb.ConfChangeAddLearnerNode, nil},
		{"remove learner 5", h.removeMember(5), nil, raftpb.ConfChangeRemoveNode, []member{m1, m4Voter}},
	}
	for _, step := range steps {
		typ, taken, err := h.proposeConfChange(step.call)
		if !errors.Is(err, step.wantErr) {
			t.Errorf("%s: error = %v, want %v", step.name, err, step.wantErr)
		}
		if typ != step.wantType {
			t.Errorf("%s: proposed %v, want %v", step.name, typ, step.wantType)
		}
		if taken != (step.wantErr == nil) {
			t.Errorf("%s: taken = %v with error %v: a refused change must not reach raft, a taken one must", step.name, taken, err)
		}
		if step.wantMembers != nil {
			h.checkMembers(step.wantMembers...)
		}
	}
	if !h.s.isIDRemoved(5) {
		t.Errorf("removed learner 5 is not remembered as removed")
	}
	// The learner flag survives a snapshot, as every member must agree on it.
	m6 := member{ID: 6, PeerURLs: []string{"http://p6"}, IsLearner: true}
	if _, _, err := h.proposeConfChange(h.addMember(m6)); err != nil {
		t.Fatalf("add learner 6: %v", err)
	}
	h.checkMembers(m1, m4Voter, m6)
	data := h.s.snapshot()
	other := newKVTest(t)
	other.commit(kvSnapshot(h.s.appliedIndex.Load(), data))
	other.checkMembers(m1, m4Voter, m6)
}

// TestLearnerLag proves the leader's rule for a learner's log (etcd's
// isLearnerReady, and a bound on the entries behind): within 1000 entries
// and 90% of the leader's it may be promoted, otherwise not.
func TestLearnerLag(t *testing.T) {
	for _, tc := range []struct {
		match, leaderMatch uint64
		ready              bool
	}{
		{0, 0, true},
		{10, 10, true},
		{9, 10, true},
		{8, 10, false}, // 80%
		{0, 10, false},
		{1_000_000, 1_001_000, true},
		{1_000_000, 1_001_001, false}, // 99.9%, but 1001 behind
		{12, 10, true},                // ahead of what the leader's status showed
	} {
		err := checkLearnerLag(4, tc.match, tc.leaderMatch)
		if (err == nil) != tc.ready || (err != nil && !errors.Is(err, ErrLearnerNotReady)) {
			t.Errorf("checkLearnerLag(match %d, leader %d) = %v, want ready %v", tc.match, tc.leaderMatch, err, tc.ready)
		}
	}
}

// learnerConfig is the config of learner id, which joins through member
// via and stays a learner (--learner) unless stay is false.
func (c *testCluster) learnerConfig(id, via uint64, stay bool) config {
	cfg := c.config(id, c.clientURL(via))
	cfg.stayLearner = stay
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
		cfg := c.server(id).raft.status().Config
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
		return c.server(last).raft.leaderID() == raft.None
	})
	// That no leader is elected can only be seen by waiting: for ten
	// election timeouts, none of the three may lead. Were the learners
	// voters, three of five would elect one within two.
	for deadline := time.Now().Add(10 * electionTicks * testTick); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, id := range []uint64{last, l1, l2} {
			if st := c.server(id).raft.status(); st.RaftState == raft.StateLeader {
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
		st := c.server(leader).raft.status()
		return st.Progress[l].Match == st.Progress[leader].Match && c.server(l).store.appliedIndex.Load() == st.Progress[leader].Match
	})
	if err := c.stop(l); err != nil {
		t.Fatalf("stop learner %d: %v", l, err)
	}
	eventually(t, 5*time.Second, fmt.Sprintf("leader %d to see learner %d disconnected", leader, l), func() bool {
		return !c.server(leader).raft.peerConnected(l)
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
	var promoted memberView
	if r.code != http.StatusOK || json.Unmarshal([]byte(r.body), &promoted) != nil || promoted.ID != l || promoted.IsLearner || r.header.Get("X-Raft-Index") == "" {
		t.Fatalf("POST %s once caught up: %d %q, want 200 with the member, a voter, and X-Raft-Index", path, r.code, r.body)
	}
	for _, id := range c.runningIDs() {
		eventually(t, 5*time.Second, fmt.Sprintf("member %d to list member %d as a voter", id, l), func() bool {
			m, ok := c.server(id).store.lookupMember(l)
			_, voter := c.server(id).raft.status().Config.Voters.IDs()[l]
			return ok && !m.IsLearner && voter
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
		return !c.server(leader).raft.peerConnected(down) && c.server(leader).raft.peerConnected(l)
	})
	r := membershipAdd(t, c, leader, 10)
	if want := "adding member 10 would make 4 voters, 2 of them healthy, and a quorum is 3"; r.code != http.StatusConflict || !strings.Contains(r.body, want) {
		t.Fatalf("POST /members for a voter with one of three down: %d %q, want 409 saying %q", r.code, r.body, want)
	}
	body := fmt.Sprintf(`{"id":11,"peerURL":"http://%s","clientURL":"http://%s","learner":true}`, freeAddr(t), freeAddr(t))
	r = do(t, http.MethodPost, c.url(leader, "/members"), body)
	var added member
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
			m, ok := c.server(id).store.lookupMember(l)
			_, voter := c.server(id).raft.status().Config.Voters.IDs()[l]
			return ok && !m.IsLearner && voter
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
	var added member
	if first.Code != http.StatusCreated || json.Unmarshal(first.Body.Bytes(), &added) != nil || !added.IsLearner || added.ID != 2 {
		t.Fatalf("POST /members for a learner: %d %q, want 201 with isLearner", first.Code, first.Body.String())
	}
	if cfg := c.server(1).raft.status().Config; len(cfg.Learners) != 1 || len(cfg.Voters.IDs()) != 1 {
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
