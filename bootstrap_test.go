package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
)

// The bootstrap checks (bootstrap.go) against real processes: a three-member
// cluster, and processes that must not join it as they are.

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
	members []memberView
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
		impostor := bootstrapWithFlag(c.args(2, 3), "--port", strings.TrimPrefix(c.unusedURL(), "http://127.0.0.1:"))
		impostor = bootstrapWithFlag(impostor, "--listen-peer-url", c.unusedURL())
		want := []string{"member already running", "connected to member 2 right now", "another process is member 2"}

		fresh := bootstrapWithFlag(impostor, "--data-dir", filepath.Join(c.dir, "impostor-fresh"))
		bootstrapRefused(c, "impostor-fresh", fresh, want...)
		if hasWAL(filepath.Join(c.dir, "impostor-fresh")) {
			t.Errorf("the refused impostor left a WAL behind")
		}

		copied := filepath.Join(c.dir, "impostor-copy")
		bootstrapCopyDir(t, filepath.Join(c.dir, "raftkv-2"), copied)
		bootstrapRefused(c, "impostor-copy", bootstrapWithFlag(impostor, "--data-dir", copied), want...)

		// On member 2's own peer port, the port says it first.
		samePort := bootstrapWithFlag(fresh, "--listen-peer-url", c.peers[1])
		bootstrapRefused(c, "impostor-peer-port", samePort,
			"peer port in use", "something is already listening on "+strings.TrimPrefix(c.peers[1], "http://"), "probably member 2")
		unchanged(before)
	})

	run("DataDirLocked", func(t *testing.T) {
		before := bootstrapStateOf(c, 1, 2, 3)
		second := bootstrapWithFlag(c.args(2, 3), "--port", strings.TrimPrefix(c.unusedURL(), "http://127.0.0.1:"))
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
		if hasWAL(dataDir) {
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

// TestPeerAPIMembers proves GET /raftkv/members on the peer port answers
// the member table, with the members the answering one is connected to,
// and that the route is read-only.
func TestPeerAPIMembers(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitLeader()
	var got peerMembers
	eventually(t, 10*time.Second, "member 1 to be connected to members 2 and 3", func() bool {
		r := do(t, "GET", c.peerURLs[0]+peerMembersPath, "")
		if r.code != http.StatusOK || json.Unmarshal([]byte(r.body), &got) != nil {
			t.Fatalf("GET %s: %d %q", peerMembersPath, r.code, r.body)
		}
		return len(got.Members) == 3 && got.Members[1].Connected && got.Members[2].Connected
	})
	if got.From != 1 || got.Members[0].Connected {
		t.Errorf("answer %+v: want from 1, not connected to itself", got)
	}
	for i, m := range got.Members {
		if m.ID != uint64(i+1) || len(m.PeerURLs) != 1 || m.PeerURLs[0] != c.peerURLs[i] {
			t.Errorf("member %d in the answer: %+v", i+1, m)
		}
	}
	if r := do(t, "POST", c.peerURLs[0]+peerMembersPath, "{}"); r.code != http.StatusMethodNotAllowed {
		t.Errorf("POST %s: %d %q, want 405", peerMembersPath, r.code, r.body)
	}
	// rafthttp parses its version headers with semver.Must: a bad one is
	// refused before it gets there.
	for _, header := range []string{"X-Server-Version", "X-Min-Cluster-Version"} {
		req, _ := http.NewRequest("POST", c.peerURLs[0]+"/raft", strings.NewReader(""))
		req.Header.Set(header, "bogus")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("POST /raft with %s: bogus: %v", header, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), header) {
			t.Errorf("POST /raft with %s: bogus: %d %q, want 400 naming the header", header, resp.StatusCode, body)
		}
	}
}
