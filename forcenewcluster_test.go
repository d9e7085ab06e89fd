package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// e2eMemberIDs is the ids GET /members on member id lists, as "[1 4 5]".
func e2eMemberIDs(c *e2eCluster, id uint64) string {
	c.t.Helper()
	var ids []uint64
	for _, m := range c.members(id) {
		ids = append(ids, m.ID)
	}
	return fmt.Sprint(ids)
}

// e2eRefusedStart starts member id with args, which must make it exit
// non-zero within a few seconds, and returns its last log line.
func e2eRefusedStart(c *e2eCluster, id uint64, name string, args ...string) string {
	c.t.Helper()
	p := c.start(id, name, args...)
	c.expectExit(id)
	select {
	case <-p.done:
	case <-time.After(min(15*time.Second, time.Until(c.deadline))):
		c.t.Fatalf("%s (%q) still runs; want it refused", name, args)
	}
	if p.err == nil {
		c.t.Errorf("%s (%q) exited 0; want it refused", name, args)
	}
	return e2eTail(p.log, 1)
}

// TestForceNewCluster proves the README's disaster recovery: every member
// of a three-member cluster is killed at once and two of them lose their
// data dirs for good; the survivor restarts alone with --force-new-cluster
// and serves every write the cluster acknowledged (the last one included,
// though its WAL recorded a commit index short of it: the SIGKILL came
// right after the answer), as the only member; it takes writes; two new
// members join it with --join and serve the same data; and it restarts
// later without the flag, as a member of the grown cluster. The flag is
// refused with --join and on a data dir without a WAL.
func TestForceNewCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	bin := e2eBuild(t)
	start := time.Now()
	step := func(what string) { t.Logf("%s: %s", time.Since(start).Round(time.Millisecond), what) }
	c := newE2ECluster(t, bin)
	c.startThree()
	e2eWaitHealthy(c, 1, 2, 3)
	want := make(map[string]string)
	for i := range 20 {
		key, value := fmt.Sprintf("k%02d", i), fmt.Sprintf("v%d", i)
		c.expect("PUT", 1, "/keys/"+key, value, http.StatusCreated, "")
		want[key] = value
	}
	step("three members took 20 writes")
	// Kill the survivor the moment its last write is answered, so that its
	// WAL's commit index has not caught up; then the others, for good.
	for _, id := range []uint64{1, 2, 3} {
		p := c.expectExit(id)
		p.cmd.Process.Kill()
		<-p.done
	}
	for _, id := range []uint64{2, 3} {
		if err := os.RemoveAll(filepath.Join(c.dir, fmt.Sprintf("raftkv-%d", id))); err != nil {
			t.Fatal(err)
		}
	}

	// Refused: with --join, and where there is no data to force from.
	if log := e2eRefusedStart(c, 2, "forced2", append(c.args(2, 3), "--force-new-cluster")...); !strings.Contains(log, "has no WAL") {
		t.Errorf("--force-new-cluster on an empty data dir: %q; want it refused as having no WAL", log)
	}
	if log := e2eRefusedStart(c, 2, "forced2-join", append(c.args(2, 3), "--force-new-cluster", "--join", c.clients[0])...); !strings.Contains(log, "cannot --join") {
		t.Errorf("--force-new-cluster with --join: %q; want it refused", log)
	}

	step("refused twice")
	c.start(1, "forced1", append(c.args(1, 3), "--force-new-cluster")...)
	e2eWaitHealthy(c, 1)
	if got := e2eMemberIDs(c, 1); got != "[1]" {
		t.Errorf("forced member lists members %s, want [1]", got)
	}
	for key, value := range want {
		c.expect("GET", 1, "/keys/"+key+"?level=consistent", "", http.StatusOK, value)
	}
	c.expect("PUT", 1, "/keys/alone", "yes", http.StatusCreated, "")
	step("forced member serves alone")
	want["alone"] = "yes"

	// Grow again: two new members (ids 2 and 3 were removed, and cannot
	// come back), each joining through a member already in.
	for _, via := range []uint64{1, 4} {
		id := c.allocate()
		c.start(id, fmt.Sprintf("raftkv%d", id), append(c.args(id, int(id)), "--join", c.clients[via-1])...)
		e2eWaitHealthy(c, id)
		// --join adds a learner, promoted once it has caught up: only then
		// does it count towards the quorum the rest of the test relies on.
		c.eventually(10*time.Second, fmt.Sprintf("member %d to be promoted", id), func() bool {
			ms := c.members(via)
			i := slices.IndexFunc(ms, func(m memberView) bool { return m.ID == id })
			return i >= 0 && !ms[i].IsLearner
		})
		step(fmt.Sprintf("member %d joined", id))
	}
	for _, id := range []uint64{1, 4, 5} {
		c.eventually(10*time.Second, fmt.Sprintf("member %d to list members [1 4 5]", id), func() bool { return e2eMemberIDs(c, id) == "[1 4 5]" })
		for key, value := range want {
			c.expect("GET", id, "/keys/"+key+"?level=consistent", "", http.StatusOK, value)
		}
	}
	c.expect("PUT", 5, "/keys/grown", "again", http.StatusCreated, "")
	step("grown cluster serves the data")

	// The forced member restarts without the flag, in the grown cluster.
	p := c.expectExit(1)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	c.waitExit(p, 10*time.Second, "after SIGTERM")
	c.start(1, "restarted1", c.args(1, 3)...)
	e2eWaitHealthy(c, 1)
	c.expect("GET", 1, "/keys/grown?level=consistent", "", http.StatusOK, "again")
	step("restarted without the flag")
	if got := e2eMemberIDs(c, 1); got != "[1 4 5]" {
		t.Errorf("restarted member lists members %s, want [1 4 5]", got)
	}

	// Forcing while members in --cluster run is refused.
	p = c.expectExit(1)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	c.waitExit(p, 10*time.Second, "after SIGTERM")
	if log := e2eRefusedStart(c, 1, "forced1-again", append(c.args(1, 5), "--force-new-cluster")...); !strings.Contains(log, "answers at") {
		t.Errorf("--force-new-cluster with members 4 and 5 running: %q; want it refused", log)
	}
	c.expect("GET", 4, "/keys/grown?level=consistent", "", http.StatusOK, "again")
	step("forcing again while members run is refused")
}

