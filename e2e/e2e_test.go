// Package e2e is raftkv tested as its users run it, as processes: every
// test here runs the raftkv binary, built once by TestMain from the module
// root, as real processes on loopback ports, and talks to them over HTTP,
// as curl, a client library or an operator would. It holds the README
// flow (TestE2E), the start checks, restarts and restores, the fault
// tests with their nemesis and checkers (TestLinearizable with porcupine,
// TestExactlyOnceCounter, the watchers), the benchmarks, and the HTTP API
// fuzzer (FuzzHTTPAPI), which fuzzes one live process.
//
// `go test -short` skips everything that runs a process. RAFTKV_BIN runs a
// prebuilt binary instead of building one; RAFTKV_TLS=1 runs the members on
// TLS (tls_test.go).
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"raftkv/config"
	"raftkv/e2e/testpki"
	"raftkv/keyspace"
	"raftkv/membership"
)

// End-to-end: the README flow against real raftkv processes built from
// the module root, on ephemeral loopback ports, with the default 100ms
// raft tick.

// e2eBudget bounds the whole cluster flow; every wait is cut to fit in it.
const e2eBudget = 50 * time.Second

// e2eTransport opens a new connection per request, so that no request is
// sent on a connection to a process that has since been stopped.
var e2eTransport = &http.Transport{DisableKeepAlives: true}

// e2eClient shows redirects; e2eFollowClient follows them, as curl -L does.
var (
	e2eClient = &http.Client{
		Transport:     e2eTransport,
		Timeout:       8 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	e2eFollowClient = &http.Client{Transport: e2eTransport, Timeout: 8 * time.Second}
)

// e2eTry sends one request with client and reads the whole answer.
func e2eTry(client *http.Client, method, url, body string) (response, error) {
	return tryWithHeader(client, method, url, body, nil)
}

// response is what a test request got back.
type response struct {
	code   int
	body   string
	header http.Header
}

// tryWithHeader sends one request with client and header, and reads the
// whole answer.
func tryWithHeader(client *http.Client, method, url, body string, header http.Header) (response, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	maps.Copy(req.Header, header)
	resp, err := client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: read body: %w", method, url, err)
	}
	return response{code: resp.StatusCode, body: string(b), header: resp.Header}, nil
}

// eventually polls cond every 10ms until it holds, failing the test after timeout.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// statusView is the body of GET /status.
type statusView struct {
	ID            uint64 `json:"id"`
	ClusterID     string `json:"clusterID"` // hex, as etcd prints it
	Leader        uint64 `json:"leader"`
	Term          uint64 `json:"term"`
	RaftState     string `json:"raftState"`
	CommitIndex   uint64 `json:"commitIndex"`
	AppliedIndex  uint64 `json:"appliedIndex"`
	SnapshotIndex uint64 `json:"snapshotIndex"`
}

// The read levels of GET /keys/{key} and of a listing.
const (
	levelStale      = "stale"      // the member's applied state, however old
	levelDefault    = "default"    // the leader's applied state
	levelConsistent = "consistent" // linearizable, on any member, via ReadIndex
)

// maxListLimit is the largest page a listing gives (?limit).
const maxListLimit = 10000

// listingView is the body of a listing, GET /keys/{prefix}/.
type listingView struct {
	Index      uint64          `json:"index"`
	Entries    []keyspace.View `json:"entries"`
	More       bool            `json:"more"`
	Next       string          `json:"next,omitempty"`
	NextBase64 string          `json:"nextBase64,omitempty"`
}

// watchErrorView is the data of a watch stream's error event.
type watchErrorView struct {
	Error       string `json:"error"`
	ResumeAfter uint64 `json:"resumeAfter"`
}

// e2eProc is one raftkv process.
type e2eProc struct {
	name string
	args []string
	log  string // its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and been waited for
	err  error         // what Wait returned; set before done closes
}

