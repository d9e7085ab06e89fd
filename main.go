// Command raftkv is a replicated key-value server: an HTTP API in front of a
// raft log (go.etcd.io/raft) kept in etcd's WAL and snapshot files and
// replicated to peers over etcd's rafthttp.
//
// A request travels one way through the pipeline wired up in startServer:
//
//	handler -> proposeC / confChangeC -> raftNode -> WAL fsync + peers -> committed entries -> applyC -> kvstore -> waiting handler
//
// The files of this package are the raft server; every feature it serves
// is a package of its own (README, "Reading the code").
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"raftkv/lease"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"raftkv/api"
	"raftkv/bootstrap"
	"raftkv/config"
	"raftkv/datadir"
	"raftkv/join"
	"raftkv/limits"
	"raftkv/logging"
	"raftkv/membership"
	"raftkv/metrics"
	"raftkv/recovery"
	"raftkv/status"
	"raftkv/tlsconfig"
	"raftkv/version"
	"raftkv/watch"
)

// gcPercent is raftkv's default GOGC. A member's heap is mostly its state
// machine, which lives as long as the process; Go's default of 100 lets the
// heap grow to twice that before a collection, so a member holding 1M keys
// (about 190 MiB of map) would sit anywhere up to 380 MiB. At 50 it stays
// within one and a half times, for more frequent collections of a mostly
// live heap. The GOGC environment variable, when set, still wins.
const gcPercent = 50

func main() {
	if len(os.Args) > 1 && os.Args[1] == "restore" {
		os.Exit(recovery.Restore(os.Args[2:], os.Stdout, os.Stderr))
	}
	cfg, err := config.Parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if errors.Is(err, config.ErrShowVersion) {
		fmt.Println(version.Get().Line())
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "raftkv: %v\n", err)
		os.Exit(2)
	}
	lg := logging.New(cfg.LogLevel)
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

// run serves until a signal arrives or the member stops on its own.
func run(ctx context.Context, cfg config.Config, lg *zap.Logger) error {
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
	case <-s.store.Done():
	}
	err = s.stop()
	if errors.Is(err, ErrRemoved) {
		lg.Info("removed from the cluster; exiting")
		return nil
	}
	return err
}

// server is one running member: its kvstore and raft node, and the HTTP
// server of its client API.
type server struct {
	cfg   config.Config
	lg    *zap.Logger
	store *kvstore
	raft  *raftNode
	http  *http.Server
}

// running is a running member as the feature packages see it: the
// exported methods of its kvstore, raft node and read loop, which their
// interfaces name. Those methods are the seams between the raft server and
// its features; the others are arguments given where startServer wires
// them (the watch history, the metrics' gauges, the peer API's member
// list).
type running struct {
	*kvstore
	*raftNode
	*readLoop
	requestTimeout time.Duration
}

// The interfaces running meets, checked by the compiler.
var (
	_ membership.Cluster = running{}
	_ join.Server        = running{}
	_ recovery.Source    = running{}
	_ lease.Cluster      = running{}
)

// RedirectToLeader answers 307 with the same request on the leader.
func (r running) RedirectToLeader(w http.ResponseWriter, req *http.Request, leader uint64) {
	redirectToLeader(w, req, r.Table(), leader)
}

// Leading is the term in which this member leads, if it does and has
// applied its first entry of the term, so every entry of earlier terms.
func (r running) Leading() (term uint64, ok bool) {
	start := r.termStartIndex()
	if r.Leader() != r.id || start == 0 || r.AppliedIndex() < start {
		return 0, false
	}
	return r.Term(), true
}

// LeaderReady waits until Leading holds, or this member does not lead.
func (r running) LeaderReady(ctx context.Context) (uint64, error) {
	if r.Leader() != r.id {
		return 0, fmt.Errorf("%w: member %d does not lead", api.ErrNoLeader, r.id)
	}
	if err := r.WaitApplied(ctx, r.termStartIndex()); err != nil {
		return 0, err
	}
	if term, ok := r.Leading(); ok {
		return term, nil
	}
	return 0, fmt.Errorf("%w: member %d stopped leading", api.ErrNoLeader, r.id)
}

// ConfirmLeadership returns once a ReadIndex round has shown that this
// member still leads.
func (r running) ConfirmLeadership(ctx context.Context) error {
	if err := r.WaitLinearizable(ctx); err != nil {
		return err
	}
	if r.Leader() != r.id {
		return fmt.Errorf("%w: member %d stopped leading", api.ErrNoLeader, r.id)
	}
	return nil
}

// TransferLeadership makes another member lead in place of leader, and
// returns once this member has applied the new leader's first entry of
// its term: a conf change proposed after it is not dropped.
func (r running) TransferLeadership(ctx context.Context, leader uint64) error {
	err := r.transferLeadership(ctx, leader, r.Table())
	if err == nil {
		err = r.WaitLinearizable(ctx)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: no leader other than member %d was ready within %s; nothing was proposed", membership.ErrLeaderTransfer, leader, r.requestTimeout)
	}
	return err
}

