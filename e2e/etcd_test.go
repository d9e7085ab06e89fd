package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// etcd as real processes, for the benchmarks that compare raftkv with it
// (BenchmarkLeaseCost, BenchmarkLeaseLateness; later rolling restarts and
// scale): a binary built once per machine, a three-member cluster on
// loopback with raftkv's raft timing, and the few calls of its JSON gRPC
// gateway the benchmarks need, over plain HTTP, so that this module needs
// no etcd client.
//
// etcd does not build inside this module (go.sum lacks its dependencies),
// so etcdBinary builds it in a module of its own, made in a temp dir, and
// keeps the binary under os.TempDir() for the next run; RAFTKV_ETCD names a
// prebuilt binary instead.

// etcdVersion is the etcd release the benchmarks compare with.
const etcdVersion = "v3.7.3"

// etcdBinEnv names a prebuilt etcd binary to run instead of building one.
const etcdBinEnv = "RAFTKV_ETCD"

// etcdBuilt is the etcd binary of this test process, found or built once.
var etcdBuilt struct {
	once sync.Once
	path string
	err  error
}

// etcdBinary returns the etcd binary to run: the one etcdBinEnv names, or
// etcdVersion built by buildEtcd, once per machine (about 15 s, the
// modules from the Go module proxy).
func etcdBinary(t testing.TB) string {
	t.Helper()
	etcdBuilt.once.Do(func() {
		if p := os.Getenv(etcdBinEnv); p != "" {
			etcdBuilt.path = p
			return
		}
		start := time.Now()
		etcdBuilt.path, etcdBuilt.err = buildEtcd()
		if etcdBuilt.err == nil {
			t.Logf("etcd %s: %s (found or built in %s)", etcdVersion, etcdBuilt.path, time.Since(start).Round(time.Millisecond))
		}
	})
	if etcdBuilt.err != nil {
		t.Fatal(etcdBuilt.err)
	}
	return etcdBuilt.path
}

// buildEtcd returns the cached etcd binary, building it first if it is
// missing: in a temp module, `go mod init`, `go get` the server at
// etcdVersion, `go build`, and a rename into the cache, so that a build cut
// short, or two at once, never leaves a broken binary there.
func buildEtcd() (string, error) {
	dir := filepath.Join(os.TempDir(), "raftkv-etcd-"+etcdVersion)
	path := filepath.Join(dir, "etcd")
	if out, err := exec.Command(path, "--version").Output(); err == nil && strings.Contains(string(out), "etcd Version: "+strings.TrimPrefix(etcdVersion, "v")) {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	mod, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(mod)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, args := range [][]string{
		{"mod", "init", "etcdbuild"},
		{"get", "go.etcd.io/etcd/server/v3@" + etcdVersion},
		{"build", "-o", filepath.Join(mod, "etcd"), "go.etcd.io/etcd/server/v3"},
	} {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = mod
		// Outside this module and any workspace; the local toolchain.
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build etcd %s: go %s: %v\n%s", etcdVersion, strings.Join(args, " "), err, out)
		}
	}
	if err := os.Rename(filepath.Join(mod, "etcd"), path); err != nil {
		return "", err
	}
	return path, nil
}

// etcdMembers is how many members an etcdCluster has.
const etcdMembers = 3

// etcdCluster is a three-member etcd cluster of real processes on
// loopback, members numbered 1 to 3 as raftkv's are, with raftkv's raft
// timing: a 100 ms heartbeat and a 1 s election timeout (raftkv's 10 ticks
// of 100 ms). Its processes are an e2eCluster's, killed when the test ends.
type etcdCluster struct {
	procs    *e2eCluster
	token    string
	starts   map[uint64]int    // how often each member was started, to name its logs
	ids      map[uint64]uint64 // etcd's member id → member number
	hc       *http.Client      // the harness's own calls: a fresh connection each
	logLevel string
}