// e2eCluster runs the raftkv processes of one test; every process it
// started is killed when the test ends, passed or failed.
type e2eCluster struct {
	t        testing.TB
	bin      string
	dir      string
	deadline time.Time
	peers    []string // peer URLs by id-1
	clients  []string // client URLs by id-1
	running  map[uint64]*e2eProc
	all      []*e2eProc
	pki      *testpki.PKI // the members' certificates when they run on TLS (e2eTLSEnv); nil on plain http
}

func newE2ECluster(t testing.TB, bin string) *e2eCluster {
	c := &e2eCluster{
		t:        t,
		bin:      bin,
		dir:      t.TempDir(),
		deadline: time.Now().Add(e2eBudget),
		running:  make(map[uint64]*e2eProc),
		pki:      e2eTLS(t),
	}
	t.Cleanup(func() {
		for _, p := range c.all {
			select {
			case <-p.done:
			default:
				p.cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			for _, p := range c.all {
				t.Logf("--- %s (%s): %s\n%s", p.name, strings.Join(p.args, " "), p.exitStatus(), e2eTail(p.log, 40))
			}
		}
	})
	return c
}

// allocate reserves loopback ports for one more member and returns its id.
func (c *e2eCluster) allocate() uint64 {
	c.peers = append(c.peers, c.unusedURL())
	c.clients = append(c.clients, c.unusedURL())
	return uint64(len(c.peers))
}

// unusedURL is a loopback URL on a free port that no member of c has been
// given yet: once freeAddr's listener closes, the kernel may hand the same
// port out again, and two members on one port cannot both start.
func (c *e2eCluster) unusedURL() string {
	for {
		u := c.scheme() + "://" + freeAddr(c.t)
		if !slices.Contains(c.peers, u) && !slices.Contains(c.clients, u) {
			return u
		}
	}
}

// args is the README command line of member id in a cluster of the first
// n allocated members.
func (c *e2eCluster) args(id uint64, n int) []string {
	client := c.clients[id-1]
	return append([]string{
		"--id", fmt.Sprint(id),
		"--cluster", strings.Join(c.peers[:n], ","),
		"--port", client[strings.LastIndex(client, ":")+1:],
		"--data-dir", filepath.Join(c.dir, fmt.Sprintf("raftkv-%d", id)),
	}, c.tlsArgs()...)
}

// startThree allocates members 1 to 3 and starts each with its README
// command line, as the Procfile does.
func (c *e2eCluster) startThree() {
	c.t.Helper()
	for range 3 {
		c.allocate()
	}
	for id := uint64(1); id <= 3; id++ {
		c.start(id, fmt.Sprintf("raftkv%d", id), c.args(id, 3)...)
	}
}

// start runs member id's process with args, logging to <name>.log.
func (c *e2eCluster) start(id uint64, name string, args ...string) *e2eProc {
	c.t.Helper()
	p := &e2eProc{name: name, args: args, log: filepath.Join(c.dir, name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close() // the process has its own copy
	p.cmd = exec.Command(c.bin, args...)
	p.cmd.Dir = c.dir
	p.cmd.Stdout, p.cmd.Stderr = f, f
	dieWithTest(p.cmd)
	if err := p.cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	c.all = append(c.all, p)
	c.running[id] = p
	return p
}

// exitStatus describes whether and how the process exited.
func (p *e2eProc) exitStatus() string {
	select {
	case <-p.done:
		if p.err == nil {
			return "exited 0"
		}
		return p.err.Error()
	default:
		return "running"
	}
}

// expectExit marks member id's process as one that is to exit by itself
// and returns it for waitExit.
func (c *e2eCluster) expectExit(id uint64) *e2eProc {
	p := c.running[id]
	delete(c.running, id)
	return p
}

// waitExit fails unless p exits with status 0 within timeout.
func (c *e2eCluster) waitExit(p *e2eProc, timeout time.Duration, why string) {
	c.t.Helper()
	select {
	case <-p.done:
		if p.err != nil {
			c.t.Fatalf("%s %s: %v, want exit status 0", p.name, why, p.err)
		}
	case <-time.After(min(timeout, time.Until(c.deadline))):
		c.t.Fatalf("%s did not exit within %s %s", p.name, timeout, why)
	}
}

// eventually is eventually, cut to the test's budget, and
// failing at once if a member that should run has exited.
func (c *e2eCluster) eventually(timeout time.Duration, what string, cond func() bool) {
	c.t.Helper()
	eventually(c.t, min(timeout, time.Until(c.deadline)), what, func() bool {
		for _, p := range c.running {
			select {
			case <-p.done:
				c.t.Fatalf("%s exited (%s) while waiting for %s", p.name, p.exitStatus(), what)
			default:
			}
		}
		return cond()
	})
}

// pids are the process ids of the running members, in no order.
func (c *e2eCluster) pids() []int {
	var pids []int
	for _, p := range c.running {
		pids = append(pids, p.cmd.Process.Pid)
	}
	return pids
}

// url is member id's client URL with path appended.
func (c *e2eCluster) url(id uint64, path string) string { return c.clients[id-1] + path }

// do sends one request to member id, failing the test on a transport error.
func (c *e2eCluster) do(method string, id uint64, path, body string) response {
	c.t.Helper()
	r, err := e2eTry(e2eClient, method, c.url(id, path), body)
	if err != nil {
		c.t.Fatalf("member %d: %v", id, err)
	}
	return r
}

// expect sends one request to member id and fails unless the answer has
// the code, and for a 200 the body, wanted.
func (c *e2eCluster) expect(method string, id uint64, path, body string, code int, want string) response {
	c.t.Helper()
	r := c.do(method, id, path, body)
	if r.code != code || (code == http.StatusOK && r.body != want) {
		c.t.Fatalf("%s %s on member %d: %d %q, want %d %q", method, path, id, r.code, r.body, code, want)
	}
	return r
}

// eventuallyGet polls GET path on member id until it answers 200 want.
func (c *e2eCluster) eventuallyGet(id uint64, path, want string, timeout time.Duration) {
	c.t.Helper()
	var last string
	defer func() {
		if c.t.Failed() {
			c.t.Logf("last answer from member %d to GET %s: %s", id, path, last)
		}
	}()
	c.eventually(timeout, fmt.Sprintf("member %d to answer GET %s with %q", id, path, want), func() bool {
		r, err := e2eTry(e2eClient, "GET", c.url(id, path), "")
		last = fmt.Sprintf("%d %q %v", r.code, r.body, err)
		return err == nil && r.code == http.StatusOK && r.body == want
	})
}

// members fetches GET /members from member id.
func (c *e2eCluster) members(id uint64) []membership.View {
	c.t.Helper()
	r := c.do("GET", id, "/members", "")
	if r.code != http.StatusOK {
		c.t.Fatalf("GET /members on member %d: %d %q, want 200", id, r.code, r.body)
	}
	var ms []membership.View
	if err := json.Unmarshal([]byte(r.body), &ms); err != nil {
		c.t.Fatalf("GET /members on member %d: %v in %q", id, err, r.body)
	}
	return ms
}

// status fetches GET /status from member id.
func (c *e2eCluster) status(id uint64) statusView {
	c.t.Helper()
	r := c.do("GET", id, "/status", "")
	if r.code != http.StatusOK {
		c.t.Fatalf("GET /status on member %d: %d %q, want 200", id, r.code, r.body)
	}
	var st statusView
	if err := json.Unmarshal([]byte(r.body), &st); err != nil {
		c.t.Fatalf("GET /status on member %d: %v in %q", id, err, r.body)
	}
	return st
}

// e2eTail is the last n lines of a file.
func e2eTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// e2eJoinSteps are the lines a member started with --join logs, in order,
// as it is added as a learner, catches up and is promoted.
var e2eJoinSteps = []string{"added to the cluster as a learner", "caught up with the leader", "promoted to a voter"}

// e2eCheckJoinLog waits until p's log has every step of a join, in order:
// the other members may count it a voter a moment before it logs so.
func (c *e2eCluster) e2eCheckJoinLog(p *e2eProc) {
	c.t.Helper()
	missing := ""
	defer func() {
		if c.t.Failed() {
			c.t.Logf("%s's log lacks %q (after the steps before it):\n%s", p.name, missing, e2eTail(p.log, 30))
		}
	}()
	c.eventually(10*time.Second, fmt.Sprintf("%s to log every step of its join", p.name), func() bool {
		b, err := os.ReadFile(p.log)
		if err != nil {
			c.t.Fatal(err)
		}
		log := string(b)
		for _, step := range e2eJoinSteps {
			i := strings.Index(log, step)
			if i < 0 {
				missing = step
				return false
			}
			log = log[i+len(step):]
		}
		return true
	})
}

// builtBinary is the raftkv binary TestMain built, shared by every test
// that runs real processes; TestMain removes it.
var builtBinary struct {
	dir  string // the temp dir it is in; "" unless this process built it
	path string
	err  error
}

// TestMain builds the raftkv binary once (unless binaryEnv names one, or
// -short skips every test that would run it), runs the tests, then
// removes the binary it built and the certificates the tests made, if any.
// It puts the binary's path in binaryEnv for the processes the tests start
// from this test binary (FuzzHTTPAPI's fuzzing workers, the benchmarks'
// HTTP ceiling), so that they do not build it again.
func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv(binaryEnv) != "" {
		builtBinary.path = os.Getenv(binaryEnv)
	} else if !testing.Short() {
		builtBinary.path, builtBinary.err = buildRaftkv()
		if builtBinary.err == nil {
			os.Setenv(binaryEnv, builtBinary.path)
		}
	}
	code := m.Run()
	if builtBinary.dir != "" {
		os.RemoveAll(builtBinary.dir)
	}
	if e2ePKI.dir != "" {
		os.RemoveAll(e2ePKI.dir)
	}
	os.Exit(code)
}

// buildRaftkv builds package raftkv, the module root, into a temp dir.
func buildRaftkv() (string, error) {
	dir, err := os.MkdirTemp("", "raftkv-test-bin-")
	if err != nil {
		return "", err
	}
	builtBinary.dir = dir
	path := filepath.Join(dir, "raftkv")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", path, "raftkv").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build raftkv: %v\n%s", err, out)
	}
	return path, nil
}

