package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"raftkv/config"
	"raftkv/datadir"
	"raftkv/idempotency"
	"raftkv/logging"
	"raftkv/membership"
	"raftkv/status"
	"raftkv/watch"
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
	mutate   func(*config.Config)

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
func newTestCluster(t testing.TB, n int, mutate func(*config.Config)) *testCluster {
	t.Helper()
	return newTestClusterOn(t, "http", n, mutate)
}

// newTestClusterOn is newTestCluster with every URL on scheme; for https,
// mutate must give the members their TLS flags.
func newTestClusterOn(t testing.TB, scheme string, n int, mutate func(*config.Config)) *testCluster {
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
func testConfigDefaults() config.Config {
	return config.Config{
		SnapshotCount:     10000,
		RequestTimeout:    3 * time.Second,
		MaxValueBytes:     1 << 20,
		IdempotencyWindow: idempotency.DefaultWindow,
		WatchHistoryBytes: watch.DefaultHistoryBytes,
		WatchKeepAlive:    watch.DefaultKeepAlive,
		LogLevel:          zapcore.InfoLevel,
		TickInterval:      testTick,
	}
}

// config is member id's config; join is "" or a client URL to join through.
func (c *testCluster) config(id uint64, join string) config.Config {
	cfg := testConfigDefaults()
	cfg.ID = id
	cfg.Cluster = membership.PositionalCluster(c.peerURLs)
	cfg.ClientURL = c.clients[id-1]
	cfg.DataDir = filepath.Join(c.dir, fmt.Sprintf("member-%d", id))
	cfg.Join = join
	if join == "" {
		cfg.ClusterID = membership.DeriveClusterID(cfg.Cluster, membership.DefaultClusterToken)
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
func (c *testCluster) startWith(cfg config.Config) {
	c.t.Helper()
	eventually(c.t, 10*time.Second, fmt.Sprintf("member %d to start", cfg.ID), func() bool {
		err := c.tryStart(cfg)
		if err != nil && !portTaken(err) {
			c.t.Fatalf("start member %d: %v", cfg.ID, err)
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
		m, ok := c.server(id).store.Table().Lookup(id)
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
		case datadir.HasWAL(cfg.DataDir):
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
func (c *testCluster) tryStart(cfg config.Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := startServer(ctx, cfg, testLogger(cfg.LogLevel))
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.running[cfg.ID] = s
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
	for _, id := range c.runningIDs() {
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
			l := c.server(id).raft.Leader()
			if l == 0 || (leader != 0 && l != leader) {
				return false
			}
			leader = l
		}
		if leader == 0 || c.server(leader) == nil {
			return false
		}
		m, ok := c.server(leader).store.Table().Lookup(leader)
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
	r, err := try(noRedirect, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// try sends one request with client and reads the whole answer.
func try(client *http.Client, method, url, body string) (response, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: %w", method, url, err)
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

// testLogger is silent unless RAFTKV_TEST_LOG is set.
func testLogger(level zapcore.Level) *zap.Logger {
	if os.Getenv("RAFTKV_TEST_LOG") == "" {
		return zap.NewNop()
	}
	return logging.New(level)
}

// Requests to a cluster's members through the client API.

// clusterPut writes key=value through member id, requires a 201 (created)
// or 204 (replaced) with a positive X-Raft-Index, and returns that index.
func clusterPut(t testing.TB, c *testCluster, id uint64, key, value string) uint64 {
	t.Helper()
	r := do(t, http.MethodPut, c.url(id, "/keys/"+key), value)
	if r.code != http.StatusCreated && r.code != http.StatusNoContent {
		t.Fatalf("PUT %s on member %d: %d %q, want 201 or 204", key, id, r.code, r.body)
	}
	raw := r.header.Get("X-Raft-Index")
	index, err := strconv.ParseUint(raw, 10, 64)
	if err != nil || index == 0 {
		t.Fatalf("PUT %s on member %d: X-Raft-Index %q is not a positive integer", key, id, raw)
	}
	return index
}

// clusterGet reads key from member id at the given level.
func clusterGet(t testing.TB, c *testCluster, id uint64, key, level string) response {
	t.Helper()
	return do(t, http.MethodGet, c.url(id, "/keys/"+key+"?level="+level), "")
}

// clusterMustRead requires a read of key on member id at level to answer
// 200 with want, at once.
func clusterMustRead(t testing.TB, c *testCluster, id uint64, key, level, want string) {
	t.Helper()
	r := clusterGet(t, c, id, key, level)
	if r.code != http.StatusOK || r.body != want {
		t.Fatalf("GET %s?level=%s on member %d: %d %q, want 200 %q", key, level, id, r.code, r.body, want)
	}
}

// clusterStatus is member id's GET /status.
func clusterStatus(t testing.TB, c *testCluster, id uint64) status.View {
	t.Helper()
	r := do(t, http.MethodGet, c.url(id, "/status"), "")
	if r.code != http.StatusOK {
		t.Fatalf("GET /status on member %d: %d %q", id, r.code, r.body)
	}
	var st status.View
	if err := json.Unmarshal([]byte(r.body), &st); err != nil {
		t.Fatalf("GET /status on member %d: %v in %q", id, err, r.body)
	}
	return st
}

// clusterMembers is member id's GET /members.
func clusterMembers(t testing.TB, c *testCluster, id uint64) []membership.View {
	t.Helper()
	r := do(t, http.MethodGet, c.url(id, "/members"), "")
	if r.code != http.StatusOK {
		t.Fatalf("GET /members on member %d: %d %q", id, r.code, r.body)
	}
	var ms []membership.View
	if err := json.Unmarshal([]byte(r.body), &ms); err != nil {
		t.Fatalf("GET /members on member %d: %v in %q", id, err, r.body)
	}
	return ms
}

// clusterFindMember returns the member with id in ms.
func clusterFindMember(ms []membership.View, id uint64) (membership.View, bool) {
	for _, m := range ms {
		if m.ID == id {
			return m, true
		}
	}
	return membership.View{}, false
}

// clusterWaitClosed fails the test unless ch closes within timeout.
func clusterWaitClosed(t testing.TB, ch <-chan struct{}, timeout time.Duration, what string) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// clusterOneLineBody requires an error body to be exactly one non-empty line.
func clusterOneLineBody(t testing.TB, what string, r response) {
	t.Helper()
	line := strings.TrimSuffix(r.body, "\n")
	if strings.TrimSpace(line) == "" || strings.ContainsAny(line, "\r\n") {
		t.Fatalf("%s: body %q is not one non-empty line", what, r.body)
	}
}

// clusterOther returns the lowest-numbered running member that is none of
// the given ids.
func clusterOther(t testing.TB, c *testCluster, not ...uint64) uint64 {
	t.Helper()
	ids := c.runningIDs()
	slices.Sort(ids)
	for _, id := range ids {
		if !slices.Contains(not, id) {
			return id
		}
	}
	t.Fatalf("no running member other than %v", not)
	return 0
}

// clusterStopAllBut cleanly stops every running member except keep.
func clusterStopAllBut(t testing.TB, c *testCluster, keep uint64) {
	t.Helper()
	for _, id := range c.runningIDs() {
		if id != keep {
			if err := c.stop(id); err != nil {
				t.Fatalf("stop member %d: %v", id, err)
			}
		}
	}
}
