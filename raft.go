package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/pkg/v3/wait"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"raftkv/api"
	"raftkv/bootstrap"
	"raftkv/codec"
	"raftkv/config"
	"raftkv/datadir"
	"raftkv/idempotency"
	"raftkv/limits"
	"raftkv/logging"
	"raftkv/membership"
	"raftkv/metrics"
	"raftkv/tlsconfig"
)

// ErrRemoved is why a member stops when it learns it was removed from the
// cluster.
var ErrRemoved = errors.New("this member was removed from the cluster")

const (
	// electionTicks and heartbeatTicks are in units of cfg.TickInterval:
	// with the default 100ms tick, a leader heartbeats every 100ms and a
	// follower that hears nothing for 1-2s starts an election.
	electionTicks  = 10
	heartbeatTicks = 1

	// maxInflightAppends is how many appends carrying entries the leader
	// sends a follower before it waits for an acknowledgement. Raft sends
	// each proposal to every follower in an append of its own while the
	// window has room; once it is full, new entries wait and go together
	// in the next append, after the follower's ack, which is when the
	// follower could write them anyway. Two keep a follower busy (one
	// append being written, the next on its way), so a lone write is never
	// held back, while under load a follower gets a few large appends per
	// fsync instead of one per proposal. etcd allows hundreds, for
	// long-haul links; on a LAN that many only multiplies messages.
	maxInflightAppends = 2

	// maxBatchBytes stops a batch of proposals from growing once it holds
	// this much. With one largest value (config.MaxValueLimit) on top it stays
	// inside the WAL's 10 MiB record limit.
	maxBatchBytes = 512 << 10
)

// stateMachine is what the raft node needs from the kvstore, besides
// feeding it through applyC.
type stateMachine interface {
	// snapshot serialises the state after the last applied commit.
	snapshot() []byte
	// isIDRemoved reports whether a member id was removed from the cluster.
	isIDRemoved(id uint64) bool
}

// raftNode drives the raft library (go.etcd.io/raft/v3), which decides but
// does no I/O: raft's own goroutine (node.run, inside the library) takes
// proposals, peers' messages and ticks, and hands out what to do in a
// Ready. Four goroutines here do the rest (and a few housekeeping ones:
// old files purged, the peer port served); ready.go shows the contract the
// first three keep with raft:
//
//   - serveReady, the Ready goroutine: ticks raft's clock and routes each
//     Ready: messages to peers, disk work to the next two;
//   - serveAppends, the append goroutine: persists the log to etcd's WAL;
//   - serveCommitted, the hand-over goroutine: hands committed entries to
//     the kvstore on applyC, in log order, and takes snapshots;
//   - serveProposals, the proposal goroutine: feeds proposals from
//     proposeC and confChangeC into raft.
type raftNode struct {
	id            uint64
	cfg           config.Config
	lg            *zap.Logger
	metrics       *metrics.Metrics // nil keeps none
	sm            stateMachine
	waiters       wait.Wait // to fail proposals raft refused; nothing else will ever wake them
	snapshotCount uint64
	clusterID     uint64 // checked by rafthttp on every peer request; from the WAL, see openStorage

	proposeC    <-chan proposal           // commands from handlers, for serveProposals
	confChangeC <-chan *raftpb.ConfChange // membership changes from handlers, for serveProposals
	appendC     chan *raftpb.Message      // MsgStorageAppend, in raft's order, for serveAppends
	committedC  chan committed            // committed entries and leader snapshots, in log order, for serveCommitted
	applyC      chan<- *applyBatch        // the same, for the kvstore to apply
	readStateC  chan raft.ReadState       // answers to ReadIndex requests, for the read loop
	diskWork    sync.WaitGroup            // serveAppends and serveCommitted, which use the WAL and applyC

	node        raft.Node
	raftStorage *raft.MemoryStorage // raft's view of the log; the WAL is its durable copy
	wal         *wal.WAL
	snapshotter *snap.Snapshotter
	transport   *rafthttp.Transport
	peers       *bootstrap.PeerHandler // what peerServer serves: the peer API, then rafthttp too
	peerServer  *http.Server

	// Owned by serveCommitted.
	confState     *raftpb.ConfState
	handedOver    uint64           // last index handed to the kvstore on applyC (raft's "applied"); the kvstore's applied index follows
	forceSnapshot bool             // a member was added or removed since the last snapshot (not promoted: confchange.go)
	bootSnapshot  *raftpb.Snapshot // the snapshot found on disk, sent to the kvstore first
	// snapshotIndex is the index of the newest snapshot whose file is
	// written whole, set by whichever goroutine wrote it: serveCommitted,
	// or the append goroutine for a leader's snapshot (see diskSnapshots).
	snapshotIndex atomic.Uint64

	// bootIndex is what the kvstore must apply before this member serves:
	// on a restart, the commit index its WAL recorded (see storage.go); on
	// a first start, the initial members' conf changes.
	bootIndex uint64

	// Updated from each Ready, read by the HTTP API and the read loop.
	leader      atomic.Uint64
	commitIndex atomic.Uint64
	termStart   atomic.Uint64 // see trackLeader

	leaderMu      sync.Mutex
	leaderChangeC chan struct{} // closed when leader changes, made by LeaderChange when nil

	stopOnce sync.Once
	failOnce sync.Once
	stopC    chan struct{} // closed to stop; also stops the purge and listener goroutines
	doneC    chan struct{} // closed when serveReady has shut everything down
	err      error         // why the node stopped, if not asked to: the first error given to fail
}

