// Package config is what a member is started with: the flags of `raftkv`,
// their defaults, and the checks that they make sense together. main
// parses the command line with Parse, and the raft server reads the Config
// it returns.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap/zapcore"

	"raftkv/idempotency"
	"raftkv/limits"
	"raftkv/membership"
	"raftkv/tlsconfig"
	"raftkv/watch"
)

// Config is everything a member is started with.
type Config struct {
	ID             uint64
	Cluster        map[uint64]string // peer URL by member id, from --cluster; after a join, the members of the cluster joined
	ClusterID      uint64            // what a first start records in its WAL: derived from cluster and --cluster-token, or learned by joining
	ListenPeerURL  string            // where to accept peer connections; "" means PeerURL()
	ClientURL      string            // advertised to the cluster and listened on
	DataDir        string
	Join           string // client URL of a running member to ask to add us; "" when not joining
	StayLearner    bool   // --learner: never ask to be promoted (package join)
	SnapshotCount  uint64
	RequestTimeout time.Duration
	MaxValueBytes  int64
	// IdempotencyWindow is how many Idempotency-Keys the cluster remembers;
	// this member's entries carry it (package idempotency).
	IdempotencyWindow uint64
	// WatchHistoryBytes bounds the changes this member keeps for watchers
	// (package watch).
	WatchHistoryBytes int
	LogLevel          zapcore.Level
	EnablePprof       bool          // serve Go's profiles under /debug/pprof/ on the client URL
	ForceNewCluster   bool          // restart as the only member, from this member's data (package recovery)
	TickInterval      time.Duration // one raft clock tick; not a flag, tests shorten it
	WatchKeepAlive    time.Duration // how often an idle watch stream hears from us; not a flag, tests shorten it
	// How long a client or peer connection may go without progress
	// (package limits); not flags, tests shorten them.
	ClientConnLimits, PeerConnLimits limits.Conn
	// TLS is the TLS flags of each port; a port without them is plain http.
	TLS tlsconfig.Flags
}

// PeerURL is where this member's peers reach it.
func (c Config) PeerURL() string { return c.Cluster[c.ID] }

// PeerListenURL is where this member accepts peer connections: its peer
// URL, unless peers reach it through something in between, such as a
// proxy (as in etcd, the URL advertised and the one listened on may differ).
func (c Config) PeerListenURL() string {
	if c.ListenPeerURL != "" {
		return c.ListenPeerURL
	}
	return c.PeerURL()
}

// URLs are this member's URLs, as the TLS checks see them.
func (c Config) URLs() tlsconfig.URLs {
	return tlsconfig.URLs{Client: c.ClientURL, Peer: c.PeerURL(), ListenPeer: c.ListenPeerURL, Cluster: c.Cluster, Join: c.Join}
}

// ErrShowVersion is --version: print the build's line and exit 0.
var ErrShowVersion = errors.New("--version")

// MaxValueLimit keeps an entry well inside the WAL's 10 MiB record limit.
const MaxValueLimit = 8 << 20

// ClientLimits are the client port's connection bounds.
func (c Config) ClientLimits() limits.Conn { return c.ClientConnLimits.Client() }

// PeerLimits are the peer port's connection bounds.
func (c Config) PeerLimits() limits.Conn { return c.PeerConnLimits.Peer() }

