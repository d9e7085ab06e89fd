// Command raftkv is a replicated key-value server: an HTTP API in front of a
// raft log (go.etcd.io/raft) kept in etcd's WAL and snapshot files and
// replicated to peers over etcd's rafthttp.
//
// A request travels one way through the pipeline wired up in startServer:
//
//	handler -> proposeC / confChangeC -> raftNode -> WAL fsync + peers -> committed entries -> applyC -> kvstore -> waiting handler
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// config is everything a member is started with.
type config struct {
	id             uint64
	cluster        map[uint64]string // peer URL by member id, from --cluster; after a join, the members of the cluster joined
	clusterID      uint64            // what a first start records in its WAL: derived from cluster and --cluster-token, or learned by joining
	listenPeerURL  string            // where to accept peer connections; "" means peerURL()
	clientURL      string            // advertised to the cluster and listened on
	dataDir        string
	join           string // client URL of a running member to ask to add us; "" when not joining
	stayLearner    bool   // --learner: never ask to be promoted (autopromote.go)
	snapshotCount  uint64
	requestTimeout time.Duration
	maxValueBytes  int64
	// idempotencyWindow is how many Idempotency-Keys the cluster remembers;
	// this member's entries carry it (idempotency.go).
	idempotencyWindow uint64
	// watchHistoryBytes bounds the changes this member keeps for watchers
	// (watch.go).
	watchHistoryBytes int
	logLevel          zapcore.Level
	enablePprof       bool          // serve Go's profiles under /debug/pprof/ on the client URL
	forceNewCluster   bool          // restart as the only member, from this member's data (forcenewcluster.go)
	tickInterval      time.Duration // one raft clock tick; not a flag, tests shorten it
	watchKeepAlive    time.Duration // how often an idle watch stream hears from us; not a flag, tests shorten it
	// How long a client or peer connection may go without progress (see
	// connLimits); not flags, tests shorten them.
	clientConnLimits, peerConnLimits connLimits
	// clientTLS and peerTLS are the TLS flags of each port (tls.go); empty
	// for a port on plain http.
	clientTLS, peerTLS transport.TLSInfo
}

// peerURL is where this member's peers reach it.
func (c config) peerURL() string { return c.cluster[c.id] }

// peerListenURL is where this member accepts peer connections: its peer
// URL, unless peers reach it through something in between, such as a
// proxy (as in etcd, the URL advertised and the one listened on may differ).
func (c config) peerListenURL() string {
	if c.listenPeerURL != "" {
		return c.listenPeerURL
	}
	return c.peerURL()
}

// maxValueLimit keeps an entry well inside the WAL's 10 MiB record limit.
const maxValueLimit = 8 << 20

// gcPercent is raftkv's default GOGC. A member's heap is mostly its state
// machine, which lives as long as the process; Go's default of 100 lets the
// heap grow to twice that before a collection, so a member holding 1M keys
// (about 190 MiB of map) would sit anywhere up to 380 MiB. At 50 it stays
// within one and a half times, for more frequent collections of a mostly
// live heap. The GOGC environment variable, when set, still wins.
const gcPercent = 50

func main() {
	if len(os.Args) > 1 && os.Args[1] == "restore" {
		os.Exit(runRestore(os.Args[2:], os.Stdout, os.Stderr)) // restore.go
	}
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if errors.Is(err, errShowVersion) {
		fmt.Println(buildInfo().line())
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "raftkv: %v\n", err)
		os.Exit(2)
	}
	lg := newLogger(cfg.logLevel)
	defer lg.Sync()
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, lg); err != nil {
		lg.Sync()
		fmt.Fprintf(os.Stderr, "raftkv: %v\n", err)
		os.Exit(1)
	}
}

