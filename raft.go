package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/pkg/v3/wait"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// Errors from the raft node.
var (
	ErrNoLeader = errors.New("no leader")
	ErrRemoved  = errors.New("this member was removed from the cluster")
)

const (
	// electionTicks and heartbeatTicks are in units of config.tickInterval:
	// with the default 100ms tick, a leader heartbeats every 100ms and a
	// follower that hears nothing for 1-2s starts an election.
	electionTicks  = 10
	heartbeatTicks = 1

	// maxCatchUpEntries is how many entries stay in the in-memory log after
	// a snapshot, so that a follower a little behind catches up from the
	// log instead of being sent the whole snapshot.
	maxCatchUpEntries = 10000

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

	// maxSnapFiles and maxWALFiles are how many old snapshot and WAL files
	// to keep on disk; older ones are deleted once raft no longer needs them.
	maxSnapFiles = 5
	maxWALFiles  = 5
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
// does no I/O. Four goroutines do the rest; ready.go shows the contract the
// first three keep with raft:
//
//   - serveReady, the raft goroutine: ticks raft's clock and routes each
//     Ready: messages to peers, disk work to the other two;
//   - serveAppends, the append goroutine: persists the log to etcd's WAL;
//   - serveCommitted, the apply goroutine: hands committed entries to the
//     kvstore on applyC, and takes snapshots;
//   - serveProposals: feeds proposals from proposeC and confChangeC into raft.
type raftNode struct {
	id            uint64
	cfg           config
	lg            *zap.Logger
	metrics       *metrics // nil keeps none (metrics.go)
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
	storage     sync.WaitGroup            // serveAppends and serveCommitted, which use the WAL and applyC

	node        raft.Node
	raftStorage *raft.MemoryStorage // raft's view of the log; the WAL is its durable copy
	wal         *wal.WAL
	snapshotter *snap.Snapshotter
	transport   *rafthttp.Transport
	peers       *peerHandler // what peerServer serves: the peer API, then rafthttp too
	peerServer  *http.Server

	// Owned by serveCommitted.
	confState         *raftpb.ConfState
	queuedIndex       uint64           // last index sent to the kvstore on applyC; its appliedIndex follows
	forceSnapshot     bool             // a member was added or removed since the last snapshot (not promoted: confchange.go)
	bootSnapshot      *raftpb.Snapshot // the snapshot found on disk, sent to the kvstore first
	lastSnapshotIndex atomic.Uint64    // index of the newest snapshot on disk
	// savedSnapshotIndex is the index of the newest snapshot whose file is
	// written whole, set by whichever goroutine wrote it: serveCommitted, or
	// the append goroutine for a leader's snapshot (see diskSnapshots).
	savedSnapshotIndex atomic.Uint64

	// bootIndex is what the kvstore must apply before this member serves:
	// on a restart, the commit index its WAL recorded (see datadir.go); on
	// a first start, the initial members' conf changes.
	bootIndex uint64

	// Updated from each Ready, read by the HTTP API and the read loop.
	leader      atomic.Uint64
	commitIndex atomic.Uint64
	termStart   atomic.Uint64 // see trackLeader

	leaderMu      sync.Mutex
	leaderChangeC chan struct{} // closed when leader changes, made by leaderChange when nil

	stopOnce sync.Once
	failOnce sync.Once
	stopC    chan struct{} // closed to stop; also stops the purge and listener goroutines
	doneC    chan struct{} // closed when serveReady has shut everything down
	err      error         // why the node stopped, if not asked to: the first error given to fail
}

// startRaftNode opens (or creates) the member's WAL and snapshots, starts
// the peer transport and raft, and starts serving. Committed entries appear
// on applyC, which is closed when the node stops. Before it touches the
// data dir it runs the bootstrap checks (bootstrap.go), asking the peers;
// ctx cancels them.
func startRaftNode(ctx context.Context, cfg config, lg *zap.Logger, m *metrics, sm stateMachine, waiters wait.Wait,
	proposeC <-chan proposal, confChangeC <-chan *raftpb.ConfChange, applyC chan<- *applyBatch,
) (*raftNode, error) {
	rc := &raftNode{
		id:            cfg.id,
		cfg:           cfg,
		lg:            lg,
		metrics:       m,
		sm:            sm,
		waiters:       waiters,
		snapshotCount: cfg.snapshotCount,
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
	u, err := url.Parse(cfg.peerListenURL())
	if err != nil {
		return nil, fmt.Errorf("peer listen URL: %w", err)
	}
	peerLn, err := newStoppableListener(u.Host, u.Scheme, listenTLS(cfg.peerTLS, lg, "peer"), rc.stopC)
	if err != nil {
		return nil, peerListenError(cfg, u.Host, err)
	}
	// Answer peers at once, though raft is not running yet: see peerHandler.
	rc.peers = newPeerHandler(cfg.id)
	rc.peerServer = newBoundedServer(rc.peers, cfg.peerLimits())
	go rc.peerServer.Serve(peerLn)
	// stopPeers frees the peer port when the start fails, before returning.
	stopPeers := func() {
		rc.peerServer.Close()
		peerLn.Close()
		close(rc.stopC)
	}
	if err := checkBootstrap(ctx, cfg, lg); err != nil {
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
		Storage:         diskSnapshots{MemoryStorage: rc.raftStorage, lg: rc.lg, dir: rc.snapDir(), saved: &rc.savedSnapshotIndex},
		Applied:         rc.queuedIndex,
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
		Logger:            newRaftLogger(lg, cfg.id),
	}
	if walExisted || cfg.join != "" {
		// A restart resumes from what is on disk; a joining member starts
		// empty and learns the cluster from the leader's log or snapshot.
		rc.node = raft.RestartNode(c)
	} else {
		var peers []raft.Peer
		for _, id := range slices.Sorted(maps.Keys(cfg.cluster)) {
			// Marshalling a member (numbers and strings) cannot fail.
			ctx, _ := json.Marshal(member{ID: id, PeerURLs: []string{cfg.cluster[id]}})
			peers = append(peers, raft.Peer{ID: id, Context: ctx})
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
	rc.peers.mountRaft(rc.transport.Handler())
	go rc.purgeOldFiles()
	rc.storage.Go(rc.serveAppends)
	rc.storage.Go(rc.serveCommitted)
	go rc.serveReady()
	go rc.serveProposals()
	return rc, nil
}

// serveProposals feeds proposals into raft. node.Propose blocks while there
// is no leader, so it runs apart from the Ready loop, which must keep going
// for a leader to be elected.
func (rc *raftNode) serveProposals() {
	var batch []proposal
	var next proposal // held back from the last batch, which wrote its key
	held := false
	keys := make(map[string]struct{})
	for {
		var p proposal
		if held {
			p, held = next, false
		} else {
			select {
			case p = <-rc.proposeC:
			case cc := <-rc.confChangeC:
				rc.propose([]uint64{cc.GetId()}, func(ctx context.Context) error { return rc.node.ProposeConfChange(ctx, cc) })
				continue
			case <-rc.stopC:
				return
			}
		}
		// Handlers that arrived while raft took the last proposal are
		// waiting to send theirs: take them all and propose one entry,
		// which raft logs, fsyncs, replicates and commits once.
		batch, next, held = rc.takeWaiting(append(batch[:0], p), keys)
		rc.proposeBatch(batch)
	}
}

// maxBatchBytes stops a batch from growing once it holds this much. With
// one largest value (maxValueLimit) on top it stays inside the WAL's 10 MiB
// record limit.
const maxBatchBytes = 512 << 10

// takeWaiting adds to batch the proposals handlers are waiting to send, if
// any, until it holds maxBatchBytes or the next one writes a key the batch
// already writes: that one is returned, with held true, to start the next
// batch. One entry writes a key at most once, so a key's modIndex names one
// value of it (versions.go).
func (rc *raftNode) takeWaiting(batch []proposal, keys map[string]struct{}) (_ []proposal, next proposal, held bool) {
	clear(keys)
	size := 0
	for _, p := range batch {
		size += len(p.data)
		if p.key != "" {
			keys[p.key] = struct{}{}
		}
	}
	for size < maxBatchBytes {
		select {
		case p := <-rc.proposeC:
			if _, repeated := keys[p.key]; repeated && p.key != "" {
				return batch, p, true
			}
			if p.key != "" {
				keys[p.key] = struct{}{}
			}
			batch = append(batch, p)
			size += len(p.data)
		default:
			return batch, proposal{}, false
		}
	}
	return batch, proposal{}, false
}

// proposeBatch proposes the commands of batch as one entry.
func (rc *raftNode) proposeBatch(batch []proposal) {
	ids := make([]uint64, len(batch))
	commands := make([][]byte, len(batch))
	for i, p := range batch {
		ids[i], commands[i] = p.requestID, p.data
	}
	data := commands[0]
	if len(batch) > 1 {
		data = encodeBatch(commands)
	}
	rc.propose(ids, func(ctx context.Context) error { return rc.node.Propose(ctx, data) })
}

// propose hands one proposal, for the handlers waiting on requestIDs, to
// raft. node.Propose gives it to raft's goroutine; on the leader it comes
// out of the next Ready as an entry to persist and send (ready.go), and a
// follower's raft forwards it to the leader as a MsgProp, in that Ready's
// messages, so a write needs no redirect. A proposal raft refuses never reaches the log, so no member will
// ever apply it: wake its waiters here with ErrNoLeader, which clients may
// take as "not applied". Any other failure (the deadline passed while raft
// held the proposal, or raft stopped) may come after raft took it, so it
// must not claim the proposal was dropped.
func (rc *raftNode) propose(requestIDs []uint64, proposeFn func(context.Context) error) {
	var err error
	if rc.leader.Load() == raft.None {
		err = ErrNoLeader
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), rc.cfg.requestTimeout)
		err = proposeFn(ctx)
		cancel()
	}
	switch {
	case err == nil:
		return
	case errors.Is(err, ErrNoLeader):
	case errors.Is(err, raft.ErrProposalDropped):
		err = fmt.Errorf("%w: %v", ErrNoLeader, err)
	case errors.Is(err, raft.ErrStopped):
		err = ErrStopped
	default:
		err = fmt.Errorf("propose: %w", err)
	}
	for _, id := range requestIDs {
		rc.waiters.Trigger(id, outcome{err: err})
	}
}

// readIndex asks raft to confirm, with a heartbeat round, that the leader
// is still the leader and to report its commit index; the answer arrives
// on readStateC tagged with requestCtx.
func (rc *raftNode) readIndex(ctx context.Context, requestCtx []byte) error {
	return rc.node.ReadIndex(ctx, requestCtx)
}

// committedIndex is the highest index this node knows to be committed.
func (rc *raftNode) committedIndex() uint64 { return rc.commitIndex.Load() }

// snapshotIndex is the index of the newest snapshot on disk.
func (rc *raftNode) snapshotIndex() uint64 { return rc.lastSnapshotIndex.Load() }

// status is raft's own view of this node.
func (rc *raftNode) status() raft.Status { return rc.node.Status() }

// done is closed when the node has stopped, by stop or on its own (removed
// from the cluster, or a storage error): see stop for why.
func (rc *raftNode) done() <-chan struct{} { return rc.doneC }

// stoppedRemoved waits, at most until ctx is done, for the node to stop,
// and reports whether it stopped because this member was removed.
func (rc *raftNode) stoppedRemoved(ctx context.Context) bool {
	select {
	case <-rc.doneC:
		return errors.Is(rc.err, ErrRemoved)
	case <-ctx.Done():
		return false
	}
}

// fail stops the node because of err, which stop then reports, unless an
// earlier error already stopped it. ErrStopped only says the node was
// already stopping, and stops nothing.
func (rc *raftNode) fail(err error) {
	if errors.Is(err, ErrStopped) {
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
// come. The append and apply goroutines go first, while raft still takes
// the responses they deliver.
func (rc *raftNode) shutdown() {
	rc.stopOnce.Do(func() { close(rc.stopC) })
	rc.storage.Wait()
	rc.transport.Stop()
	rc.peerServer.Close()
	rc.node.Stop()
	if err := rc.wal.Close(); err != nil {
		rc.fail(fmt.Errorf("close WAL: %w", err))
	}
	close(rc.applyC)
	close(rc.doneC)
}

// purgeOldFiles deletes old snapshot and WAL files beyond the newest few.
// A WAL file is deleted only once the WAL has released it, after a snapshot
// covers it.
func (rc *raftNode) purgeOldFiles() {
	const interval = 30 * time.Second
	lg := newPurgeLogger(rc.lg)
	snapErrC := fileutil.PurgeFile(lg, rc.snapDir(), "snap", maxSnapFiles, interval, rc.stopC)
	walErrC := fileutil.PurgeFile(lg, rc.walDir(), "wal", maxWALFiles, interval, rc.stopC)
	select {
	case err := <-snapErrC:
		rc.lg.Warn("stopped purging old snapshot files", zap.Error(err))
	case err := <-walErrC:
		rc.lg.Warn("stopped purging old WAL files", zap.Error(err))
	case <-rc.stopC:
	}
}
