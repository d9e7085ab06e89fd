package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The in-process test harness: members of one cluster run as servers inside
// the test binary, each with its own loopback ports and data dir. Set
// RAFTKV_TEST_LOG=1 to see their logs.

// testTick is the raft tick in tests: elections take 200-400ms, not 1-2s.
const testTick = 20 * time.Millisecond

// testCluster is a cluster of in-process members.
type testCluster struct {
	t        testing.TB
	dir      string
	scheme   string   // of every URL: http, or https for a cluster on TLS
	peerURLs []string // by id-1; grows as members are added
	clients  []string // client URLs by id-1
	mutate   func(*config)

	mu      sync.Mutex
	running map[uint64]*server
}

// newTestCluster starts n members and waits for them to agree on a leader.
// mutate, if not nil, adjusts every member's config. All members are
// stopped when the test ends.
//
// freeAddr's ports are free when chosen, but another process may take one
// before the member listens on it; then the cluster starts over on fresh
// ports, a few times at most.
func newTestCluster(t testing.TB, n int, mutate func(*config)) *testCluster {
	t.Helper()
	return newTestClusterOn(t, "http", n, mutate)
}

// newTestClusterOn is newTestCluster with every URL on scheme; for https,
// mutate must give the members their TLS flags.
func newTestClusterOn(t testing.TB, scheme string, n int, mutate func(*config)) *testCluster {
	t.Helper()
	for attempt := 1; ; attempt++ {
		c := &testCluster{t: t, dir: t.TempDir(), scheme: scheme, mutate: mutate, running: make(map[uint64]*server)}
		for range n {
			c.allocate()
		}
		t.Cleanup(c.stopAll)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for id := uint64(1); id <= uint64(n); id++ {
			wg.Go(func() { errs[id-1] = c.tryStart(c.config(id, "")) })
		}
		wg.Wait()
		err := errors.Join(errs...)
		if err == nil {
			c.waitLeader()
			return c
		}
		if !portTaken(errs...) || attempt == 3 {
			t.Fatalf("start a %d-member cluster: %v", n, err)
		}
		t.Logf("starting over on fresh ports: %v", err)
		c.stopAll()
	}
}

// allocate reserves loopback ports for one more member and returns its id.
func (c *testCluster) allocate() uint64 {
	c.peerURLs = append(c.peerURLs, c.scheme+"://"+freeAddr(c.t))
	c.clients = append(c.clients, c.scheme+"://"+freeAddr(c.t))
	return uint64(len(c.peerURLs))
}

// testConfigDefaults is the config every in-process member starts from:
// the flags' defaults, but a 3 s request timeout and testTick.
func testConfigDefaults() config {
	return config{
		snapshotCount:     10000,
		requestTimeout:    3 * time.Second,
		maxValueBytes:     1 << 20,
		idempotencyWindow: defaultIdempotencyWindow,
		watchHistoryBytes: defaultWatchHistoryBytes,
		watchKeepAlive:    watchKeepAlive,
		logLevel:          zapcore.InfoLevel,
		tickInterval:      testTick,
	}
}

// config is member id's config; join is "" or a client URL to join through.
func (c *testCluster) config(id uint64, join string) config {
	cfg := testConfigDefaults()
	cfg.id = id
	cfg.cluster = positionalCluster(c.peerURLs)
	cfg.clientURL = c.clients[id-1]
	cfg.dataDir = filepath.Join(c.dir, fmt.Sprintf("member-%d", id))
	cfg.join = join
	if join == "" {
		cfg.clusterID = deriveClusterID(cfg.cluster, defaultClusterToken)
	}
	if c.mutate != nil {
		c.mutate(&cfg)
	}
	return cfg
}

// start restarts member id on its data dir.
func (c *testCluster) start(id uint64) { c.startWith(c.config(id, "")) }

// startWith starts a member with an explicit config, retrying while one of
// its ports is taken: the cluster knows its ports, they cannot change.
func (c *testCluster) startWith(cfg config) {
	c.t.Helper()
	eventually(c.t, 10*time.Second, fmt.Sprintf("member %d to start", cfg.id), func() bool {
		err := c.tryStart(cfg)
		if err != nil && !portTaken(err) {
			c.t.Fatalf("start member %d: %v", cfg.id, err)
		}
		return err == nil
	})
}