// startEtcdCluster starts an etcd cluster for the rest of t, data dirs in
// a temp dir, and returns it once every member names the same leader.
func startEtcdCluster(t testing.TB) *etcdCluster {
	t.Helper()
	procs := newE2ECluster(t, etcdBinary(t))
	procs.pki = nil                                 // plain http, whatever RAFTKV_TLS says
	procs.deadline = time.Now().Add(24 * time.Hour) // every wait here bounds itself
	for range etcdMembers {
		procs.allocate()
	}
	c := &etcdCluster{
		procs:    procs,
		token:    fmt.Sprintf("raftkv-bench-%d", time.Now().UnixNano()),
		starts:   make(map[uint64]int),
		ids:      make(map[uint64]uint64),
		hc:       &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second},
		logLevel: "warn",
	}
	for n := uint64(1); n <= etcdMembers; n++ {
		c.start(n)
	}
	for n := uint64(1); n <= etcdMembers; n++ {
		procs.eventually(time.Minute, fmt.Sprintf("etcd member %d to answer its status", n), func() bool {
			st, err := c.status(n)
			if err == nil {
				c.ids[uint64(st.Header.MemberID)] = n
			}
			return err == nil
		})
	}
	c.waitLeader(time.Minute)
	return c
}

// name is member n's --name.
func (c *etcdCluster) name(n uint64) string { return fmt.Sprintf("etcd%d", n) }

// args is member n's command line: the same on every start (etcd ignores
// the --initial-cluster flags once its data dir holds a WAL).
func (c *etcdCluster) args(n uint64) []string {
	var initial []string
	for m := uint64(1); m <= etcdMembers; m++ {
		initial = append(initial, c.name(m)+"="+c.procs.peers[m-1])
	}
	client, peer := c.procs.clients[n-1], c.procs.peers[n-1]
	return []string{
		"--name", c.name(n),
		"--data-dir", filepath.Join(c.procs.dir, fmt.Sprintf("etcd-%d", n)),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", strings.Join(initial, ","),
		"--initial-cluster-state", "new",
		"--initial-cluster-token", c.token,
		"--heartbeat-interval", "100",
		"--election-timeout", "1000",
		"--log-level", c.logLevel,
	}
}

// start starts member n, for the first time or again after kill.
func (c *etcdCluster) start(n uint64) {
	c.procs.t.Helper()
	c.starts[n]++
	name := c.name(n)
	if c.starts[n] > 1 {
		name = fmt.Sprintf("%s-start%d", name, c.starts[n])
	}
	c.procs.start(n, name, c.args(n)...)
}

// kill kills member n with SIGKILL and waits until it has exited.
func (c *etcdCluster) kill(n uint64) {
	p := c.procs.expectExit(n)
	p.cmd.Process.Kill()
	<-p.done
}

// running reports whether member n's process runs.
func (c *etcdCluster) running(n uint64) bool { return c.procs.running[n] != nil }

// pid is member n's process id.
func (c *etcdCluster) pid(n uint64) int { return c.procs.running[n].cmd.Process.Pid }

// urls is every member's client URL, by member number - 1.
func (c *etcdCluster) urls() []string { return append([]string(nil), c.procs.clients...) }

// url is member n's client URL.
func (c *etcdCluster) url(n uint64) string { return c.procs.clients[n-1] }

// etcdInt is an int64 or uint64 of etcd's JSON, which the gateway writes
// as a string ("123"); a number is accepted too.
type etcdInt int64

// UnmarshalJSON reads a quoted or bare integer.
func (v *etcdInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if u, err := strconv.ParseUint(s, 10, 64); err == nil {
		*v = etcdInt(u) // a member id may not fit an int64: keep its bits
		return nil
	}
	i, err := strconv.ParseInt(s, 10, 64)
	*v = etcdInt(i)
	return err
}

// etcdHeader is the header of every etcd answer.
type etcdHeader struct {
	MemberID etcdInt `json:"member_id"`
	Revision etcdInt `json:"revision"`
	RaftTerm etcdInt `json:"raft_term"`
}