// startRaftNode opens (or creates) the member's WAL and snapshots, starts
// the peer transport and raft, and starts serving. Committed entries appear
// on applyC, which is closed when the node stops. Before it touches the
// data dir it runs the bootstrap checks (package bootstrap), asking the
// peers; ctx cancels them.
func startRaftNode(ctx context.Context, cfg config.Config, lg *zap.Logger, m *metrics.Metrics, sm stateMachine, waiters wait.Wait,
	proposeC <-chan proposal, confChangeC <-chan *raftpb.ConfChange, applyC chan<- *applyBatch,
) (*raftNode, error) {
	rc := &raftNode{
		id:            cfg.ID,
		cfg:           cfg,
		lg:            lg,
		metrics:       m,
		sm:            sm,
		waiters:       waiters,
		snapshotCount: cfg.SnapshotCount,
		proposeC:      proposeC,
		confChangeC:   confChangeC,
		appendC:       make(chan *raftpb.Message, storageQueue),
		committedC:    make(chan committed, storageQueue),
		applyC:        applyC,
		readStateC:    make(chan raft.ReadState, 64),
		raftStorage:   raft.NewMemoryStorage(),
		confState:     &raftpb.ConfState{},
		stopC:         make(chan struct{}),
		doneC:         make(chan struct{}),
	}
	// Take the peer port before touching the data dir: a first start that
	// fails must leave no WAL behind, or a retry would take it for a restart.
	u, err := url.Parse(cfg.PeerListenURL())
	if err != nil {
		return nil, fmt.Errorf("peer listen URL: %w", err)
	}
	peerLn, err := newStoppableListener(u.Host, u.Scheme, tlsconfig.Listen(cfg.TLS.Peer, lg, "peer"), rc.stopC)
	if err != nil {
		return nil, bootstrap.PeerListenError(cfg.ID, u.Host, err)
	}
	// Answer peers at once, though raft is not running yet: see
	// bootstrap.PeerHandler.
	rc.peers = bootstrap.NewPeerHandler(cfg.ID)
	rc.peerServer = limits.NewServer(rc.peers, cfg.PeerLimits())
	go rc.peerServer.Serve(peerLn)
	// stopPeers frees the peer port when the start fails, before returning.
	stopPeers := func() {
		rc.peerServer.Close()
		peerLn.Close()
		close(rc.stopC)
	}
	if err := bootstrap.Check(ctx, bootstrap.MemberOf(cfg), lg); err != nil {
		stopPeers()
		return nil, err
	}
	walExisted, err := rc.openStorage()
	if err != nil {
		stopPeers()
		return nil, err
	}
	c := &raft.Config{
		ID:              rc.id,
		ElectionTick:    electionTicks,
		HeartbeatTick:   heartbeatTicks,
		Storage:         diskSnapshots{MemoryStorage: rc.raftStorage, lg: rc.lg, dir: datadir.SnapDir(cfg.DataDir), saved: &rc.snapshotIndex},
		Applied:         rc.handedOver,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: maxInflightAppends,
		// See ready.go.
		AsyncStorageWrites: true,
		// Bound the log a leader without quorum accumulates; proposals
		// beyond it are dropped and their handlers told so.
		MaxUncommittedEntriesSize: 1 << 30,
		// CheckQuorum makes a leader that cannot hear a majority step down,
		// so a partitioned old leader stops serving `default` reads; PreVote
		// keeps a rejoining member from disrupting a healthy leader.
		CheckQuorum:       true,
		PreVote:           true,
		StepDownOnRemoval: true,
		Logger:            logging.NewRaftLogger(lg, cfg.ID),
	}
	if walExisted || cfg.Join != "" {
		// A restart resumes from what is on disk; a joining member starts
		// empty and learns the cluster from the leader's log or snapshot.
		rc.node = raft.RestartNode(c)
	} else {
		var peers []raft.Peer
		for _, id := range slices.Sorted(maps.Keys(cfg.Cluster)) {
			// Raft commits a conf change adding each initial member, with
			// this context, which the member table reads as any add's.
			peers = append(peers, raft.Peer{ID: id, Context: membership.AddChange(membership.Member{ID: id, PeerURLs: []string{cfg.Cluster[id]}}, idempotency.Key{}).Context})
		}
		rc.node = raft.StartNode(c, peers)
		// StartNode commits one conf change per initial member: wait for
		// those too, so the API never shows a first start without members.
		rc.bootIndex = uint64(len(peers))
	}

	// The transport starts only now that rc.node exists: its stream readers
	// dial the other members and hand what they receive to rc.node at once.
	if err := rc.startTransport(); err != nil {
		rc.node.Stop()
		stopPeers()
		rc.wal.Close()
		return nil, err
	}
	// Take peers' raft messages only now too: they go straight into rc.node.
	rc.peers.MountRaft(rc.transport.Handler())
	go rc.purgeOldFiles()
	rc.diskWork.Go(rc.serveAppends)
	rc.diskWork.Go(rc.serveCommitted)
	go rc.serveReady()
	go rc.serveProposals()
	return rc, nil
}

