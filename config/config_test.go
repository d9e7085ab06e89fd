package config

import (
	"errors"
	"flag"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"raftkv/idempotency"
	"raftkv/limits"
	"raftkv/membership"
)

// flagTestCluster3 is a valid --cluster of three members.
const flagTestCluster3 = "http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379"

// TestFlagsDefaults proves an empty command line gives the documented defaults.
func TestFlagsDefaults(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil {
		t.Fatalf("Parse(nil): %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"id", cfg.ID, uint64(1)},
		{"cluster", fmt.Sprint(cfg.Cluster), "map[1:http://127.0.0.1:9021]"},
		{"cluster ID", cfg.ClusterID, membership.DeriveClusterID(map[uint64]string{1: "http://127.0.0.1:9021"}, "raftkv-cluster")},
		{"client URL", cfg.ClientURL, "http://127.0.0.1:9121"},
		{"data dir", cfg.DataDir, "raftkv-1"},
		{"join", cfg.Join, ""},
		{"learner", cfg.StayLearner, false},
		{"snapshot count", cfg.SnapshotCount, uint64(10000)},
		{"request timeout", cfg.RequestTimeout, 5 * time.Second},
		{"max value bytes", cfg.MaxValueBytes, int64(1 << 20)},
		{"log level", cfg.LogLevel, zapcore.InfoLevel},
		{"tick", cfg.TickInterval, 100 * time.Millisecond},
		{"peer URL", cfg.PeerURL(), "http://127.0.0.1:9021"},
		{"peer listen URL", cfg.PeerListenURL(), "http://127.0.0.1:9021"},
		{"idempotency window", cfg.IdempotencyWindow, uint64(idempotency.DefaultWindow)},
		{"watch history bytes", cfg.WatchHistoryBytes, 16 << 20},
		{"watch keep-alive", cfg.WatchKeepAlive, 15 * time.Second},
		{"pprof", cfg.EnablePprof, false},
		{"force new cluster", cfg.ForceNewCluster, false},
		{"client scheme", cfg.TLS.ClientScheme(), "http"},
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
		check func(Config) error
	}{
		{"procfile member 2", []string{"--id", "2", "--cluster", flagTestCluster3, "--port", "22380"}, func(c Config) error {
			if c.ID != 2 || len(c.Cluster) != 3 || c.Cluster[3] != "http://127.0.0.1:32379" || c.PeerURL() != "http://127.0.0.1:22379" ||
				c.ClientURL != "http://127.0.0.1:22380" || c.DataDir != "raftkv-2" {
				return fmt.Errorf("id %d, cluster %v, peer URL %s, client URL %s, data dir %s", c.ID, c.Cluster, c.PeerURL(), c.ClientURL, c.DataDir)
			}
			return nil
		}},
		{"listen behind a proxy", []string{"--id", "2", "--cluster", flagTestCluster3, "--listen-peer-url", "http://127.0.0.1:22999"}, func(c Config) error {
			if c.PeerURL() != "http://127.0.0.1:22379" || c.PeerListenURL() != "http://127.0.0.1:22999" {
				return fmt.Errorf("peer URL %s, peer listen URL %s", c.PeerURL(), c.PeerListenURL())
			}
			return nil
		}},
		{"single dash", []string{"-id", "3", "-cluster", flagTestCluster3}, func(c Config) error {
			if c.ID != 3 || c.DataDir != "raftkv-3" {
				return fmt.Errorf("id %d, data dir %s", c.ID, c.DataDir)
			}
			return nil
		}},
		{"client URL wins over port", []string{"--port", "1234", "--client-url", "http://kv.example:8443"}, func(c Config) error {
			if c.ClientURL != "http://kv.example:8443" {
				return fmt.Errorf("client URL %s", c.ClientURL)
			}
			return nil
		}},
		{"URLs normalised", []string{"--id", "2", "--cluster", "HTTP://127.0.0.1:12379/,http://LocalHost:022379", "--client-url", "Http://KV.example:08443/", "--join", "http://127.0.0.1:12380/"}, func(c Config) error {
			if c.Cluster[1] != "http://127.0.0.1:12379" || c.PeerURL() != "http://localhost:22379" || c.ClientURL != "http://kv.example:8443" || c.Join != "http://127.0.0.1:12380" {
				return fmt.Errorf("cluster %v, client URL %s, join %s", c.Cluster, c.ClientURL, c.Join)
			}
			return nil
		}},
		{"data dir", []string{"--data-dir", "/var/lib/raftkv"}, func(c Config) error {
			if c.DataDir != "/var/lib/raftkv" {
				return fmt.Errorf("data dir %s", c.DataDir)
			}
			return nil
		}},
		{"join", []string{"--id", "4", "--cluster", flagTestCluster3 + ",http://127.0.0.1:42379", "--join", "http://127.0.0.1:12380"}, func(c Config) error {
			if c.Join != "http://127.0.0.1:12380" || c.PeerURL() != "http://127.0.0.1:42379" || c.ClusterID != 0 {
				return fmt.Errorf("join %q, peer URL %s, cluster ID %x (want 0: learned by joining)", c.Join, c.PeerURL(), c.ClusterID)
			}
			return nil
		}},
		{"join as a learner that stays one", []string{"--id", "4", "--cluster", "4=http://127.0.0.1:22379", "--port", "22380", "--join", "http://127.0.0.1:12380", "--learner"}, func(c Config) error {
			if !c.StayLearner || c.Join != "http://127.0.0.1:12380" {
				return fmt.Errorf("learner %v, join %q", c.StayLearner, c.Join)
			}
			return nil
		}},
		{"join listing only itself", []string{"--id", "4", "--cluster", "4=http://127.0.0.1:22379", "--port", "22380", "--join", "http://127.0.0.1:12380", "--data-dir", "raftkv-4"}, func(c Config) error {
			if len(c.Cluster) != 1 || c.PeerURL() != "http://127.0.0.1:22379" || c.ClientURL != "http://127.0.0.1:22380" || c.DataDir != "raftkv-4" {
				return fmt.Errorf("cluster %v, peer URL %s, client URL %s, data dir %s", c.Cluster, c.PeerURL(), c.ClientURL, c.DataDir)
			}
			return nil
		}},
		{"id=URL entries", []string{"--id", "3", "--cluster", "1=http://127.0.0.1:12379,3=http://127.0.0.1:32379,4=HTTP://127.0.0.1:042379/"}, func(c Config) error {
			want := map[uint64]string{1: "http://127.0.0.1:12379", 3: "http://127.0.0.1:32379", 4: "http://127.0.0.1:42379"}
			if !maps.Equal(c.Cluster, want) || c.PeerURL() != "http://127.0.0.1:32379" || c.DataDir != "raftkv-3" {
				return fmt.Errorf("cluster %v, peer URL %s, data dir %s", c.Cluster, c.PeerURL(), c.DataDir)
			}
			return nil
		}},
		{"id=URL and positional give one cluster ID", []string{"--id", "2", "--cluster", "3=http://127.0.0.1:32379,2=http://127.0.0.1:22379,1=http://127.0.0.1:12379"}, func(c Config) error {
			if want := membership.DeriveClusterID(membership.PositionalCluster(strings.Split(flagTestCluster3, ",")), membership.DefaultClusterToken); c.ClusterID != want {
				return fmt.Errorf("cluster ID %x, want %x as from the positional form", c.ClusterID, want)
			}
			return nil
		}},
		{"largest id", []string{"--id", fmt.Sprint(membership.MaxMemberID), "--cluster", fmt.Sprintf("%d=http://127.0.0.1:12379", membership.MaxMemberID)}, func(c Config) error {
			if c.ID != membership.MaxMemberID || c.PeerURL() != "http://127.0.0.1:12379" {
				return fmt.Errorf("id %d, peer URL %s", c.ID, c.PeerURL())
			}
			return nil
		}},
		{"cluster token", []string{"--id", "2", "--cluster", flagTestCluster3, "--cluster-token", "orders-eu"}, func(c Config) error {
			if want := membership.DeriveClusterID(c.Cluster, "orders-eu"); c.ClusterID != want || c.ClusterID == membership.DeriveClusterID(c.Cluster, membership.DefaultClusterToken) {
				return fmt.Errorf("cluster ID %x, want %x, not the default token's", c.ClusterID, want)
			}
			return nil
		}},
		{"tunables", []string{"--snapshot-count", "1", "--request-timeout", "250ms", "--max-value-bytes", "1", "--log-level", "debug"}, func(c Config) error {
			if c.SnapshotCount != 1 || c.RequestTimeout != 250*time.Millisecond || c.MaxValueBytes != 1 || c.LogLevel != zapcore.DebugLevel {
				return fmt.Errorf("snapshot count %d, timeout %s, max value %d, log level %s", c.SnapshotCount, c.RequestTimeout, c.MaxValueBytes, c.LogLevel)
			}
			return nil
		}},
		{"pprof", []string{"--enable-pprof"}, func(c Config) error {
			if !c.EnablePprof {
				return errors.New("enable pprof false")
			}
			return nil
		}},
		{"largest max value", []string{"--max-value-bytes", fmt.Sprint(MaxValueLimit)}, func(c Config) error {
			if c.MaxValueBytes != MaxValueLimit {
				return fmt.Errorf("max value %d", c.MaxValueBytes)
			}
			return nil
		}},
		{"windows", []string{"--idempotency-window", "1", "--watch-history-bytes", "0"}, func(c Config) error {
			if c.IdempotencyWindow != 1 || c.WatchHistoryBytes != 0 {
				return fmt.Errorf("idempotency window %d, watch history bytes %d", c.IdempotencyWindow, c.WatchHistoryBytes)
			}
			return nil
		}},
		{"largest idempotency window", []string{"--idempotency-window", fmt.Sprint(idempotency.MaxWindow)}, func(c Config) error {
			if c.IdempotencyWindow != idempotency.MaxWindow {
				return fmt.Errorf("idempotency window %d", c.IdempotencyWindow)
			}
			return nil
		}},
		{"force new cluster", []string{"--force-new-cluster"}, func(c Config) error {
			if !c.ForceNewCluster {
				return errors.New("force new cluster false")
			}
			return nil
		}},
		{"log level error", []string{"--log-level", "error", "--port", "65535"}, func(c Config) error {
			if c.LogLevel != zapcore.ErrorLevel || c.ClientURL != "http://127.0.0.1:65535" {
				return fmt.Errorf("log level %s, client URL %s", c.LogLevel, c.ClientURL)
			}
			return nil
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse(tc.args)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.args, err)
			}
			if err := tc.check(cfg); err != nil {
				t.Errorf("Parse(%q): %v", tc.args, err)
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
		{"id past max", []string{"--id", fmt.Sprint(membership.MaxMemberID + 1), "--cluster", fmt.Sprintf("%d=http://127.0.0.1:12379", membership.MaxMemberID+1)}, "member id must be 1 to 65535"},
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
		{"token too long", []string{"--cluster-token", strings.Repeat("t", 257)}, "1 to 256 bytes"},
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
		{"max value past limit", []string{"--max-value-bytes", fmt.Sprint(MaxValueLimit + 1)}, "--max-value-bytes"},
		{"idempotency window 0", []string{"--idempotency-window", "0"}, "--idempotency-window"},
		{"idempotency window past max", []string{"--idempotency-window", fmt.Sprint(idempotency.MaxWindow + 1)}, "--idempotency-window must be 1 to 10000000"},
		{"watch history negative", []string{"--watch-history-bytes", "-1"}, "--watch-history-bytes"},
		{"force new cluster with join", []string{"--force-new-cluster", "--join", "http://127.0.0.1:12380"}, "cannot --join"},
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
			cfg, err := Parse(tc.args)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tc.args, cfg)
			}
			msg := err.Error()
			if strings.TrimSpace(msg) == "" || strings.ContainsAny(msg, "\r\n") {
				t.Errorf("Parse(%q): error %q is not one non-empty line", tc.args, msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("Parse(%q): error %q does not mention %q", tc.args, msg, tc.want)
			}
			if errors.Is(err, flag.ErrHelp) {
				t.Errorf("Parse(%q): a bad command line is reported as a request for help", tc.args)
			}
		})
	}
}