// etcdStatus is an answer to POST /v3/maintenance/status.
type etcdStatus struct {
	Header    etcdHeader `json:"header"`
	Leader    etcdInt    `json:"leader"`
	RaftIndex etcdInt    `json:"raftIndex"`
	RaftTerm  etcdInt    `json:"raftTerm"`
}

// etcdCall POSTs req as JSON to the gateway at base+path and decodes a 200
// answer into resp; any other answer is an error with its body.
func etcdCall(hc *http.Client, base, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	r, err := hc.Post(base+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	got, err := io.ReadAll(r.Body)
	r.Body.Close()
	if err != nil {
		return fmt.Errorf("POST %s%s: read body: %w", base, path, err)
	}
	if r.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s%s: %d %s", base, path, r.StatusCode, bytes.TrimSpace(got))
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(got, resp); err != nil {
		return fmt.Errorf("POST %s%s: %v in %q", base, path, err, got)
	}
	return nil
}

// etcdB64 is s as the gateway takes bytes: base64.
func etcdB64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// status is member n's POST /v3/maintenance/status.
func (c *etcdCluster) status(n uint64) (etcdStatus, error) {
	var st etcdStatus
	err := etcdCall(c.hc, c.url(n), "/v3/maintenance/status", struct{}{}, &st)
	return st, err
}

// leader returns the member every running member names as leader, if
// they agree and it runs.
func (c *etcdCluster) leader() (uint64, bool) {
	var leader uint64
	for n := uint64(1); n <= etcdMembers; n++ {
		if !c.running(n) {
			continue
		}
		st, err := c.status(n)
		if err != nil || st.Leader == 0 {
			return 0, false
		}
		m, ok := c.ids[uint64(st.Leader)]
		if !ok || (leader != 0 && m != leader) {
			return 0, false
		}
		leader = m
	}
	return leader, leader != 0 && c.running(leader)
}

// waitLeader waits until the running members agree on a running leader,
// and returns it.
func (c *etcdCluster) waitLeader(timeout time.Duration) uint64 {
	c.procs.t.Helper()
	var leader uint64
	c.procs.eventually(timeout, "the running etcd members to agree on a leader", func() bool {
		var ok bool
		leader, ok = c.leader()
		return ok
	})
	return leader
}

// etcdPut writes key=value through the gateway at base, attached to lease
// if it is not 0.
func etcdPut(hc *http.Client, base, key string, value []byte, lease int64) error {
	req := map[string]string{"key": etcdB64(key), "value": base64.StdEncoding.EncodeToString(value)}
	if lease != 0 {
		req["lease"] = strconv.FormatInt(lease, 10)
	}
	return etcdCall(hc, base, "/v3/kv/put", req, nil)
}

// etcdRange is an answer to POST /v3/kv/range.
type etcdRange struct {
	Header etcdHeader `json:"header"`
	Kvs    []struct {
		Key   string  `json:"key"`
		Value string  `json:"value"`
		Lease etcdInt `json:"lease"`
	} `json:"kvs"`
}

// etcdHas reports whether key exists, by a linearizable read through the
// gateway at base.
func etcdHas(hc *http.Client, base, key string) (bool, error) {
	var r etcdRange
	if err := etcdCall(hc, base, "/v3/kv/range", map[string]string{"key": etcdB64(key)}, &r); err != nil {
		return false, err
	}
	return len(r.Kvs) > 0, nil
}

// etcdGrant grants a lease of ttl through the gateway at base.
func etcdGrant(hc *http.Client, base string, ttl time.Duration) (int64, error) {
	var r struct {
		ID    etcdInt `json:"ID"`
		TTL   etcdInt `json:"TTL"`
		Error string  `json:"error"`
	}
	if err := etcdCall(hc, base, "/v3/lease/grant", map[string]int64{"TTL": int64(ttl / time.Second)}, &r); err != nil {
		return 0, err
	}
	if r.ID == 0 || r.Error != "" {
		return 0, fmt.Errorf("lease grant at %s: id %d, error %q", base, r.ID, r.Error)
	}
	return int64(r.ID), nil
}

// errEtcdLeaseGone is a keepalive of a lease that no longer exists: etcd
// answers it with a TTL of 0.
var errEtcdLeaseGone = errors.New("etcd lease not found")

// etcdKeepAlive renews lease id once through the gateway at base: a
// stream of one request, which the gateway closes once answered. It
// returns the TTL etcd gave.
func etcdKeepAlive(hc *http.Client, base string, id int64) (int64, error) {
	var r struct {
		Result struct {
			ID  etcdInt `json:"ID"`
			TTL etcdInt `json:"TTL"`
		} `json:"result"`
		Error *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := etcdCall(hc, base, "/v3/lease/keepalive", map[string]string{"ID": strconv.FormatInt(id, 10)}, &r); err != nil {
		return 0, err
	}
	switch {
	case r.Error != nil:
		return 0, fmt.Errorf("keepalive of lease %d at %s: %d %s", id, base, r.Error.Code, r.Error.Message)
	case r.Result.TTL <= 0:
		return 0, fmt.Errorf("keepalive of lease %d at %s: %w", id, base, errEtcdLeaseGone)
	}
	return int64(r.Result.TTL), nil
}

// etcdTimeToLive is how long etcd's member at base says lease id has left
// (-1 once it is gone).
func etcdTimeToLive(hc *http.Client, base string, id int64) (int64, error) {
	var r struct {
		TTL etcdInt `json:"TTL"`
	}
	err := etcdCall(hc, base, "/v3/lease/timetolive", map[string]string{"ID": strconv.FormatInt(id, 10)}, &r)
	return int64(r.TTL), err
}

// TestEtcdHarness checks the etcd harness itself: a cluster starts, takes
// a leased key, renews the lease, reads it back on every member, loses its
// leader to SIGKILL, elects another and takes the old one back. It runs
// only when the lease benchmarks do (it builds etcd).
func TestEtcdHarness(t *testing.T) {
	if os.Getenv(benchLeasesEnv) != "1" {
		t.Skipf("builds and runs etcd; set %s=1 to run it", benchLeasesEnv)
	}
	c := startEtcdCluster(t)
	leader := c.waitLeader(time.Minute)
	id, err := etcdGrant(c.hc, c.url(leader), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := etcdPut(c.hc, c.url(1), "k", []byte("v"), id); err != nil {
		t.Fatal(err)
	}
	if ttl, err := etcdKeepAlive(c.hc, c.url(2), id); err != nil || ttl != 10 {
		t.Fatalf("keepalive through member 2: ttl %d, %v", ttl, err)
	}
	for n := uint64(1); n <= etcdMembers; n++ {
		if ok, err := etcdHas(c.hc, c.url(n), "k"); !ok || err != nil {
			t.Fatalf("member %d: has k %v, %v", n, ok, err)
		}
	}
	if _, err := etcdKeepAlive(c.hc, c.url(leader), 12345); !errors.Is(err, errEtcdLeaseGone) {
		t.Fatalf("keepalive of an unknown lease: %v, want %v", err, errEtcdLeaseGone)
	}
	c.kill(leader)
	next := c.waitLeader(30 * time.Second)
	if next == leader {
		t.Fatalf("member %d still leads after SIGKILL", leader)
	}
	c.start(leader)
	c.procs.eventually(time.Minute, fmt.Sprintf("restarted member %d to name leader %d", leader, next), func() bool {
		st, err := c.status(leader)
		return err == nil && c.ids[uint64(st.Leader)] == next
	})
	if ok, err := etcdHas(c.hc, c.url(leader), "k"); !ok || err != nil {
		t.Fatalf("restarted member %d: has k %v, %v", leader, ok, err)
	}
	t.Logf("leader %d killed, %d elected, %d back", leader, next, leader)
}