// TestConfiguredIDs proves that the members --force-new-cluster removes
// are those of the configuration the log ends with: the snapshot's voters
// and learners, then every conf change after it, in either raft format.
func TestConfiguredIDs(t *testing.T) {
	v2 := &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{
		{Type: raftpb.ConfChangeAddLearnerNode.Enum(), NodeId: new(uint64(7))},
		{Type: raftpb.ConfChangeRemoveNode.Enum(), NodeId: new(uint64(2))},
	}}
	v2Data, err := proto.Marshal(v2)
	if err != nil {
		t.Fatal(err)
	}
	promote, err := json.Marshal(addMemberContext{member: member{ID: 4}, Promote: true})
	if err != nil {
		t.Fatal(err)
	}
	entries := []*raftpb.Entry{
		kvEntry(10, encodePut(1, "k", []byte("v"))),
		kvConfEntry(t, 11, &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(uint64(5))}),
		kvConfEntry(t, 12, &raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode.Enum(), NodeId: new(uint64(3))}),
		{Index: new(uint64(13)), Term: new(uint64(1)), Type: raftpb.EntryConfChangeV2.Enum(), Data: v2Data},
		kvConfEntry(t, 14, &raftpb.ConfChange{Type: raftpb.ConfChangeAddLearnerNode.Enum(), NodeId: new(uint64(8))}),
		kvConfEntry(t, 15, &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(uint64(4)), Context: promote}),
		// Refused by the kvstore, so by raft: no promotion without Promote,
		// no demotion of a voter.
		kvConfEntry(t, 16, &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(uint64(8))}),
		kvConfEntry(t, 17, &raftpb.ConfChange{Type: raftpb.ConfChangeAddLearnerNode.Enum(), NodeId: new(uint64(1))}),
	}
	ids, err := configuredIDs(&raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}, entries)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]bool{1: false, 4: false, 5: false, 7: true, 8: true}
	if !maps.Equal(ids, want) {
		t.Errorf("configuredIDs = %v, want %v (id: is a learner)", ids, want)
	}
}

// TestForceNewClusterRefusesLearner proves --force-new-cluster refuses a
// member that is a learner in the configuration its log ends with: alone
// it would be a cluster with no voter.
func TestForceNewClusterRefusesLearner(t *testing.T) {
	rc := &raftNode{id: 4}
	_, _, err := rc.forceNewCluster(&raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}, 10, &raftpb.HardState{}, nil)
	if !errors.Is(err, ErrCannotForce) || !strings.Contains(err.Error(), "learner") {
		t.Fatalf("forceNewCluster on a learner = %v, want ErrCannotForce naming it a learner", err)
	}
}