// serveProposals is the proposal goroutine: it feeds proposals into raft.
// node.Propose blocks while there is no leader, so it runs apart from the
// Ready goroutine, which must keep going for a leader to be elected.
//
// Handlers that arrived while raft took the last proposal are waiting to
// send theirs: it takes them all and proposes one entry (codec.EncodeBatch),
// which raft logs, fsyncs, replicates and commits once. A batch stops
// growing at maxBatchBytes, or before a proposal that writes a key the
// batch already writes: that one starts the next batch, so that one entry
// writes a key at most once and a key's version names one value of it.
func (rc *raftNode) serveProposals() {
	var next proposal // held back from the last batch, when held
	held := false
	batchKeys := make(map[string]bool)
	for {
		var first proposal
		if held {
			first, held = next, false
		} else {
			select {
			case first = <-rc.proposeC:
			case cc := <-rc.confChangeC:
				rc.propose([]uint64{cc.GetId()}, func(ctx context.Context) error { return rc.node.ProposeConfChange(ctx, cc) })
				continue
			case <-rc.stopC:
				return
			}
		}
		clear(batchKeys)
		ids, commands := []uint64{first.requestID}, [][]byte{first.data}
		batchKeys[first.key] = true
		size := len(first.data)
	batching:
		for size < maxBatchBytes {
			select {
			case p := <-rc.proposeC:
				if p.key != "" && batchKeys[p.key] {
					next, held = p, true
					break batching
				}
				batchKeys[p.key] = true
				ids, commands = append(ids, p.requestID), append(commands, p.data)
				size += len(p.data)
			default:
				break batching
			}
		}
		data := commands[0]
		if len(commands) > 1 {
			data = codec.EncodeBatch(commands)
		}
		rc.propose(ids, func(ctx context.Context) error { return rc.node.Propose(ctx, data) })
	}
}

// propose hands one proposal, for the handlers waiting on requestIDs, to
// raft's goroutine (node.Propose sends it on raft's propc channel). On the
// leader it comes out of the next Ready as an entry to persist and send
// (ready.go), and a follower's raft forwards it to the leader as a
// MsgProp, in that Ready's messages, so a write needs no redirect. A
// proposal raft refuses never reaches the log, so no member will ever
// apply it: wake its waiters here with api.ErrNoLeader, which clients may
// take as "not applied". Any other failure (the deadline passed while raft
// held the proposal, or raft stopped) may come after raft took it, so it
// must not claim the proposal was dropped. (A conf change raft drops is
// not reported: node.ProposeConfChange does not wait for raft's verdict,
// so its handler learns nothing until its request times out; which is why
// the membership routes propose only once the leader has settled.)
func (rc *raftNode) propose(requestIDs []uint64, proposeFn func(context.Context) error) {
	var err error
	if rc.leader.Load() == raft.None {
		err = api.ErrNoLeader
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), rc.cfg.RequestTimeout)
		err = proposeFn(ctx)
		cancel()
	}
	switch {
	case err == nil:
		return
	case errors.Is(err, api.ErrNoLeader):
	case errors.Is(err, raft.ErrProposalDropped):
		err = fmt.Errorf("%w: %v", api.ErrNoLeader, err)
	case errors.Is(err, raft.ErrStopped):
		err = api.ErrStopped
	default:
		err = fmt.Errorf("propose: %w", err)
	}
	for _, id := range requestIDs {
		rc.waiters.Trigger(id, outcome{Answer: idempotency.Answer{Err: err}})
	}
}

