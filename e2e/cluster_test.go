package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"raftkv/datadir"
	"raftkv/membership"
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

// The bootstrap checks (package bootstrap) against real processes: a
// three-member cluster, and processes that must not join it as they are.

// bootstrapSlot is the e2eCluster.running key of a process that is to be
// refused; no member has it.
const bootstrapSlot = 1000

// bootstrapRefused starts raftkv with args and fails the test unless it
// exits within 15 s with status 1, prints no panic, and ends its output
// with its one error line, naming every want. It returns that line.
func bootstrapRefused(c *e2eCluster, name string, args []string, want ...string) string {
	c.t.Helper()
	p := c.start(bootstrapSlot, name, args...)
	c.expectExit(bootstrapSlot)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		c.t.Fatalf("%s still running after 15 s, want it refused", name)
	}
	var exitErr *exec.ExitError
	if !errors.As(p.err, &exitErr) || exitErr.ExitCode() != 1 {
		c.t.Fatalf("%s: %s, want exit status 1\n%s", name, p.exitStatus(), e2eTail(p.log, 20))
	}
	b, err := os.ReadFile(p.log)
	if err != nil {
		c.t.Fatal(err)
	}
	out := string(b)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	last := lines[len(lines)-1]
	errLines := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "raftkv: ") {
			errLines++
		}
	}
	if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") || errLines != 1 || !strings.HasPrefix(last, "raftkv: ") {
		c.t.Fatalf("%s: want one error line last and no panic, got:\n%s", name, e2eTail(p.log, 20))
	}
	c.t.Logf("%s: %s", name, last)
	for _, w := range want {
		if !strings.Contains(last, w) {
			c.t.Errorf("%s: %q does not name %q", name, last, w)
		}
	}
	return last
}

// bootstrapState is what a refused process must leave as it was: the
// member table, and every member's leader and term.
type bootstrapState struct {
	members []membership.View
	leaders []uint64
	terms   []uint64
}

// bootstrapStateOf reads the state of the running members ids.
func bootstrapStateOf(c *e2eCluster, ids ...uint64) bootstrapState {
	c.t.Helper()
	st := bootstrapState{members: c.members(ids[0])}
	for _, id := range ids {
		s := c.status(id)
		st.leaders = append(st.leaders, s.Leader)
		st.terms = append(st.terms, s.Term)
	}
	return st
}

// bootstrapCopyDir copies the data dir src to dst, as an operator might
// copy a running member's.
func bootstrapCopyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
}

// bootstrapWithFlag returns args with flag's value replaced, or the flag
// added.
func bootstrapWithFlag(args []string, flag, value string) []string {
	args = slices.Clone(args)
	if i := slices.Index(args, flag); i >= 0 {
		args[i+1] = value
		return args
	}
	return append(args, flag, value)
}

