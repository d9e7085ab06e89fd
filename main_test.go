package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"raftkv/config"
	"raftkv/join"
	"raftkv/membership"
)

// Starting a member (startServer, main.go), and the running member as the
// feature packages see it.

// flagTestConfig is a valid one-member config on fresh loopback ports,
// keeping its data in dataDir.
func flagTestConfig(t *testing.T, dataDir string) config.Config {
	cluster := map[uint64]string{1: "http://" + freeAddr(t)}
	cfg := testConfigDefaults()
	cfg.ID = 1
	cfg.Cluster = cluster
	cfg.ClusterID = membership.DeriveClusterID(cluster, membership.DefaultClusterToken)
	cfg.ClientURL = "http://" + freeAddr(t)
	cfg.DataDir = dataDir
	return cfg
}

// flagTestStart runs startServer, failing the test if it panics or takes
// more than 5s.
func flagTestStart(t *testing.T, cfg config.Config) (*server, error) {
	t.Helper()
	type result struct {
		s     *server
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			r.panic = recover()
			done <- r
		}()
		r.s, r.err = startServer(context.Background(), cfg, testLogger(cfg.LogLevel))
	}()
	select {
	case r := <-done:
		if r.panic != nil {
			t.Fatalf("startServer panicked: %v", r.panic)
		}
		if r.err == nil {
			t.Cleanup(func() { r.s.stop() })
		}
		return r.s, r.err
	case <-time.After(5 * time.Second):
		t.Fatal("startServer did not return within 5s")
		return nil, nil
	}
}

// flagTestHostPort is the host:port of a URL made by flagTestConfig.
func flagTestHostPort(u string) string { return strings.TrimPrefix(u, "http://") }

// TestFlagsStartFailures proves startServer with an unusable data dir or a taken port fails at once, in one line, without a panic, freeing its ports.
func TestFlagsStartFailures(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, cfg *config.Config) (release func())
		want  func(cfg config.Config) string // what the error must mention
	}{
		{"data dir under a regular file", func(t *testing.T, cfg *config.Config) func() {
			file := filepath.Join(t.TempDir(), "file")
			if err := os.WriteFile(file, []byte("not a directory"), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg.DataDir = filepath.Join(file, "raftkv-1")
			return func() {}
		}, func(cfg config.Config) string { return cfg.DataDir }},
		{"client port taken", func(t *testing.T, cfg *config.Config) func() {
			ln, err := net.Listen("tcp", flagTestHostPort(cfg.ClientURL))
			if err != nil {
				t.Fatal(err)
			}
			return func() { ln.Close() }
		}, func(cfg config.Config) string { return flagTestHostPort(cfg.ClientURL) }},
		{"peer port taken", func(t *testing.T, cfg *config.Config) func() {
			ln, err := net.Listen("tcp", flagTestHostPort(cfg.PeerURL()))
			if err != nil {
				t.Fatal(err)
			}
			return func() { ln.Close() }
		}, func(cfg config.Config) string { return flagTestHostPort(cfg.PeerURL()) }},
		{"--learner on a first start without --join", func(t *testing.T, cfg *config.Config) func() {
			cfg.StayLearner = true
			return func() {}
		}, func(cfg config.Config) string { return "--learner needs --join" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := flagTestConfig(t, filepath.Join(t.TempDir(), "raftkv-1"))
			release := tc.setup(t, &cfg)
			_, err := flagTestStart(t, cfg)
			release()
			if err == nil {
				t.Fatal("startServer succeeded")
			}
			if msg := err.Error(); strings.ContainsAny(msg, "\r\n") || !strings.Contains(msg, tc.want(cfg)) {
				t.Errorf("error %q: want one line naming %s", msg, tc.want(cfg))
			}
			for _, u := range []string{cfg.ClientURL, cfg.PeerURL()} {
				ln, err := net.Listen("tcp", flagTestHostPort(u))
				if err != nil {
					t.Errorf("%s still taken after startServer failed: %v", u, err)
					continue
				}
				ln.Close()
			}
		})
	}
}

// TestFlagsRetryAfterPeerPortTaken proves a first start that failed on a taken peer port does not spoil the retry: the member bootstraps and leads.
func TestFlagsRetryAfterPeerPortTaken(t *testing.T) {
	cfg := flagTestConfig(t, filepath.Join(t.TempDir(), "raftkv-1"))
	ln, err := net.Listen("tcp", flagTestHostPort(cfg.PeerURL()))
	if err != nil {
		t.Fatal(err)
	}
	_, err = flagTestStart(t, cfg)
	ln.Close()
	if err == nil {
		t.Fatal("startServer succeeded with its peer port taken")
	}

	s, err := flagTestStart(t, cfg)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("retried member: leader %d, voters %v, members %v",
				s.raft.Leader(), s.raft.node.Status().Config.Voters, s.store.Table().List())
		}
	}()
	// A lone member elects itself within a few election timeouts.
	eventually(t, 3*time.Second, "the retried member to elect itself", func() bool {
		return s.raft.Leader() == cfg.ID
	})
}

// testLeaders is who leads, as the test moves it by hand: the raft node's
// Leader and LeaderChange, without raft.
type testLeaders struct {
	mu      sync.Mutex
	leader  uint64
	changed chan struct{}
}

func (l *testLeaders) Leader() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leader
}

func (l *testLeaders) LeaderChange() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// set makes id the leader and wakes whoever waits for a change.
func (l *testLeaders) set(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leader = id
	close(l.changed)
	l.changed = make(chan struct{})
}

// advertiseTestServer is a running member as join.Advertise sees it, as
// startServer hands it over (running): a kvstore, and the leader the test
// sets.
type advertiseTestServer struct {
	*kvstore
	*testLeaders
}

// ReadIndex is never asked for by Advertise.
func (advertiseTestServer) ReadIndex(context.Context) (uint64, error) {
	return 0, errors.New("join.Advertise asked for a read index")
}

// TestAdvertiseClientURL proves join.Advertise, given the kvstore, proposes nothing while no leader is known, proposes the moment one is, rather than at its next retry, and proposes nothing when the member table already has the URL.
func TestAdvertiseClientURL(t *testing.T) {
	h := newKVTest(t)
	h.apply(kvAddEntry(t, 1, membership.Member{ID: 1, PeerURLs: []string{"http://p1"}}))
	leaders := &testLeaders{changed: make(chan struct{})}
	var srv join.Server = advertiseTestServer{kvstore: h.s, testLeaders: leaders}
	advertise := func() <-chan struct{} {
		done := make(chan struct{})
		go func() {
			// An hour's timeout: a retry on a timer would come far too late.
			join.Advertise(srv, 1, "http://c1", time.Hour, zap.NewNop())
			close(done)
		}()
		return done
	}

	done := advertise()
	select {
	case p := <-h.proposeC:
		t.Fatalf("proposed %q with no leader known", p.data)
	case <-time.After(50 * time.Millisecond):
	}
	leaders.set(2)
	h.apply(h.nextProposal(2))
	kvWait(t, done, "join.Advertise to return once its entry applied")
	if m, ok := h.s.Table().Lookup(1); !ok || !slices.Equal(m.ClientURLs, []string{"http://c1"}) {
		t.Fatalf("member table %+v does not give member 1 its client URL", h.s.Table().List())
	}

	// A restart finds the URL in the table and proposes nothing.
	kvWait(t, advertise(), "join.Advertise to return at once")
	select {
	case p := <-h.proposeC:
		t.Fatalf("proposed %q though the table had the URL", p.data)
	default:
	}
}