// Parse turns the command line into a checked Config.
func Parse(args []string) (Config, error) {
	fs := flag.NewFlagSet("raftkv", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // main reports a bad flag in one line; -h prints usage below
	id := fs.Uint64("id", 1, "member id, from 1: this member's position in a positional --cluster, or its id=URL entry")
	cluster := fs.String("cluster", "http://127.0.0.1:9021", "the initial members, comma-separated: peer URLs by position, member 1's first, or id=URL entries; with --join, this member's entry is enough")
	clusterToken := fs.String("cluster-token", membership.DefaultClusterToken, "with --cluster, derives the cluster ID at a first start without --join; give each cluster its own")
	port := fs.Int("port", 9121, "client API port; sets the default --client-url")
	listenPeerURL := fs.String("listen-peer-url", "", "URL to accept peer connections on, when peers reach this member through a proxy (default: its --cluster URL)")
	clientURL := fs.String("client-url", "", "client URL to advertise to the cluster and listen on (default http://127.0.0.1:<port>, https with --cert-file)")
	dataDir := fs.String("data-dir", "", "directory for the WAL and snapshots (default raftkv-<id>)")
	joinURL := fs.String("join", "", "client URL of a running member: ask it to add this member as a learner, start as a new member, and ask to be promoted to a voter once caught up")
	learner := fs.Bool("learner", false, "with --join, stay a learner: never ask to be promoted (POST /members/{id}/promote does it)")
	snapshotCount := fs.Uint64("snapshot-count", 10000, "applied entries between snapshots")
	requestTimeout := fs.Duration("request-timeout", 5*time.Second, "how long a request may wait for raft")
	maxValueBytes := fs.Int64("max-value-bytes", 1<<20, "largest value a PUT accepts")
	idempotencyWindow := fs.Uint64("idempotency-window", idempotency.DefaultWindow, "how many recent Idempotency-Keys the cluster remembers, to answer retries exactly once")
	watchHistoryBytes := fs.Int("watch-history-bytes", watch.DefaultHistoryBytes, "how many bytes of recent changes this member keeps, so that a watch can resume from an earlier index")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	enablePprof := fs.Bool("enable-pprof", false, "serve Go's runtime profiles under /debug/pprof/ on the client URL")
	showVersion := fs.Bool("version", false, "print raftkv's version, and raft's and etcd's, and exit")
	tlsFlags := tlsconfig.AddFlags(fs)
	forceNewCluster := fs.Bool("force-new-cluster", false, "restart this member alone, as a one-member cluster, from its own data, when a majority is lost for good; once, then restart without it")

	err := fs.Parse(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fs.Usage()
		}
		return Config{}, err
	}
	if *showVersion {
		return Config{}, ErrShowVersion
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	cfg := Config{
		ID:                *id,
		ListenPeerURL:     *listenPeerURL,
		ClientURL:         *clientURL,
		DataDir:           *dataDir,
		Join:              *joinURL,
		StayLearner:       *learner,
		SnapshotCount:     *snapshotCount,
		RequestTimeout:    *requestTimeout,
		MaxValueBytes:     *maxValueBytes,
		IdempotencyWindow: *idempotencyWindow,
		WatchHistoryBytes: *watchHistoryBytes,
		TickInterval:      100 * time.Millisecond,
		WatchKeepAlive:    watch.DefaultKeepAlive,
		EnablePprof:       *enablePprof,
		TLS:               *tlsFlags,
		ForceNewCluster:   *forceNewCluster,
	}
	if cfg.Cluster, err = membership.ParseCluster(*cluster); err != nil {
		return Config{}, err
	}
	if err := membership.CheckIDInCluster(cfg.ID, cfg.Cluster); err != nil {
		return Config{}, err
	}
	if err := membership.CheckClusterToken(*clusterToken); err != nil {
		return Config{}, err
	}
	if cfg.Join == "" {
		// A joining member learns the ID from the cluster it joins.
		cfg.ClusterID = membership.DeriveClusterID(cfg.Cluster, *clusterToken)
	}
	if cfg.ListenPeerURL != "" {
		if cfg.ListenPeerURL, err = membership.NormalizeURL(cfg.ListenPeerURL); err != nil {
			return Config{}, fmt.Errorf("--listen-peer-url: %w", err)
		}
	}
	if *port < 1 || *port > 65535 {
		return Config{}, fmt.Errorf("--port %d: must be 1 to 65535", *port)
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = fmt.Sprintf("%s://127.0.0.1:%d", tlsFlags.ClientScheme(), *port)
	}
	if cfg.ClientURL, err = membership.NormalizeURL(cfg.ClientURL); err != nil {
		return Config{}, fmt.Errorf("--client-url: %w", err)
	}
	for id, u := range cfg.Cluster {
		if u == cfg.ClientURL {
			return Config{}, fmt.Errorf("--client-url %s is also a peer URL in --cluster, member %d's", cfg.ClientURL, id)
		}
	}
	if cfg.DataDir == "" {
		cfg.DataDir = fmt.Sprintf("raftkv-%d", cfg.ID)
	}
	if cfg.ForceNewCluster && cfg.Join != "" {
		return Config{}, errors.New("--force-new-cluster restarts a member from its own data; it cannot --join")
	}
	if cfg.Join != "" {
		if cfg.Join, err = membership.NormalizeURL(cfg.Join); err != nil {
			return Config{}, fmt.Errorf("--join: %w", err)
		}
	}
	if cfg.SnapshotCount < 1 {
		return Config{}, errors.New("--snapshot-count must be at least 1")
	}
	if cfg.RequestTimeout <= 0 {
		return Config{}, errors.New("--request-timeout must be positive")
	}
	if cfg.IdempotencyWindow < 1 || cfg.IdempotencyWindow > idempotency.MaxWindow {
		return Config{}, fmt.Errorf("--idempotency-window must be 1 to %d", idempotency.MaxWindow)
	}
	if cfg.WatchHistoryBytes < 0 {
		return Config{}, errors.New("--watch-history-bytes must not be negative")
	}
	if cfg.MaxValueBytes < 1 || cfg.MaxValueBytes > MaxValueLimit {
		return Config{}, fmt.Errorf("--max-value-bytes must be 1 to %d", MaxValueLimit)
	}
	if err := cfg.LogLevel.Set(*logLevel); err != nil || cfg.LogLevel > zapcore.ErrorLevel {
		return Config{}, fmt.Errorf("--log-level %q: use debug, info, warn or error", *logLevel)
	}
	if err := cfg.TLS.Check(cfg.URLs()); err != nil {
		return Config{}, err
	}
	return cfg, nil
}