// TestBootstrap proves a member refuses, in one line with exit status 1,
// to start as a second process of a running member (with a fresh data
// dir, a copy of the live one's, or its taken peer port), on a data dir a
// running process holds, with its own peer URL changed, and with its data
// dir wiped; that the cluster notices none of it; and that a member killed
// and restarted at once is not taken for a second process.
func TestBootstrap(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	c := newE2ECluster(t, e2eBuild(t))
	c.startThree()
	// The helpers below report to c.t, the running subtest's.
	healthy := func(id uint64) {
		c.t.Helper()
		c.eventually(20*time.Second, fmt.Sprintf("member %d to answer GET /health with 200", id), func() bool {
			r, err := e2eTry(e2eClient, "GET", c.url(id, "/health"), "")
			return err == nil && r.code == http.StatusOK
		})
	}
	advertised := func() {
		c.t.Helper()
		c.eventually(10*time.Second, "every member to advertise its client URL", func() bool {
			for _, m := range c.members(1) {
				if len(m.ClientURLs) == 0 {
					return false
				}
			}
			return true
		})
	}
	for id := uint64(1); id <= 3; id++ {
		healthy(id)
	}
	advertised()
	c.expect("PUT", 2, "/keys/k", "still", http.StatusCreated, "")

	// unchanged fails unless the cluster is as it was and member 2 serves.
	unchanged := func(before bootstrapState) {
		c.t.Helper()
		if after := bootstrapStateOf(c, 1, 2, 3); !reflect.DeepEqual(after, before) {
			c.t.Errorf("cluster changed:\nbefore %+v\nafter  %+v", before, after)
		}
		c.expect("PUT", 2, "/keys/k", "still", http.StatusNoContent, "")
		c.expect("GET", 1, "/keys/k?level=consistent", "", http.StatusOK, "still")
	}
	// run runs one case as a subtest, on the one cluster; each leaves
	// members 1 and 3 running, so any of them can run alone (-run).
	run := func(name string, f func(t *testing.T)) {
		t.Run(name, func(sub *testing.T) {
			c.t = sub
			defer func() { c.t = t }()
			f(sub)
		})
	}

	run("MemberRunning", func(t *testing.T) {
		before := bootstrapStateOf(c, 1, 2, 3)
		// Member 2's command line on other ports, so that only the id clashes.
		impostor := bootstrapWithFlag(c.args(2, 3), "--port", urlPort(c.unusedURL()))
		impostor = bootstrapWithFlag(impostor, "--listen-peer-url", c.unusedURL())
		want := []string{"member already running", "connected to member 2 right now", "another process is member 2"}

		fresh := bootstrapWithFlag(impostor, "--data-dir", filepath.Join(c.dir, "impostor-fresh"))
		bootstrapRefused(c, "impostor-fresh", fresh, want...)
		if datadir.HasWAL(filepath.Join(c.dir, "impostor-fresh")) {
			t.Errorf("the refused impostor left a WAL behind")
		}

		copied := filepath.Join(c.dir, "impostor-copy")
		bootstrapCopyDir(t, filepath.Join(c.dir, "raftkv-2"), copied)
		bootstrapRefused(c, "impostor-copy", bootstrapWithFlag(impostor, "--data-dir", copied), want...)

		// On member 2's own peer port, the port says it first.
		samePort := bootstrapWithFlag(fresh, "--listen-peer-url", c.peers[1])
		bootstrapRefused(c, "impostor-peer-port", samePort,
			"peer port in use", "something is already listening on "+hostPort(c.peers[1]), "probably member 2")
		unchanged(before)
	})

	run("DataDirLocked", func(t *testing.T) {
		before := bootstrapStateOf(c, 1, 2, 3)
		second := bootstrapWithFlag(c.args(2, 3), "--port", urlPort(c.unusedURL()))
		second = bootstrapWithFlag(second, "--listen-peer-url", c.unusedURL())
		bootstrapRefused(c, "second-on-data-dir", second,
			"data dir in use", "another raftkv process is using data dir "+filepath.Join(c.dir, "raftkv-2"))
		unchanged(before)
	})

	run("KilledAndRestarted", func(t *testing.T) {
		p := c.expectExit(3)
		p.cmd.Process.Kill()
		<-p.done
		c.start(3, "raftkv3-after-kill", c.args(3, 3)...)
		healthy(3)
		c.eventuallyGet(3, "/keys/k?level=consistent", "still", 10*time.Second)
	})

	run("PeerURLChanged", func(t *testing.T) {
		p := c.expectExit(3)
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		c.waitExit(p, 10*time.Second, "after SIGTERM")
		moved := c.unusedURL()
		cluster := strings.Join([]string{c.peers[0], c.peers[1], moved}, ",")
		bootstrapRefused(c, "raftkv3-moved", bootstrapWithFlag(c.args(3, 3), "--cluster", cluster),
			"peer URL changed", "the cluster has member 3 at "+c.peers[2], "--cluster gives "+moved, "restart it with "+c.peers[2])
		// As the message says: with the old URL it starts.
		c.start(3, "raftkv3-back", c.args(3, 3)...)
		healthy(3)
		c.eventuallyGet(3, "/keys/k?level=consistent", "still", 10*time.Second)
	})

	run("WipedDataDir", func(t *testing.T) {
		p := c.expectExit(2)
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		c.waitExit(p, 10*time.Second, "after SIGTERM")
		dataDir := filepath.Join(c.dir, "raftkv-2")
		if err := os.RemoveAll(dataDir); err != nil {
			t.Fatal(err)
		}
		want := []string{"member already bootstrapped", "no WAL", "curl -X DELETE " + c.clients[0] + "/members/2", "--join " + c.clients[0]}
		bootstrapRefused(c, "raftkv2-wiped", c.args(2, 3), want...)
		if datadir.HasWAL(dataDir) {
			t.Fatalf("the refused member left a WAL in %s: a retry would take it for a restart", dataDir)
		}
		bootstrapRefused(c, "raftkv2-wiped-again", c.args(2, 3), want...)

		// The recovery the message names: remove it, add it back under a
		// new id. Member 2 may have led: wait for a leader that has applied
		// its first entry, before which raft turns a conf change away.
		c.eventually(10*time.Second, "member 1 to accept a write", func() bool {
			r, err := e2eTry(e2eClient, "PUT", c.url(1, "/keys/k"), "still")
			return err == nil && r.code == http.StatusNoContent
		})
		c.expect("DELETE", 1, "/members/2", "", http.StatusNoContent, "")
		id4 := c.allocate()
		c.start(id4, "raftkv4", append(c.args(id4, 4), "--join", c.clients[0])...)
		c.eventuallyGet(id4, "/keys/k?level=consistent", "still", 20*time.Second)
	})
}

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
			i := slices.IndexFunc(ms, func(m membership.View) bool { return m.ID == id })
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