// Status is raft's own view of this member: its term, its state, its
// commit index and, on the leader, each follower's progress.
func (rc *raftNode) Status() raft.Status { return rc.node.Status() }

// Term is the raft term this member is in.
func (rc *raftNode) Term() uint64 { return rc.node.Status().GetTerm() }

// CommitIndex is the highest index this member knows to be committed.
func (rc *raftNode) CommitIndex() uint64 { return rc.commitIndex.Load() }

// SnapshotIndex is the index of the newest snapshot on disk.
func (rc *raftNode) SnapshotIndex() uint64 { return rc.snapshotIndex.Load() }

// Connected reports whether this member's peer transport is connected to
// member id. rafthttp marks a peer active once a stream or a message to
// it gets through, and inactive at the first that fails: a member that
// never started is never connected, and one that stops is seen as soon as
// its connections break. (One that hangs, its connections open, counts as
// connected until a send to it fails.)
func (rc *raftNode) Connected(id uint64) bool {
	return !rc.transport.ActiveSince(types.ID(id)).IsZero()
}

// Progress is, on the leader, how far member id's log matches the
// leader's (raft's Progress.Match).
func (rc *raftNode) Progress(id uint64) (membership.Progress, error) {
	st := rc.node.Status()
	if st.RaftState != raft.StateLeader {
		return membership.Progress{}, fmt.Errorf("%w: member %d stopped leading; ask again", api.ErrNoLeader, rc.id)
	}
	pr, ok := st.Progress[id]
	if !ok {
		return membership.Progress{}, fmt.Errorf("member %d: %w", id, membership.ErrMemberNotFound)
	}
	return membership.Progress{Match: pr.Match, LeaderMatch: st.Progress[st.ID].Match, IsLearner: pr.IsLearner}, nil
}

// StoppedRemoved waits, at most until ctx is done, for the node to stop,
// and reports whether it stopped because this member was removed.
func (rc *raftNode) StoppedRemoved(ctx context.Context) bool {
	select {
	case <-rc.doneC:
		return errors.Is(rc.err, ErrRemoved)
	case <-ctx.Done():
		return false
	}
}

// done is closed when the node has stopped, by stop or on its own (removed
// from the cluster, or a storage error): see stop for why.
func (rc *raftNode) done() <-chan struct{} { return rc.doneC }

// fail stops the node because of err, which stop then reports, unless an
// earlier error already stopped it. api.ErrStopped only says the node was
// already stopping, and stops nothing.
func (rc *raftNode) fail(err error) {
	if errors.Is(err, api.ErrStopped) {
		return
	}
	rc.failOnce.Do(func() { rc.err = err })
	rc.stopOnce.Do(func() { close(rc.stopC) })
}

// stop stops the node and waits for it. It returns why the node stopped if
// it stopped on its own; ErrRemoved when this member was removed.
func (rc *raftNode) stop() error {
	rc.stopOnce.Do(func() { close(rc.stopC) })
	<-rc.doneC
	return rc.err
}

// shutdown releases everything the node's goroutines used: the transport,
// raft, the WAL and applyC, which tells the kvstore that nothing more will
// come. The append and hand-over goroutines go first, while raft still
// takes the responses they deliver.
func (rc *raftNode) shutdown() {
	rc.stopOnce.Do(func() { close(rc.stopC) })
	rc.diskWork.Wait()
	rc.transport.Stop()
	rc.peerServer.Close()
	rc.node.Stop()
	if err := rc.wal.Close(); err != nil {
		rc.fail(fmt.Errorf("close WAL: %w", err))
	}
	close(rc.applyC)
	close(rc.doneC)
}