// startServer wires the pipeline and starts it. It returns once the member
// has applied what its WAL records as committed (bootIndex) and serves the
// client API.
func startServer(ctx context.Context, cfg config.Config, lg *zap.Logger) (_ *server, err error) {
	lg = lg.With(zap.Uint64("member", cfg.ID))
	lg.Info("starting", zap.String("peer-url", cfg.PeerURL()), zap.String("client-url", cfg.ClientURL), zap.String("data-dir", cfg.DataDir))
	if err := cfg.TLS.CheckFiles(); err != nil {
		return nil, err
	}
	cfg.TLS.WarnUnauthenticated(cfg.URLs(), lg)
	u, _ := url.Parse(cfg.ClientURL)
	clientLn, err := limits.ListenClients(u.Host, tlsconfig.Listen(cfg.TLS.Client, lg, "client"))
	if err != nil {
		return nil, fmt.Errorf("listen for clients: %w", err)
	}
	var rn *raftNode
	var store *kvstore
	defer func() { // a start that fails frees its ports and stops what it started
		if err == nil {
			return
		}
		clientLn.Close()
		if rn != nil {
			rn.stop()
			<-store.done
		}
	}()

	if err := join.CheckLearnerFlag(cfg.ID, cfg.StayLearner, cfg.Join != "", cfg.DataDir); err != nil {
		return nil, err
	}
	if cfg.Join != "" && !datadir.HasWAL(cfg.DataDir) {
		joined, err := join.Ask(ctx, join.RequestOf(cfg), lg)
		if err != nil {
			return nil, err
		}
		cfg.Cluster, cfg.ClusterID = joined.Peers, joined.ClusterID
	}

	// The pipeline: handler -> proposeC / confChangeC -> raft node ->
	// applyC -> kvstore.
	proposeC := make(chan proposal)
	confChangeC := make(chan *raftpb.ConfChange)
	applyC := make(chan *applyBatch)
	m := metrics.New(lg)
	origin := lease.Origin{Member: cfg.ID, Nonce: rand.Uint64()} // this process, as it proposes lease windows
	store = newKVStore(lg, cfg.ID, origin, cfg.WatchHistoryBytes, m, proposeC, confChangeC)
	go store.serveApply(applyC)
	if rn, err = startRaftNode(ctx, cfg, lg, m, store, store.waiters, proposeC, confChangeC, applyC); err != nil {
		close(applyC)
		return nil, err
	}

	// Serve nothing until the kvstore has applied what the WAL records as
	// committed (bootIndex). After a clean stop that is everything this
	// member had applied; after a crash the newest commit index may be lost
	// (see saveAppends), so a stale read can miss the last writes this
	// member acknowledged until the leader's next message.
	if err := store.WaitApplied(ctx, rn.bootIndex); err != nil {
		if stopErr := rn.stop(); stopErr != nil {
			err = stopErr
		}
		<-store.done
		if store.err != nil {
			err = store.err // why the kvstore could not apply what was on disk
		}
		rn = nil // stopped already
		return nil, fmt.Errorf("replay WAL: %w", err)
	}
	debug.FreeOSMemory() // what reading the snapshot and the WAL took: several copies of the state
	if err := bootstrap.CheckPeerURL(cfg.ID, cfg.PeerURL(), store.Table()); err != nil {
		return nil, err
	}
	rn.servePeerAPI(store.Table)
	m.WatchRaft(metrics.RaftGauges{
		Term: rn.Term, CommitIndex: rn.CommitIndex, AppliedIndex: store.AppliedIndex, SnapshotIndex: rn.SnapshotIndex,
		HasLeader: func() bool { return rn.Leader() != raft.None }, IsLeader: func() bool { return rn.Leader() == cfg.ID },
		Leases: func() int { return len(store.Leases()) },
	})

	// The client API, with the features' routes, and the features that run
	// on their own.
	reads := newReadLoop(lg, rn, store, cfg.RequestTimeout, m)
	go reads.run()
	r := running{kvstore: store, raftNode: rn, readLoop: reads, requestTimeout: cfg.RequestTimeout}
	lessor := lease.NewLessor(r, origin, time.Now, cfg.TickInterval, lg, m)
	go lessor.Run()
	errs := api.NewErrors(logging.NewAnswerLogger(lg), cfg.RequestTimeout)
	routes := newHTTPAPI(cfg, store, rn, reads, m, errs, features{
		members: membership.NewAPI(cfg.ID, cfg.PeerURL(), cfg.ClientURL, r, cfg.RequestTimeout, cfg.IdempotencyWindow, errs, m.ReplayAnswered),
		watches: watch.NewStreams(store.watch, store.AppliedIndex, store.Done(), cfg.WatchKeepAlive, m, errs),
		backups: recovery.NewBackups(r, rn.clusterID, cfg.ID, cfg.RequestTimeout, errs),
		status:  status.New(cfg.ID, rn.clusterID, r),
		leases:  lease.NewAPI(cfg.ID, r, lessor, lease.MinTTL(electionTicks*cfg.TickInterval), cfg.RequestTimeout, cfg.IdempotencyWindow, errs, m.ReplayAnswered),
	})
	s := &server{cfg: cfg, lg: lg, store: store, raft: rn, http: limits.NewServer(m.Instrument(routes), cfg.ClientLimits())}
	s.http.RegisterOnShutdown(routes.features.watches.Close)
	go s.http.Serve(clientLn)
	go join.Advertise(r, cfg.ID, cfg.ClientURL, cfg.RequestTimeout, lg)
	join.Promote(r, join.RequestOf(cfg), cfg.StayLearner, lg)
	lg.Info("serving clients", zap.String("client-url", cfg.ClientURL), zap.String("peer-url", cfg.PeerURL()), zap.Stringer("cluster-id", types.ID(rn.clusterID)))
	return s, nil
}

// stop shuts the member down: stop accepting requests and give those in
// flight a request timeout to finish while raft still runs; then stop raft,
// the transport and the WAL, which fails any waiter left. It returns why
// the member stopped if it stopped on its own.
func (s *server) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
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