// addMember allocates ports for a new member, adds it through member via
// with --join and returns its id once it runs and is promoted to a voter
// (--join adds it as a learner).
func (c *testCluster) addMember(via uint64) uint64 {
	c.t.Helper()
	id := c.joinMember(via)
	eventually(c.t, 15*time.Second, fmt.Sprintf("joined member %d to be promoted to a voter", id), func() bool {
		m, ok := c.server(id).store.lookupMember(id)
		return ok && !m.IsLearner
	})
	return id
}

// joinMember allocates ports for a new member, adds it through member via
// with --join and returns its id once it runs, a learner until it has
// caught up. Until it has asked to join (it listens for clients first) its
// ports may still change.
func (c *testCluster) joinMember(via uint64) uint64 {
	c.t.Helper()
	id := c.allocate()
	for attempt := 1; ; attempt++ {
		cfg := c.config(id, c.clientURL(via))
		err := c.tryStart(cfg)
		switch {
		case err == nil:
			return id
		case !portTaken(err):
			c.t.Fatalf("add member %d through %d: %v", id, via, err)
		case hasWAL(cfg.dataDir):
			c.startWith(cfg) // joined already, with these ports
			return id
		case attempt == 3:
			c.t.Fatalf("add member %d through %d: %v", id, via, err)
		}
		c.peerURLs[id-1] = c.scheme + "://" + freeAddr(c.t)
		c.clients[id-1] = c.scheme + "://" + freeAddr(c.t)
	}
}

// tryStart starts a member and records it as running.
func (c *testCluster) tryStart(cfg config) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := startServer(ctx, cfg, testLogger(cfg.logLevel))
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.running[cfg.id] = s
	c.mu.Unlock()
	return nil
}

// portTaken reports whether every non-nil error in errs is a port someone
// else took, and there is at least one.
func portTaken(errs ...error) bool {
	taken := false
	for _, err := range errs {
		if err != nil {
			if !errors.Is(err, syscall.EADDRINUSE) {
				return false
			}
			taken = true
		}
	}
	return taken
}

// stop stops member id and returns why it stopped, if on its own.
func (c *testCluster) stop(id uint64) error {
	c.mu.Lock()
	s := c.running[id]
	delete(c.running, id)
	c.mu.Unlock()
	if s == nil {
		return nil
	}
	return s.stop()
}

func (c *testCluster) stopAll() {
	var wg sync.WaitGroup
	c.mu.Lock()
	ids := make([]uint64, 0, len(c.running))
	for id := range c.running {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		wg.Go(func() { c.stop(id) })
	}
	wg.Wait()
}

// server returns running member id's server, or nil.
func (c *testCluster) server(id uint64) *server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running[id]
}

// runningIDs lists the running members.
func (c *testCluster) runningIDs() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []uint64
	for id := range c.running {
		ids = append(ids, id)
	}
	return ids
}

func (c *testCluster) clientURL(id uint64) string { return c.clients[id-1] }

// url is member id's client URL with path appended.
func (c *testCluster) url(id uint64, path string) string { return c.clientURL(id) + path }

// waitLeader waits until every running member knows the same leader, and
// that leader has advertised its client URL, and returns the leader's id.
func (c *testCluster) waitLeader() uint64 {
	c.t.Helper()
	var leader uint64
	eventually(c.t, 15*time.Second, "running members to agree on a leader", func() bool {
		leader = 0
		for _, id := range c.runningIDs() {
			l := c.server(id).raft.leaderID()
			if l == 0 || (leader != 0 && l != leader) {
				return false
			}
			leader = l
		}
		if leader == 0 || c.server(leader) == nil {
			return false
		}
		m, ok := c.server(leader).store.lookupMember(leader)
		return ok && len(m.ClientURLs) > 0
	})
	return leader
}

// follower returns some running member that is not the leader.
func (c *testCluster) follower() uint64 {
	leader := c.waitLeader()
	for _, id := range c.runningIDs() {
		if id != leader {
			return id
		}
	}
	c.t.Fatal("no follower running")
	return 0
}

// response is what a test request got back.
type response struct {
	code   int
	body   string
	header http.Header
}

// noRedirect is a client that shows redirects instead of following them.
var noRedirect = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// do sends one request and reads the whole answer.
func do(t testing.TB, method, url, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return response{code: resp.StatusCode, body: string(b), header: resp.Header}
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

// testLogger is silent unless RAFTKV_TEST_LOG is set.
func testLogger(level zapcore.Level) *zap.Logger {
	if os.Getenv("RAFTKV_TEST_LOG") == "" {
		return zap.NewNop()
	}
	return newLogger(level)
}
