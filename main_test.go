package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
)

// flagTestCluster3 is a valid --cluster of three members.
const flagTestCluster3 = "http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379"

// TestFlagsDefaults proves an empty command line gives the documented defaults.
func TestFlagsDefaults(t *testing.T) {
	cfg, err := parseFlags(nil)
	if err != nil {
		t.Fatalf("parseFlags(nil): %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"id", cfg.id, uint64(1)},
		{"cluster", fmt.Sprint(cfg.cluster), "map[1:http://127.0.0.1:9021]"},
		{"cluster ID", cfg.clusterID, deriveClusterID(map[uint64]string{1: "http://127.0.0.1:9021"}, "raftkv-cluster")},
		{"client URL", cfg.clientURL, "http://127.0.0.1:9121"},
		{"data dir", cfg.dataDir, "raftkv-1"},
		{"join", cfg.join, ""},
		{"learner", cfg.stayLearner, false},
		{"snapshot count", cfg.snapshotCount, uint64(10000)},
		{"request timeout", cfg.requestTimeout, 5 * time.Second},
		{"max value bytes", cfg.maxValueBytes, int64(1 << 20)},
		{"log level", cfg.logLevel, zapcore.InfoLevel},
		{"tick", cfg.tickInterval, 100 * time.Millisecond},
		{"peer URL", cfg.peerURL(), "http://127.0.0.1:9021"},
		{"peer listen URL", cfg.peerListenURL(), "http://127.0.0.1:9021"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("default %s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestFlagsValid proves good flag values land in the config and the derived defaults follow --id and --port.
func TestFlagsValid(t *testing.T) {
	cases := []struct {
		name  string
		args  []string
		check func(config) error
	}{
		{"procfile member 2", []string{"--id", "2", "--cluster", flagTestCluster3, "--port", "22380"}, func(c config) error {
			if c.id != 2 || len(c.cluster) != 3 || c.cluster[3] != "http://127.0.0.1:32379" || c.peerURL() != "http://127.0.0.1:22379" ||
				c.clientURL != "http://127.0.0.1:22380" || c.dataDir != "raftkv-2" {
				return fmt.Errorf("id %d, cluster %v, peer URL %s, client URL %s, data dir %s", c.id, c.cluster, c.peerURL(), c.clientURL, c.dataDir)
			}
			return nil
		}},
		{"listen behind a proxy", []string{"--id", "2", "--cluster", flagTestCluster3, "--listen-peer-url", "http://127.0.0.1:22999"}, func(c config) error {
			if c.peerURL() != "http://127.0.0.1:22379" || c.peerListenURL() != "http://127.0.0.1:22999" {
				return fmt.Errorf("peer URL %s, peer listen URL %s", c.peerURL(), c.peerListenURL())
			}
			return nil
		}},
		{"single dash", []string{"-id", "3", "-cluster", flagTestCluster3}, func(c config) error {
			if c.id != 3 || c.dataDir != "raftkv-3" {
				return fmt.Errorf("id %d, data dir %s", c.id, c.dataDir)
			}
			return nil
		}},
		{"client URL wins over port", []string{"--port", "1234", "--client-url", "http://kv.example:8443"}, func(c config) error {
			if c.clientURL != "http://kv.example:8443" {
				return fmt.Errorf("client URL %s", c.clientURL)
			}
			return nil
		}},
		{"URLs normalised", []string{"--id", "2", "--cluster", "HTTP://127.0.0.1:12379/,http://LocalHost:022379", "--client-url", "Http://KV.example:08443/", "--join", "http://127.0.0.1:12380/"}, func(c config) error {
			if c.cluster[1] != "http://127.0.0.1:12379" || c.peerURL() != "http://localhost:22379" || c.clientURL != "http://kv.example:8443" || c.join != "http://127.0.0.1:12380" {
				return fmt.Errorf("cluster %v, client URL %s, join %s", c.cluster, c.clientURL, c.join)
			}
			return nil
		}},
		{"data dir", []string{"--data-dir", "/var/lib/raftkv"}, func(c config) error {
			if c.dataDir != "/var/lib/raftkv" {
				return fmt.Errorf("data dir %s", c.dataDir)
			}
			return nil
		}},
		{"join", []string{"--id", "4", "--cluster", flagTestCluster3 + ",http://127.0.0.1:42379", "--join", "http://127.0.0.1:12380"}, func(c config) error {
			if c.join != "http://127.0.0.1:12380" || c.peerURL() != "http://127.0.0.1:42379" || c.clusterID != 0 {
				return fmt.Errorf("join %q, peer URL %s, cluster ID %x (want 0: learned by joining)", c.join, c.peerURL(), c.clusterID)
			}
			return nil
		}},
		{"join as a learner that stays one", []string{"--id", "4", "--cluster", "4=http://127.0.0.1:22379", "--port", "22380", "--join", "http://127.0.0.1:12380", "--learner"}, func(c config) error {
			if !c.stayLearner || c.join != "http://127.0.0.1:12380" {
				return fmt.Errorf("learner %v, join %q", c.stayLearner, c.join)
			}
			return nil
		}},
		{"join listing only itself", []string{"--id", "4", "--cluster", "4=http://127.0.0.1:22379", "--port", "22380", "--join", "http://127.0.0.1:12380", "--data-dir", "raftkv-4"}, func(c config) error {
			if len(c.cluster) != 1 || c.peerURL() != "http://127.0.0.1:22379" || c.clientURL != "http://127.0.0.1:22380" || c.dataDir != "raftkv-4" {
				return fmt.Errorf("cluster %v, peer URL %s, client URL %s, data dir %s", c.cluster, c.peerURL(), c.clientURL, c.dataDir)
			}
			return nil
		}},
		{"id=URL entries", []string{"--id", "3", "--cluster", "1=http://127.0.0.1:12379,3=http://127.0.0.1:32379,4=HTTP://127.0.0.1:042379/"}, func(c config) error {
			want := map[uint64]string{1: "http://127.0.0.1:12379", 3: "http://127.0.0.1:32379", 4: "http://127.0.0.1:42379"}
			if !maps.Equal(c.cluster, want) || c.peerURL() != "http://127.0.0.1:32379" || c.dataDir != "raftkv-3" {
				return fmt.Errorf("cluster %v, peer URL %s, data dir %s", c.cluster, c.peerURL(), c.dataDir)
			}
			return nil
		}},
		{"id=URL and positional give one cluster ID", []string{"--id", "2", "--cluster", "3=http://127.0.0.1:32379,2=http://127.0.0.1:22379,1=http://127.0.0.1:12379"}, func(c config) error {
			if want := deriveClusterID(positionalCluster(strings.Split(flagTestCluster3, ",")), defaultClusterToken); c.clusterID != want {
				return fmt.Errorf("cluster ID %x, want %x as from the positional form", c.clusterID, want)
			}
			return nil
		}},
		{"largest id", []string{"--id", fmt.Sprint(maxMemberID), "--cluster", fmt.Sprintf("%d=http://127.0.0.1:12379", maxMemberID)}, func(c config) error {
			if c.id != maxMemberID || c.peerURL() != "http://127.0.0.1:12379" {
				return fmt.Errorf("id %d, peer URL %s", c.id, c.peerURL())
			}
			return nil
		}},
		{"cluster token", []string{"--id", "2", "--cluster", flagTestCluster3, "--cluster-token", "orders-eu"}, func(c config) error {
			if want := deriveClusterID(c.cluster, "orders-eu"); c.clusterID != want || c.clusterID == deriveClusterID(c.cluster, defaultClusterToken) {
				return fmt.Errorf("cluster ID %x, want %x, not the default token's", c.clusterID, want)
			}
			return nil
		}},
		{"tunables", []string{"--snapshot-count", "1", "--request-timeout", "250ms", "--max-value-bytes", "1", "--log-level", "debug"}, func(c config) error {
			if c.snapshotCount != 1 || c.requestTimeout != 250*time.Millisecond || c.maxValueBytes != 1 || c.logLevel != zapcore.DebugLevel {
				return fmt.Errorf("snapshot count %d, timeout %s, max value %d, log level %s", c.snapshotCount, c.requestTimeout, c.maxValueBytes, c.logLevel)
			}
			return nil
		}},
		{"pprof", []string{"--enable-pprof"}, func(c config) error {
			if !c.enablePprof {
				return errors.New("enable pprof false")
			}
			return nil
		}},
		{"largest max value", []string{"--max-value-bytes", fmt.Sprint(maxValueLimit)}, func(c config) error {
			if c.maxValueBytes != maxValueLimit {
				return fmt.Errorf("max value %d", c.maxValueBytes)
			}
			return nil
		}},
		{"log level error", []string{"--log-level", "error", "--port", "65535"}, func(c config) error {
			if c.logLevel != zapcore.ErrorLevel || c.clientURL != "http://127.0.0.1:65535" {
				return fmt.Errorf("log level %s, client URL %s", c.logLevel, c.clientURL)
			}
			return nil
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseFlags(tc.args)
			if err != nil {
				t.Fatalf("parseFlags(%q): %v", tc.args, err)
			}
			if err := tc.check(cfg); err != nil {
				t.Errorf("parseFlags(%q): %v", tc.args, err)
			}
		})
	}
}

// TestFlagsErrors proves every bad command line is refused with a one-line message naming what is wrong.
func TestFlagsErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string // the message must contain this
	}{
		{"id 0", []string{"--id", "0"}, "--id 0"},
		{"id past cluster", []string{"--id", "4", "--cluster", flagTestCluster3}, "--id 4"},
		{"id past max", []string{"--id", fmt.Sprint(maxMemberID + 1), "--cluster", fmt.Sprintf("%d=http://127.0.0.1:12379", maxMemberID+1)}, "member id must be 1 to 65535"},
		{"id=URL without own entry", []string{"--id", "2", "--cluster", "1=http://127.0.0.1:12379,3=http://127.0.0.1:32379"}, "no peer URL for member 2"},
		{"id=URL mixed with positional", []string{"--id", "1", "--cluster", "1=http://127.0.0.1:12379,http://127.0.0.1:22379"}, "mixes id=URL entries with positional ones"},
		{"positional mixed with id=URL", []string{"--id", "1", "--cluster", "http://127.0.0.1:12379,2=http://127.0.0.1:22379"}, "mixes id=URL entries with positional ones"},
		{"id=URL duplicate id", []string{"--id", "1", "--cluster", "1=http://127.0.0.1:12379,1=http://127.0.0.1:22379"}, "member id 1 is listed twice"},
		{"id=URL duplicate id with zeros", []string{"--id", "1", "--cluster", "1=http://127.0.0.1:12379,01=http://127.0.0.1:22379"}, "member id 1 is listed twice"},
		{"id=URL duplicate URL", []string{"--id", "1", "--cluster", "1=http://127.0.0.1:12379,4=http://127.0.0.1:012379"}, "listed twice, for members 1 and 4"},
		{"id=URL id 0", []string{"--id", "1", "--cluster", "0=http://127.0.0.1:12379"}, "member id must be 1 to"},
		{"id=URL id not a number", []string{"--id", "1", "--cluster", "one=http://127.0.0.1:12379"}, `entry "one=http://127.0.0.1:12379"`},
		{"id=URL id negative", []string{"--id", "1", "--cluster", "-1=http://127.0.0.1:12379"}, "member id must be 1 to"},
		{"id=URL empty URL", []string{"--id", "1", "--cluster", "1="}, "--cluster"},
		{"id=URL bad URL", []string{"--id", "1", "--cluster", "1=ftp://127.0.0.1:12379"}, "scheme must be http"},
		{"id=URL no id", []string{"--id", "1", "--cluster", "=http://127.0.0.1:12379"}, "member id must be 1 to"},
		{"token empty", []string{"--cluster-token", ""}, "--cluster-token"},
		{"token with a space", []string{"--cluster-token", "my cluster"}, "no white space"},
		{"token with a newline", []string{"--cluster-token", "a\nb"}, "--cluster-token"},
		{"token with a control character", []string{"--cluster-token", "a\x00b"}, "only printable"},
		{"token not UTF-8", []string{"--cluster-token", "a\xffb"}, "not UTF-8"},
		{"token too long", []string{"--cluster-token", strings.Repeat("t", maxClusterTokenBytes+1)}, "1 to 256 bytes"},
		{"id negative", []string{"--id", "-1"}, "-id"},
		{"cluster URL without port", []string{"--cluster", "http://127.0.0.1"}, "--cluster"},
		{"cluster URL without scheme", []string{"--cluster", "127.0.0.1:12379"}, "--cluster"},
		{"cluster URL ftp", []string{"--cluster", "ftp://127.0.0.1:12379"}, "--cluster"},
		{"cluster empty entry", []string{"--id", "1", "--cluster", "http://127.0.0.1:12379,"}, "--cluster"},
		{"cluster duplicate", []string{"--id", "1", "--cluster", "http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:12379"}, "listed twice"},
		{"cluster duplicate after normalising", []string{"--id", "1", "--cluster", "http://127.0.0.1:12379,HTTP://127.0.0.1:012379/"}, "listed twice"},
		{"cluster https", []string{"--cluster", "https://127.0.0.1:12379"}, "TLS"},
		{"cluster unix", []string{"--cluster", "unix://127.0.0.1:12379"}, "scheme must be http"},
		{"cluster leading space", []string{"--cluster", " http://127.0.0.1:12379"}, "white space"},
		{"cluster port 99999", []string{"--cluster", "http://127.0.0.1:99999"}, "port from 1 to 65535"},
		{"cluster port 0", []string{"--cluster", "http://127.0.0.1:0"}, "port from 1 to 65535"},
		{"cluster long host", []string{"--cluster", "http://" + strings.Repeat("a", 10000) + ":1"}, "longer than"},
		{"cluster bad host", []string{"--cluster", "http://a_b:1"}, "not a DNS name"},
		{"cluster user info", []string{"--cluster", "http://u:p@127.0.0.1:1"}, "user info"},
		{"cluster query", []string{"--cluster", "http://127.0.0.1:1?x"}, "no path, query"},
		{"cluster fragment", []string{"--cluster", "http://127.0.0.1:1#x"}, "no path, query"},
		{"client URL https", []string{"--client-url", "https://127.0.0.1:12380"}, "TLS"},
		{"client URL is a peer URL", []string{"--cluster", "http://127.0.0.1:12379", "--client-url", "http://127.0.0.1:12379"}, "also a peer URL"},
		{"listen peer URL without port", []string{"--listen-peer-url", "http://127.0.0.1"}, "--listen-peer-url"},
		{"port 0", []string{"--port", "0"}, "--port 0"},
		{"port 0 with client URL", []string{"--port", "0", "--client-url", "http://127.0.0.1:1"}, "--port 0"},
		{"port too high", []string{"--port", "65536"}, "--port 65536"},
		{"port not a number", []string{"--port", "http"}, "-port"},
		{"client URL without scheme", []string{"--client-url", "localhost"}, "--client-url"},
		{"client URL without port", []string{"--client-url", "http://localhost"}, "--client-url"},
		{"client URL with path", []string{"--client-url", "http://localhost:1/kv"}, "--client-url"},
		{"snapshot count 0", []string{"--snapshot-count", "0"}, "--snapshot-count"},
		{"request timeout 0", []string{"--request-timeout", "0"}, "--request-timeout"},
		{"request timeout negative", []string{"--request-timeout", "-1s"}, "--request-timeout"},
		{"request timeout no unit", []string{"--request-timeout", "5"}, "-request-timeout"},
		{"max value 0", []string{"--max-value-bytes", "0"}, "--max-value-bytes"},
		{"max value 9 MiB", []string{"--max-value-bytes", fmt.Sprint(9 << 20)}, "--max-value-bytes"},
		{"max value past limit", []string{"--max-value-bytes", fmt.Sprint(maxValueLimit + 1)}, "--max-value-bytes"},
		{"log level loud", []string{"--log-level", "loud"}, "--log-level"},
		{"log level fatal", []string{"--log-level", "fatal"}, "--log-level"},
		{"log level panic", []string{"--log-level", "panic"}, "--log-level"},
		{"unknown flag", []string{"--verbose"}, "verbose"},
		{"stray argument", []string{"--id", "1", "start"}, "start"},
		{"stray argument after flags end", []string{"--", "--id", "2"}, "--id"},
		{"join without scheme", []string{"--join", "nope"}, "--join"},
		{"join with path", []string{"--join", "http://127.0.0.1:12380/members"}, "--join"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseFlags(tc.args)
			if err == nil {
				t.Fatalf("parseFlags(%q) = %+v, want an error", tc.args, cfg)
			}
			msg := err.Error()
			if strings.TrimSpace(msg) == "" || strings.ContainsAny(msg, "\r\n") {
				t.Errorf("parseFlags(%q): error %q is not one non-empty line", tc.args, msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("parseFlags(%q): error %q does not mention %q", tc.args, msg, tc.want)
			}
			if errors.Is(err, flag.ErrHelp) {
				t.Errorf("parseFlags(%q): a bad command line is reported as a request for help", tc.args)
			}
		})
	}
}

// flagTestConfig is a valid one-member config on fresh loopback ports,
// keeping its data in dataDir.
func flagTestConfig(t *testing.T, dataDir string) config {
	cluster := map[uint64]string{1: "http://" + freeAddr(t)}
	cfg := testConfigDefaults()
	cfg.id = 1
	cfg.cluster = cluster
	cfg.clusterID = deriveClusterID(cluster, defaultClusterToken)
	cfg.clientURL = "http://" + freeAddr(t)
	cfg.dataDir = dataDir
	return cfg
}

// flagTestStart runs startServer, failing the test if it panics or takes
// more than 5s.
func flagTestStart(t *testing.T, cfg config) (*server, error) {
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
		r.s, r.err = startServer(context.Background(), cfg, testLogger(cfg.logLevel))
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
		setup func(t *testing.T, cfg *config) (release func())
		want  func(cfg config) string // what the error must mention
	}{
		{"data dir under a regular file", func(t *testing.T, cfg *config) func() {
			file := filepath.Join(t.TempDir(), "file")
			if err := os.WriteFile(file, []byte("not a directory"), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg.dataDir = filepath.Join(file, "raftkv-1")
			return func() {}
		}, func(cfg config) string { return cfg.dataDir }},
		{"client port taken", func(t *testing.T, cfg *config) func() {
			ln, err := net.Listen("tcp", flagTestHostPort(cfg.clientURL))
			if err != nil {
				t.Fatal(err)
			}
			return func() { ln.Close() }
		}, func(cfg config) string { return flagTestHostPort(cfg.clientURL) }},
		{"peer port taken", func(t *testing.T, cfg *config) func() {
			ln, err := net.Listen("tcp", flagTestHostPort(cfg.peerURL()))
			if err != nil {
				t.Fatal(err)
			}
			return func() { ln.Close() }
		}, func(cfg config) string { return flagTestHostPort(cfg.peerURL()) }},
		{"--learner on a first start without --join", func(t *testing.T, cfg *config) func() {
			cfg.stayLearner = true
			return func() {}
		}, func(cfg config) string { return "--learner needs --join" }},
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
			for _, u := range []string{cfg.clientURL, cfg.peerURL()} {
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
	ln, err := net.Listen("tcp", flagTestHostPort(cfg.peerURL()))
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
				s.raft.leaderID(), s.raft.status().Config.Voters, s.store.memberList())
		}
	}()
	// A lone member elects itself within a few election timeouts.
	eventually(t, 3*time.Second, "the retried member to elect itself", func() bool {
		return s.raft.leaderID() == cfg.id
	})
}