// parseFlags turns the command line into a checked config.
func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("raftkv", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // main reports a bad flag in one line; -h prints usage below
	id := fs.Uint64("id", 1, "member id, from 1: this member's position in a positional --cluster, or its id=URL entry")
	cluster := fs.String("cluster", "http://127.0.0.1:9021", "the initial members, comma-separated: peer URLs by position, member 1's first, or id=URL entries; with --join, this member's entry is enough")
	clusterToken := fs.String("cluster-token", defaultClusterToken, "with --cluster, derives the cluster ID at a first start without --join; give each cluster its own")
	port := fs.Int("port", 9121, "client API port; sets the default --client-url")
	listenPeerURL := fs.String("listen-peer-url", "", "URL to accept peer connections on, when peers reach this member through a proxy (default: its --cluster URL)")
	clientURL := fs.String("client-url", "", "client URL to advertise to the cluster and listen on (default http://127.0.0.1:<port>, https with --cert-file)")
	dataDir := fs.String("data-dir", "", "directory for the WAL and snapshots (default raftkv-<id>)")
	join := fs.String("join", "", "client URL of a running member: ask it to add this member as a learner, start as a new member, and ask to be promoted to a voter once caught up")
	learner := fs.Bool("learner", false, "with --join, stay a learner: never ask to be promoted (POST /members/{id}/promote does it)")
	snapshotCount := fs.Uint64("snapshot-count", 10000, "applied entries between snapshots")
	requestTimeout := fs.Duration("request-timeout", 5*time.Second, "how long a request may wait for raft")
	maxValueBytes := fs.Int64("max-value-bytes", 1<<20, "largest value a PUT accepts")
	idempotencyWindow := fs.Uint64("idempotency-window", defaultIdempotencyWindow, "how many recent Idempotency-Keys the cluster remembers, to answer retries exactly once")
	watchHistoryBytes := fs.Int("watch-history-bytes", defaultWatchHistoryBytes, "how many bytes of recent changes this member keeps, so that a watch can resume from an earlier index")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	enablePprof := fs.Bool("enable-pprof", false, "serve Go's runtime profiles under /debug/pprof/ on the client URL")
	showVersion := fs.Bool("version", false, "print raftkv's version, and raft's and etcd's, and exit")
	tlsFlags := addTLSFlags(fs)
	forceNewCluster := fs.Bool("force-new-cluster", false, "restart this member alone, as a one-member cluster, from its own data, when a majority is lost for good; once, then restart without it")

	err := fs.Parse(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fs.Usage()
		}
		return config{}, err
	}
	if *showVersion {
		return config{}, errShowVersion
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	cfg := config{
		id:                *id,
		listenPeerURL:     *listenPeerURL,
		clientURL:         *clientURL,
		dataDir:           *dataDir,
		join:              *join,
		stayLearner:       *learner,
		snapshotCount:     *snapshotCount,
		requestTimeout:    *requestTimeout,
		maxValueBytes:     *maxValueBytes,
		idempotencyWindow: *idempotencyWindow,
		watchHistoryBytes: *watchHistoryBytes,
		tickInterval:      100 * time.Millisecond,
		watchKeepAlive:    watchKeepAlive,
		enablePprof:       *enablePprof,
		clientTLS:         tlsFlags.client,
		peerTLS:           tlsFlags.peer,
		forceNewCluster:   *forceNewCluster,
	}
	if cfg.cluster, err = parseCluster(*cluster); err != nil {
		return config{}, err
	}
	if err := checkIDInCluster(cfg.id, cfg.cluster); err != nil {
		return config{}, err
	}
	if err := checkClusterToken(*clusterToken); err != nil {
		return config{}, err
	}
	if cfg.join == "" {
		// A joining member learns the ID from the cluster it joins.
		cfg.clusterID = deriveClusterID(cfg.cluster, *clusterToken)
	}
	if cfg.listenPeerURL != "" {
		if cfg.listenPeerURL, err = normalizeURL(cfg.listenPeerURL); err != nil {
			return config{}, fmt.Errorf("--listen-peer-url: %w", err)
		}
	}
	if *port < 1 || *port > 65535 {
		return config{}, fmt.Errorf("--port %d: must be 1 to 65535", *port)
	}
	if cfg.clientURL == "" {
		cfg.clientURL = fmt.Sprintf("%s://127.0.0.1:%d", tlsFlags.clientScheme(), *port)
	}
	if cfg.clientURL, err = normalizeURL(cfg.clientURL); err != nil {
		return config{}, fmt.Errorf("--client-url: %w", err)
	}
	for id, u := range cfg.cluster {
		if u == cfg.clientURL {
			return config{}, fmt.Errorf("--client-url %s is also a peer URL in --cluster, member %d's", cfg.clientURL, id)
		}
	}
	if cfg.dataDir == "" {
		cfg.dataDir = fmt.Sprintf("raftkv-%d", cfg.id)
	}
	if cfg.forceNewCluster && cfg.join != "" {
		return config{}, errors.New("--force-new-cluster restarts a member from its own data; it cannot --join")
	}
	if cfg.join != "" {
		if cfg.join, err = normalizeURL(cfg.join); err != nil {
			return config{}, fmt.Errorf("--join: %w", err)
		}
	}
	if cfg.snapshotCount < 1 {
		return config{}, errors.New("--snapshot-count must be at least 1")
	}
	if cfg.requestTimeout <= 0 {
		return config{}, errors.New("--request-timeout must be positive")
	}
	if cfg.idempotencyWindow < 1 || cfg.idempotencyWindow > maxIdempotencyWindow {
		return config{}, fmt.Errorf("--idempotency-window must be 1 to %d", maxIdempotencyWindow)
	}
	if cfg.watchHistoryBytes < 0 {
		return config{}, errors.New("--watch-history-bytes must not be negative")
	}
	if cfg.maxValueBytes < 1 || cfg.maxValueBytes > maxValueLimit {
		return config{}, fmt.Errorf("--max-value-bytes must be 1 to %d", maxValueLimit)
	}
	if err := cfg.logLevel.Set(*logLevel); err != nil || cfg.logLevel > zapcore.ErrorLevel {
		return config{}, fmt.Errorf("--log-level %q: use debug, info, warn or error", *logLevel)
	}
	if err := checkTLS(cfg); err != nil {
		return config{}, err
	}
	return cfg, nil
}

