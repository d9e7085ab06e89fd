package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// e2eLogLine is one line of a member's log as newLogger writes it:
// time, level, caller, message and fields, separated by tabs. A line
// written otherwise (main's one-line exit reason) has only its text.
type e2eLogLine struct {
	level, caller, msg, fields string
	text                       string
}

// e2eLogLines reads p's log.
func e2eLogLines(t *testing.T, p *e2eProc) []e2eLogLine {
	t.Helper()
	b, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	var lines []e2eLogLine
	for text := range strings.SplitSeq(strings.TrimRight(string(b), "\n"), "\n") {
		l := e2eLogLine{text: text}
		if parts := strings.SplitN(text, "\t", 5); len(parts) >= 4 {
			l.level, l.caller, l.msg = parts[1], parts[2], parts[3]
			if len(parts) == 5 {
				l.fields = parts[4]
			}
		}
		lines = append(lines, l)
	}
	return lines
}

// atLeastWarn reports whether the line is a warning or worse.
func (l e2eLogLine) atLeastWarn() bool {
	switch l.level {
	case "warn", "error", "dpanic", "panic", "fatal":
		return true
	}
	return false
}

// fromRaft reports whether raft's own package logged the line: zap names
// it by its module directory, v3@<version>, where etcd's packages have a
// directory of their own and raftkv's is the checkout's.
func (l e2eLogLine) fromRaft() bool { return strings.HasPrefix(l.caller, "v3@") }

// e2eMaxStartLines bounds what a member logs at info from its start to
// having advertised its client URL. It logs about ten lines: starting, the
// initial members, the first snapshot, each peer reachable, serving, the
// leader. Before raft's and rafthttp's narration went to debug it was
// about fifty.
const e2eMaxStartLines = 16

// TestE2ELogs checks, on real processes at the default log level, that a
// member's log reads as an operator needs it: a start is a dozen lines,
// none of them raft's or rafthttp's internals; a follower stopped with
// SIGTERM logs no warning, and each peer one, that it became unreachable;
// and a member restarted with its data dir wiped exits with status 1 and
// one line that says what happened and what to do, not a goroutine dump.
func TestE2ELogs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	c := newE2ECluster(t, e2eBuild(t))
	for range 3 {
		c.allocate()
	}
	procs := make(map[uint64]*e2eProc)
	for id := uint64(1); id <= 3; id++ {
		procs[id] = c.start(id, fmt.Sprintf("raftkv%d", id), c.args(id, 3)...)
	}
	var leader uint64
	c.eventually(20*time.Second, "all three members to follow one leader and advertise their client URLs", func() bool {
		leader = 0
		for id := uint64(1); id <= 3; id++ {
			st, err := e2eTry(e2eClient, "GET", c.url(id, "/status"), "")
			if err != nil || st.code != http.StatusOK {
				return false
			}
			advertised := false
			for _, l := range e2eLogLines(t, procs[id]) {
				advertised = advertised || l.msg == "advertised client URL"
			}
			var s statusView
			if !advertised || json.Unmarshal([]byte(st.body), &s) != nil || s.Leader == 0 || (leader != 0 && s.Leader != leader) {
				return false
			}
			leader = s.Leader
		}
		return true
	})
	for id := uint64(1); id <= 3; id++ {
		lines := e2eLogLines(t, procs[id])
		if len(lines) > e2eMaxStartLines {
			t.Errorf("member %d logged %d lines starting, want at most %d:\n%s", id, len(lines), e2eMaxStartLines, e2eTail(procs[id].log, 100))
		}
		for _, l := range lines {
			if l.fromRaft() || (strings.HasPrefix(l.caller, "rafthttp/") && l.msg != "peer became active") || l.atLeastWarn() {
				t.Errorf("member %d starting: %s", id, l.text)
			}
		}
	}

	for i := range 20 {
		c.expect("PUT", leader, fmt.Sprintf("/keys/k%d", i), "v", http.StatusCreated, "")
	}
	stopped := uint64(2)
	if leader == 2 {
		stopped = 3
	}
	var peers []uint64
	for id := uint64(1); id <= 3; id++ {
		if id != stopped {
			peers = append(peers, id)
		}
	}
	before := make(map[uint64]int)
	for _, id := range peers {
		before[id] = len(e2eLogLines(t, procs[id]))
	}

	// A clean stop: nothing on the stopped member reads like a fault, and
	// each peer says once that it became unreachable.
	p := c.expectExit(stopped)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	c.waitExit(p, 10*time.Second, "after SIGTERM")
	for _, l := range e2eLogLines(t, p) {
		if l.atLeastWarn() {
			t.Errorf("member %d stopping on SIGTERM: %s", stopped, l.text)
		}
	}
	inactive := func(id uint64) int {
		n := 0
		for _, l := range e2eLogLines(t, procs[id])[before[id]:] {
			if l.msg == "peer became inactive (message send to peer failed)" && strings.Contains(l.fields, fmt.Sprintf(`"peer-id": %d`, stopped)) {
				n++
			}
		}
		return n
	}
	for _, id := range peers {
		c.eventually(10*time.Second, fmt.Sprintf("member %d to log that member %d became unreachable", id, stopped), func() bool { return inactive(id) > 0 })
	}

	// The stopped member's data dir is lost, and it is started again as
	// it was: it must stop in one line, without a goroutine dump.
	if err := os.RemoveAll(filepath.Join(c.dir, fmt.Sprintf("raftkv-%d", stopped))); err != nil {
		t.Fatal(err)
	}
	c.start(stopped, fmt.Sprintf("raftkv%d-wiped", stopped), c.args(stopped, 3)...)
	wiped := c.expectExit(stopped)
	select {
	case <-wiped.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("member %d with a wiped data dir still runs after 10s", stopped)
	}
	var exit *exec.ExitError
	if !errors.As(wiped.err, &exit) || exit.ExitCode() != 1 {
		t.Errorf("member %d with a wiped data dir: %s, want exit status 1", stopped, wiped.exitStatus())
	}
	lines := e2eLogLines(t, wiped)
	last := lines[len(lines)-1].text
	// The bootstrap check refuses it before raft can find its log behind
	// (TestRaftLoggerLogBehind has the line raft's panic becomes then).
	for _, want := range []string{"member already bootstrapped", "its log is lost", fmt.Sprintf("/members/%d", stopped), "--join"} {
		if !strings.Contains(last, want) {
			t.Errorf("last line of member %d with a wiped data dir does not say %q: %s", stopped, want, last)
		}
	}
	for _, l := range lines {
		if strings.Contains(l.text, "goroutine") {
			t.Errorf("member %d with a wiped data dir: %s", stopped, l.text)
		}
	}

	// On the peers, all of it cost one warning per departure and nothing
	// worse: the member stopped, then the wiped one came and went.
	for _, id := range peers {
		for _, l := range e2eLogLines(t, procs[id])[before[id]:] {
			if l.atLeastWarn() && l.msg != "peer became inactive (message send to peer failed)" {
				t.Errorf("member %d: %s", id, l.text)
			}
		}
		if n := inactive(id); n > 2 {
			t.Errorf("member %d logged %d times that member %d became unreachable, want at most 2", id, n, stopped)
		}
	}
}