// binaryEnv names a prebuilt raftkv binary to run instead of building the
// module's: benchmarking an older build against the current one in the
// same session is the only comparison this shared, noisy machine allows.
const binaryEnv = "RAFTKV_BIN"

// e2eBuild returns the raftkv binary TestMain built, or the one binaryEnv
// names.
func e2eBuild(t testing.TB) string {
	t.Helper()
	if builtBinary.err != nil {
		t.Fatal(builtBinary.err)
	}
	if builtBinary.path == "" {
		t.Fatal("no raftkv binary: TestMain builds none under -short")
	}
	return builtBinary.path
}

// TestE2E proves the README flow on real processes: one-line flag errors, reads and writes, SIGTERM and restart, join, removal.
func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	bin := e2eBuild(t)
	t.Run("BadFlag", func(t *testing.T) { e2eBadFlag(t, bin) })
	t.Run("Cluster", func(t *testing.T) { e2eClusterFlow(t, bin) })
}

// e2eBadFlag runs the binary with bad command lines: each must exit
// non-zero at once with exactly one line on stderr; -h prints usage.
func e2eBadFlag(t *testing.T, bin string) {
	for _, args := range [][]string{
		{"--id", "0"},
		{"--no-such-flag"},
		{"--id", "1", "stray"},
		{"--join", "nope"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir = t.TempDir()
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitCode() <= 0 {
			t.Errorf("raftkv %q: %v, want a non-zero exit status", args, err)
		}
		line, ok := strings.CutSuffix(stderr.String(), "\n")
		if !ok || strings.TrimSpace(line) == "" || strings.Contains(line, "\n") || !strings.HasPrefix(line, "raftkv: ") {
			t.Errorf("raftkv %q: stderr %q, want exactly one line starting with \"raftkv: \"", args, stderr.String())
		}
		if stdout.Len() != 0 {
			t.Errorf("raftkv %q: stdout %q, want nothing", args, stdout.String())
		}
		if entries, _ := os.ReadDir(cmd.Dir); len(entries) != 0 {
			t.Errorf("raftkv %q left %d entries in its working dir", args, len(entries))
		}
	}

	var stdout bytes.Buffer
	cmd := exec.Command(bin, "-h")
	cmd.Stdout = &stdout
	if err := cmd.Run(); err != nil {
		t.Errorf("raftkv -h: %v, want exit status 0", err)
	}
	if !strings.Contains(stdout.String(), "-cluster") || !strings.Contains(stdout.String(), "-join") {
		t.Errorf("raftkv -h: stdout %q does not describe the flags", stdout.String())
	}
}

// e2eClusterFlow is the README walk-through on three, then four, members.
func e2eClusterFlow(t *testing.T, bin string) {
	start := time.Now()
	c := newE2ECluster(t, bin)
	c.startThree()
	for id := uint64(1); id <= 3; id++ {
		c.eventually(20*time.Second, fmt.Sprintf("member %d to answer GET /health with 200", id), func() bool {
			r, err := e2eTry(e2eClient, "GET", c.url(id, "/health"), "")
			return err == nil && r.code == http.StatusOK && r.body == "ok\n"
		})
	}

	t.Logf("%s: three members healthy", time.Since(start).Round(time.Millisecond))

	// Writes and the three read levels.
	r := c.expect("PUT", 1, "/keys/hello", "world", http.StatusCreated, "")
	if r.header.Get("X-Raft-Index") == "" {
		t.Errorf("PUT: no X-Raft-Index header")
	}
	for id := uint64(1); id <= 3; id++ {
		c.expect("GET", id, "/keys/hello?level=consistent", "", http.StatusOK, "world")
	}
	leader := c.status(1).Leader
	if leader < 1 || leader > 3 {
		t.Fatalf("member 1 reports leader %d", leader)
	}
	// A follower that is not member 1, which the fourth member joins through.
	follower := uint64(2)
	if leader == 2 {
		follower = 3
	}
	// Every member said ok to /health, so the leader's client URL is known:
	// a follower redirects at once.
	r = c.expect("GET", follower, "/keys/hello", "", http.StatusTemporaryRedirect, "")
	if loc, want := r.header.Get("Location"), c.url(leader, "/keys/hello"); loc != want {
		t.Errorf("GET on follower %d: Location %q, want %q", follower, loc, want)
	}
	if got, err := e2eTry(e2eClient, "GET", r.header.Get("Location"), ""); err != nil || got.code != http.StatusOK || got.body != "world" {
		t.Errorf("GET Location %q: %d %q %v, want 200 \"world\"", r.header.Get("Location"), got.code, got.body, err)
	}
	if got, err := e2eTry(e2eFollowClient, "GET", c.url(follower, "/keys/hello?level=default"), ""); err != nil || got.code != http.StatusOK || got.body != "world" {
		t.Errorf("GET on follower %d following redirects: %d %q %v, want 200 \"world\"", follower, got.code, got.body, err)
	}
	c.expect("GET", follower, "/keys/hello?level=stale", "", http.StatusOK, "world")
	c.expect("DELETE", follower, "/keys/hello", "", http.StatusNoContent, "")
	c.expect("DELETE", follower, "/keys/hello", "", http.StatusNotFound, "")
	for id := uint64(1); id <= 3; id++ {
		c.expect("GET", id, "/keys/hello?level=consistent", "", http.StatusNotFound, "")
	}

	// Every member shows the same three members, all advertised, one leading.
	for id := uint64(1); id <= 3; id++ {
		var got []membership.View
		c.eventually(10*time.Second, fmt.Sprintf("member %d to list 3 advertised members", id), func() bool {
			got = c.members(id)
			if len(got) != 3 {
				return false
			}
			for i, m := range got {
				if len(m.ClientURLs) == 0 {
					return false
				}
				if m.ID != uint64(i+1) || m.PeerURLs[0] != c.peers[i] || m.ClientURLs[0] != c.clients[i] {
					t.Fatalf("GET /members on member %d: %+v", id, got)
				}
			}
			return true
		})
		leaders := 0
		for _, m := range got {
			if m.IsLeader {
				leaders++
				if m.ID != leader {
					t.Errorf("GET /members on member %d: member %d leads, member 1 said %d", id, m.ID, leader)
				}
			}
		}
		if leaders != 1 {
			t.Errorf("GET /members on member %d: %d leaders in %+v", id, leaders, got)
		}
		st := c.status(id)
		wantState := "StateFollower"
		if id == leader {
			wantState = "StateLeader"
		}
		if st.ID != id || st.Leader != leader || st.RaftState != wantState || st.Term < 2 || st.CommitIndex == 0 || st.AppliedIndex == 0 {
			t.Errorf("GET /status on member %d: %+v, want id %d, leader %d, %s", id, st, id, leader, wantState)
		}
	}

	t.Logf("%s: reads, writes, members and status checked; leader is member %d", time.Since(start).Round(time.Millisecond), leader)

	// Fault tolerance: a follower stops on SIGTERM, misses a write, and
	// serves it after a restart; what it had before is there at once.
	c.expect("PUT", 1, "/keys/durable", "yes", http.StatusCreated, "")
	c.expect("GET", follower, "/keys/durable?level=consistent", "", http.StatusOK, "yes")
	stopped := c.expectExit(follower)
	if err := stopped.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	c.waitExit(stopped, 10*time.Second, "after SIGTERM")
	c.expect("PUT", leader, "/keys/hello", "again", http.StatusCreated, "")
	c.start(follower, fmt.Sprintf("raftkv%d-restarted", follower), c.args(follower, 3)...)
	var first response
	c.eventually(10*time.Second, fmt.Sprintf("restarted member %d to accept requests", follower), func() bool {
		var err error
		first, err = e2eTry(e2eClient, "GET", c.url(follower, "/keys/durable?level=stale"), "")
		return err == nil
	})
	if first.code != http.StatusOK || first.body != "yes" {
		t.Errorf("first stale read on restarted member %d: %d %q, want 200 \"yes\"", follower, first.code, first.body)
	}
	c.eventuallyGet(follower, "/keys/hello?level=consistent", "again", 15*time.Second)

	t.Logf("%s: member %d stopped, restarted and caught up", time.Since(start).Round(time.Millisecond), follower)

	// Dynamic membership: a fourth member joins through member 1 as a
	// learner, catches up and is promoted, saying so in its log; removing
	// member 2 makes its process exit by itself.
	id4 := c.allocate()
	joiner := c.start(id4, "raftkv4", append(c.args(id4, 4), "--join", c.clients[0])...)
	c.eventuallyGet(id4, "/keys/hello?level=consistent", "again", 20*time.Second)
	c.expect("GET", id4, "/keys/durable?level=stale", "", http.StatusOK, "yes")
	c.eventually(10*time.Second, "member 1 to list member 4 with its client URL, a voter", func() bool {
		ms := c.members(1)
		return len(ms) == 4 && ms[3].ID == id4 && len(ms[3].ClientURLs) == 1 && ms[3].ClientURLs[0] == c.clients[id4-1] && !ms[3].IsLearner
	})
	c.e2eCheckJoinLog(joiner)

	t.Logf("%s: member 4 joined as a learner, caught up and was promoted", time.Since(start).Round(time.Millisecond))
	removed := c.expectExit(2)
	c.expect("DELETE", 1, "/members/2", "", http.StatusNoContent, "")
	c.waitExit(removed, 15*time.Second, "after DELETE /members/2")
	t.Logf("%s: member 2 removed and exited", time.Since(start).Round(time.Millisecond))
	c.eventually(15*time.Second, "members 1, 3 and 4 to agree on a leader among them", func() bool {
		var lead uint64
		for _, id := range []uint64{1, 3, 4} {
			st := c.status(id)
			if st.Leader == 0 || st.Leader == 2 || (lead != 0 && st.Leader != lead) {
				return false
			}
			lead = st.Leader
		}
		return true
	})
	for _, id := range []uint64{1, 3, 4} {
		var ids []uint64
		for _, m := range c.members(id) {
			ids = append(ids, m.ID)
		}
		if fmt.Sprint(ids) != "[1 3 4]" {
			t.Errorf("GET /members on member %d after removing member 2: ids %v, want [1 3 4]", id, ids)
		}
	}
	c.expect("PUT", id4, "/keys/after", "removal", http.StatusCreated, "")
	for _, id := range []uint64{1, 3, 4} {
		c.expect("GET", id, "/keys/after?level=consistent", "", http.StatusOK, "removal")
	}
}

// TestHealthReady proves that on a fresh cluster of real processes a member says ok only once it can serve every request: as soon as each member's GET /health answers 200, a default read following redirects succeeds on each, with no 503 for a client URL not yet advertised; before that, /health answers 503 with Retry-After and a one-line reason.
func TestHealthReady(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	c := newE2ECluster(t, e2eBuild(t))
	c.startThree()
	for id := uint64(1); id <= 3; id++ {
		c.eventually(20*time.Second, fmt.Sprintf("member %d to answer GET /health with 200", id), func() bool {
			r, err := e2eTry(e2eClient, "GET", c.url(id, "/health"), "")
			if err != nil || r.code == http.StatusOK {
				return err == nil
			}
			line, ok := strings.CutSuffix(r.body, "\n")
			if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || !ok || line == "" || strings.Contains(line, "\n") {
				t.Fatalf("GET /health on member %d: %d %q (Retry-After %q), want 200, or 503 with Retry-After and a one-line reason",
					id, r.code, r.body, r.header.Get("Retry-After"))
			}
			return false
		})
	}
	for id := uint64(1); id <= 3; id++ {
		r, err := e2eTry(e2eFollowClient, "GET", c.url(id, "/keys/never-written"), "")
		if err != nil || r.code != http.StatusNotFound {
			t.Errorf("default read on member %d right after every /health said ok: %d %q %v, want 404 from the leader", id, r.code, r.body, err)
		}
	}
}

// TestVersionFlag proves --version asks for the version, whatever else
// the command line says, and the binary prints it in one line on stdout
// and exits 0 without starting.
func TestVersionFlag(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"--version", "--id", "0"}} {
		if _, err := config.Parse(args); !errors.Is(err, config.ErrShowVersion) {
			t.Errorf("config.Parse(%q): %v, want the version shown", args, err)
		}
	}
	if testing.Short() {
		t.Skip("runs the raftkv binary")
	}
	bin := e2eBuild(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--version")
	cmd.Dir = t.TempDir()
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("raftkv --version: %v (stderr %q), want exit status 0", err, stderr.String())
	}
	line, ok := strings.CutSuffix(stdout.String(), "\n")
	if !ok || strings.Contains(line, "\n") || stderr.Len() != 0 {
		t.Fatalf("raftkv --version: stdout %q, stderr %q; want one line on stdout", stdout.String(), stderr.String())
	}
	if !strings.HasPrefix(line, "raftkv ") || !strings.Contains(line, "go.etcd.io/raft/v3 v3.") ||
		!strings.Contains(line, "go.etcd.io/etcd/server/v3 v3.") || !strings.Contains(line, runtime.Version()) {
		t.Errorf("raftkv --version: %q, want raftkv's, raft's, etcd server's and Go's versions", line)
	}
}

// e2eLogLine is one line of a member's log as logging.New writes it:
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
	// (package logging's TestRaftLoggerLogBehind has the line raft's panic
	// becomes then).
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