// run serves until a signal arrives or the member stops on its own.
func run(ctx context.Context, cfg config, lg *zap.Logger) error {
	s, err := startServer(ctx, cfg, lg)
	if err != nil {
		if ctx.Err() != nil {
			return nil // a signal while starting up is a clean stop
		}
		return err
	}
	select {
	case <-ctx.Done():
		lg.Info("shutting down on signal")
	case <-s.raft.done():
	case <-s.store.done:
	}
	err = s.stop()
	if errors.Is(err, ErrRemoved) {
		lg.Info("removed from the cluster; exiting")
		return nil
	}
	return err
}

// server is one running member: the client API, the raft node and the
// kvstore, and the channels between them.
type server struct {
	cfg   config
	lg    *zap.Logger
	store *kvstore
	raft  *raftNode
	http  *http.Server
}

// startServer wires the pipeline and starts it. It returns once the member
// has applied everything in its WAL and serves the client API.
func startServer(ctx context.Context, cfg config, lg *zap.Logger) (*server, error) {
	lg = lg.With(zap.Uint64("member", cfg.id))
	lg.Info("starting", zap.String("peer-url", cfg.peerURL()), zap.String("client-url", cfg.clientURL), zap.String("data-dir", cfg.dataDir))
	if err := checkTLSFiles(cfg); err != nil {
		return nil, err
	}
	warnUnauthenticated(cfg, lg)
	u, _ := url.Parse(cfg.clientURL)
	clientLn, err := listenClients(u.Host, listenTLS(cfg.clientTLS, lg, "client"))
	if err != nil {
		return nil, fmt.Errorf("listen for clients: %w", err)
	}

	if err := checkLearnerFlag(cfg); err != nil {
		clientLn.Close()
		return nil, err
	}
	if cfg.join != "" && !hasWAL(cfg.dataDir) {
		joined, err := requestJoin(ctx, cfg, lg)
		if err != nil {
			clientLn.Close()
			return nil, err
		}
		cfg.cluster, cfg.clusterID = joined.peers, joined.id
	}

	proposeC := make(chan proposal)
	confChangeC := make(chan *raftpb.ConfChange)
	applyC := make(chan *applyBatch)
	m := newMetrics(lg)
	store := newKVStore(lg, cfg.id, cfg.watchHistoryBytes, proposeC, confChangeC)
	store.metrics = m
	go store.serveApply(applyC)
	rn, err := startRaftNode(ctx, cfg, lg, m, store, store.waiters, proposeC, confChangeC, applyC)
	if err != nil {
		clientLn.Close()
		close(applyC)
		return nil, err
	}
	s := &server{cfg: cfg, lg: lg, store: store, raft: rn}

	// Serve nothing until the kvstore has applied what the WAL records as
	// committed (bootIndex). After a clean stop that is everything this
	// member had applied; after a crash the newest commit index may be lost
	// (see saveAppends), so a stale read can miss the last writes this
	// member acknowledged until the leader's next message (restart_test.go).
	if err := store.waitApplied(ctx, rn.bootIndex); err != nil {
		clientLn.Close()
		if stopErr := rn.stop(); stopErr != nil {
			err = stopErr
		}
		<-store.done
		if store.err != nil {
			err = store.err // why the kvstore could not apply what was on disk
		}
		return nil, fmt.Errorf("replay WAL: %w", err)
	}
	releaseSnapshotMemory() // what reading the snapshot and the WAL took
	if err := checkPeerURL(cfg, store); err != nil {
		clientLn.Close()
		rn.stop()
		<-store.done
		return nil, err
	}
	rn.servePeerAPI(store)
	m.watchRaft(rn, store)

	reads := newReadLoop(lg, rn, store, cfg.requestTimeout)
	reads.metrics = m
	go reads.run()
	api := newHTTPAPI(cfg, store, rn, reads, m)
	s.http = newBoundedServer(api, cfg.clientLimits())
	s.http.RegisterOnShutdown(api.endStreams)
	go s.http.Serve(clientLn)
	go store.advertiseClientURL(rn, cfg.id, cfg.clientURL, cfg.requestTimeout)
	s.promoteWhenCaughtUp(reads)
	lg.Info("serving clients", zap.String("client-url", cfg.clientURL), zap.String("peer-url", cfg.peerURL()), zap.Stringer("cluster-id", types.ID(rn.clusterID)))
	return s, nil
}

// stop shuts the member down: stop accepting requests and give those in
// flight a request timeout to finish while raft still runs; then stop raft,
// the transport and the WAL, which fails any waiter left. It returns why
// the member stopped if it stopped on its own.
func (s *server) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.requestTimeout)
	defer cancel()
	s.http.Shutdown(ctx)
	err := s.raft.stop()
	<-s.store.done
	s.http.Close()
	if err == nil {
		err = s.store.err
	}
	return err
}