// TestFlagsVersion proves --version asks for the version, whatever else
// the command line says. (The root's TestVersionFlag runs the binary.)
func TestFlagsVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"--version", "--id", "0"}} {
		if _, err := Parse(args); !errors.Is(err, ErrShowVersion) {
			t.Errorf("Parse(%q): %v, want the version shown", args, err)
		}
	}
	if _, err := Parse([]string{"--version=false"}); err != nil {
		t.Errorf("Parse(--version=false): %v", err)
	}
}

// TestConfigConnLimits proves a config's zero connection bounds take each
// port's defaults (package limits), and set ones are kept.
func TestConfigConnLimits(t *testing.T) {
	var cfg Config
	if got, want := cfg.ClientLimits(), (limits.Conn{}).Client(); got != want || got.Header == 0 {
		t.Errorf("default client limits %+v, want %+v", got, want)
	}
	if got, want := cfg.PeerLimits(), (limits.Conn{}).Peer(); got != want || got.Header == 0 {
		t.Errorf("default peer limits %+v, want %+v", got, want)
	}
	cfg.ClientConnLimits = limits.Conn{Body: time.Second}
	cfg.PeerConnLimits = limits.Conn{Idle: time.Millisecond}
	if got := cfg.ClientLimits(); got.Body != time.Second || got.Header != (limits.Conn{}).Client().Header {
		t.Errorf("client limits with body set to 1s: %+v", got)
	}
	if got := cfg.PeerLimits(); got.Idle != time.Millisecond || got.Body != (limits.Conn{}).Peer().Body {
		t.Errorf("peer limits with idle set to 1ms: %+v", got)
	}
}
