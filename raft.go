package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/pkg/v3/wait"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
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
// feeding it through commitC.
type stateMachine interface {
	// snapshot serialises the state after the last applied commit.
	snapshot() []byte
	// isIDRemoved reports whether a member id was removed from the cluster.
	isIDRemoved(id uint64) bool
}

// raftNode owns the raft state machine. One goroutine (serveReady) drives
// it: it sends raft's messages to peers with etcd's rafthttp and hands the
// disk work to two more, in storage.go: serveAppends persists the log to
// etcd's WAL and snapshot files, and serveApplies publishes committed
// entries on commitC for the kvstore to apply. A fourth (serveProposals)
// feeds proposals from proposeC and confChangeC into raft.
type raftNode struct {
	id            uint64
	cfg           config
	lg            *zap.Logger
	sm            stateMachine
	waiters       wait.Wait // to fail proposals raft refused; nothing else will ever wake them
	snapshotCount uint64
	clusterID     uint64 // checked by rafthttp on every peer request; from the WAL, see openStorage

	proposeC    <-chan proposal
	confChangeC <-chan *raftpb.ConfChange
	commitC     chan<- *commit
	readStateC  chan raft.ReadState  // answers to ReadIndex requests, for the read loop
	appendC     chan *raftpb.Message // MsgStorageAppend, in raft's order, for serveAppends
	applyC      chan applyTask       // committed entries and leader snapshots, in log order, for serveApplies
	storage     sync.WaitGroup       // serveAppends and serveApplies, which use the WAL and commitC

	node        raft.Node
	raftStorage *raft.MemoryStorage // raft's view of the log; the WAL is its durable copy
	wal         *wal.WAL
	snapshotter *snap.Snapshotter
	transport   *rafthttp.Transport
	peers       *peerHandler // what peerServer serves: the peer API, then rafthttp too
	peerServer  *http.Server

	// Owned by serveApplies.
	confState         *raftpb.ConfState
	appliedIndex      uint64           // last index published on commitC
	forceSnapshot     bool             // a conf change was applied since the last snapshot
	bootSnapshot      *raftpb.Snapshot // the snapshot found on disk, published first
	lastSnapshotIndex atomic.Uint64    // index of the newest snapshot on disk

	// replayIndex is the commit index found in the WAL at start: once the
	// kvstore has applied this far it holds everything this member knew.
	replayIndex uint64

	// Updated from each Ready, read by the HTTP API and the read loop.
	leader    atomic.Uint64
	committed atomic.Uint64
	termStart atomic.Uint64 // see trackLeader

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
// on commitC, which is closed when the node stops. Before it touches the
// data dir it runs the bootstrap checks (bootstrap.go), asking the peers;
// ctx cancels them.
func startRaftNode(ctx context.Context, cfg config, lg *zap.Logger, sm stateMachine, waiters wait.Wait,
	proposeC <-chan proposal, confChangeC <-chan *raftpb.ConfChange, commitC chan<- *commit,
) (*raftNode, error) {
	rc := &raftNode{
		id:            cfg.id,
		cfg:           cfg,
		lg:            lg,
		sm:            sm,
		waiters:       waiters,
		snapshotCount: cfg.snapshotCount,
		proposeC:      proposeC,
		confChangeC:   confChangeC,
		commitC:       commitC,
		readStateC:    make(chan raft.ReadState, 64),
		appendC:       make(chan *raftpb.Message, storageQueue),
		applyC:        make(chan applyTask, storageQueue),
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
	peerLn, err := newStoppableListener(u.Host, rc.stopC)
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
		Storage:         diskSnapshots{MemoryStorage: rc.raftStorage, snapshotter: rc.snapshotter},
		Applied:         rc.appliedIndex,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: maxInflightAppends,
		// See handleReady and storage.go.
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
		rc.replayIndex = uint64(len(peers))
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
	rc.storage.Go(rc.serveApplies)
	go rc.serveReady()
	go rc.serveProposals()
	return rc, nil
}

// openStorage creates the data dir on first start, recording in the WAL whose
// log it is (walMetadata); on a restart it loads the newest valid snapshot,
// replays the WAL after it into raftStorage and takes the cluster ID the
// WAL recorded.
func (rc *raftNode) openStorage() (walExisted bool, err error) {
	walDir, snapDir := rc.walDir(), rc.snapDir()
	if err := fileutil.TouchDirAll(rc.lg, snapDir); err != nil {
		return false, fmt.Errorf("data dir %s: %w", rc.cfg.dataDir, err)
	}
	rc.snapshotter = snap.New(rc.lg, snapDir)

	if !wal.Exist(walDir) {
		rc.clusterID = rc.cfg.clusterID
		rc.wal, err = wal.Create(rc.lg, walDir, walMetadata{memberID: rc.id, clusterID: rc.clusterID}.encode())
		if err != nil {
			return false, fmt.Errorf("create WAL in %s: %w", walDir, err)
		}
		return false, nil
	}

	// Only snapshots the WAL knows of are candidates; a snapshot file that
	// is corrupt is skipped in favour of the next newest.
	walSnaps, err := wal.ValidSnapshotEntries(rc.lg, walDir)
	if err != nil {
		return true, fmt.Errorf("read WAL snapshot records in %s: %w", walDir, err)
	}
	snapshot, err := rc.snapshotter.LoadNewestAvailable(walSnaps)
	if err != nil && !errors.Is(err, snap.ErrNoSnapshot) {
		return true, fmt.Errorf("load snapshot from %s: %w", snapDir, err)
	}

	walSnap := &walpb.Snapshot{Index: new(uint64(0)), Term: new(uint64(0))}
	if snapshot != nil {
		walSnap.Index = new(snapshot.GetMetadata().GetIndex())
		walSnap.Term = new(snapshot.GetMetadata().GetTerm())
		if err := rc.raftStorage.ApplySnapshot(withoutData(snapshot)); err != nil {
			return true, fmt.Errorf("apply snapshot: %w", err)
		}
		rc.confState = snapshot.GetMetadata().GetConfState()
		rc.appliedIndex = snapshot.GetMetadata().GetIndex()
		rc.lastSnapshotIndex.Store(rc.appliedIndex)
		rc.bootSnapshot = snapshot
	}

	metadata, hardState, entries, err := rc.readWAL(walDir, walSnap)
	if err != nil {
		var newest uint64
		for _, ws := range walSnaps {
			newest = max(newest, ws.GetIndex())
		}
		if newest > walSnap.GetIndex() {
			// The WAL before the newest snapshot may be gone; say that the
			// snapshot is what is missing, not only that the WAL failed.
			return true, fmt.Errorf("no valid snapshot file in %s for the WAL's snapshot at index %d (corrupt files are renamed *.broken), and the WAL cannot be replayed from index %d without it: %w",
				snapDir, newest, walSnap.GetIndex(), err)
		}
		return true, err
	}
	owner, err := decodeWALMetadata(metadata)
	if err != nil {
		rc.wal.Close()
		return true, fmt.Errorf("data dir %s: %w", rc.cfg.dataDir, err)
	}
	if owner.memberID != rc.id {
		rc.wal.Close()
		return true, fmt.Errorf("data dir %s belongs to member %d, not %d", rc.cfg.dataDir, owner.memberID, rc.id)
	}
	rc.clusterID = owner.clusterID
	if hardState != nil {
		if err := rc.raftStorage.SetHardState(hardState); err != nil {
			rc.wal.Close()
			return true, fmt.Errorf("restore hard state: %w", err)
		}
		rc.replayIndex = hardState.GetCommit()
	}
	if err := rc.raftStorage.Append(entries); err != nil {
		rc.wal.Close()
		return true, fmt.Errorf("restore log: %w", err)
	}
	rc.lg.Info("replayed WAL",
		zap.Uint64("snapshot-index", rc.appliedIndex),
		zap.Int("entries", len(entries)),
		zap.Uint64("commit-index", rc.replayIndex))
	return true, nil
}

// readWAL opens the WAL after walSnap and reads it to the end. A last
// record torn by a crash mid-write is cut off, once, as etcd does: it was
// never fsynced, so nobody was told it was saved.
func (rc *raftNode) readWAL(walDir string, walSnap *walpb.Snapshot) ([]byte, *raftpb.HardState, []*raftpb.Entry, error) {
	repaired := false
	for {
		w, err := wal.Open(rc.lg, walDir, walSnap)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("open WAL in %s: %w", walDir, err)
		}
		metadata, hardState, entries, err := w.ReadAll()
		if err == nil {
			rc.wal = w
			return metadata, hardState, entries, nil
		}
		w.Close()
		if repaired || !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, nil, fmt.Errorf("read WAL in %s: %w", walDir, err)
		}
		if !wal.Repair(rc.lg, walDir) {
			return nil, nil, nil, fmt.Errorf("repair torn WAL in %s: %w", walDir, err)
		}
		rc.lg.Warn("cut a torn record off the end of the WAL", zap.Error(err))
		repaired = true
	}
}

// startTransport starts rafthttp and tells it where the other members are.
// rafthttp talks only to members it has been told of: it drops messages to
// any other and refuses their connections. A member restarting from a
// snapshot takes the members from it; otherwise it starts from cfg.cluster,
// and the conf changes it applies add and remove members from there. For a
// member that joins, cfg.cluster is the cluster's member list as it was when
// the member was added (joinedCluster): without it, the new member could not
// answer the leader's first append, so it would never receive the log it
// would learn the members from.
func (rc *raftNode) startTransport() error {
	rc.transport = &rafthttp.Transport{
		Logger:      newTransportLogger(rc.lg),
		ID:          types.ID(rc.id),
		ClusterID:   types.ID(rc.clusterID),
		Raft:        rc,
		ServerStats: stats.NewServerStats("", ""),
		LeaderStats: stats.NewLeaderStats(rc.lg, types.ID(rc.id).String()),
		ErrorC:      make(chan error, 1),
	}
	if err := rc.transport.Start(); err != nil {
		return fmt.Errorf("start peer transport: %w", err)
	}
	if rc.bootSnapshot != nil {
		// The snapshot knows the members as of its index; entries after
		// it in the WAL add and remove the rest as they are applied.
		if err := rc.resetPeers(rc.bootSnapshot); err != nil {
			rc.transport.Stop()
			return err
		}
	} else {
		for id, u := range rc.cfg.cluster {
			if id != rc.id {
				rc.transport.AddPeer(types.ID(id), []string{u})
			}
		}
	}

	return nil
}

// resetPeers points the transport at exactly the members in a snapshot.
func (rc *raftNode) resetPeers(snapshot *raftpb.Snapshot) error {
	d, err := newSnapshotDecoder(snapshot.GetData())
	if err != nil {
		return err
	}
	members, _, err := d.decodeMembers()
	if err != nil {
		return err
	}
	rc.transport.RemoveAllPeers()
	for id, m := range members {
		if id != rc.id {
			rc.addPeer(m.ID, m.PeerURLs)
		}
	}
	return nil
}

// addPeer adds a member to the transport, which panics on a bad URL; URLs
// were checked when the member was proposed, so this only guards the log.
func (rc *raftNode) addPeer(id uint64, peerURLs []string) {
	if _, err := types.NewURLs(peerURLs); err != nil {
		rc.lg.Error("not adding peer with bad URLs", zap.Uint64("member-id", id), zap.Error(err))
		return
	}
	rc.transport.AddPeer(types.ID(id), peerURLs)
}

// serveReady is the raft goroutine: it ticks raft's clock and hands each
// Ready on, and on the way out shuts everything down.
func (rc *raftNode) serveReady() {
	defer rc.shutdown()

	ticker := time.NewTicker(rc.cfg.tickInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			rc.node.Tick()
		case rd := <-rc.node.Ready():
			if err := rc.handleReady(rd); err != nil {
				return // stopping
			}
		case err := <-rc.transport.ErrorC:
			// The only critical error rafthttp reports is a peer telling us
			// we were removed: our own removal entry may never reach us.
			rc.fail(fmt.Errorf("%w: %v", ErrRemoved, err))
			return
		case <-rc.stopC:
			return
		}
	}
}

// handleReady hands on what raft asks for. Raft runs with asynchronous
// storage writes: the disk work a Ready asks for comes as two messages,
// MsgStorageAppend for the append goroutine and MsgStorageApply for the
// apply goroutine (storage.go), and this goroutine never waits for a disk.
// Raft itself holds back every message that promises something about this
// member's disk (an append acknowledgement, a vote) and attaches it to the
// MsgStorageAppend, to be sent once the write is durable. Everything else
// goes out at once: the leader sends new entries to followers while it
// writes them itself (raft thesis §10.2.1), and a follower forwards
// proposals and read-index requests while its own fsync runs.
func (rc *raftNode) handleReady(rd raft.Ready) error {
	rc.logLeaderChange(rd) // before trackLeader, which records the new leader
	rc.trackLeader(rd)
	if !raft.IsEmptyHardState(rd.HardState) {
		rc.committed.Store(rd.HardState.GetCommit())
	}
	for _, rs := range rd.ReadStates {
		select {
		case rc.readStateC <- rs:
		default:
			rc.lg.Warn("read loop is not keeping up; dropped a read state", zap.Uint64("index", rs.Index))
		}
	}

	var toPeers []*raftpb.Message
	for _, m := range rd.Messages {
		switch m.GetTo() {
		case raft.LocalAppendThread:
			select {
			case rc.appendC <- m:
			case <-rc.stopC:
				return ErrStopped
			}
		case raft.LocalApplyThread:
			select {
			case rc.applyC <- applyTask{entries: m.GetEntries(), responses: m.GetResponses()}:
			case <-rc.stopC:
				return ErrStopped
			}
		default:
			toPeers = append(toPeers, m)
		}
	}
	rc.transport.Send(toPeers)
	return nil
}

// serveProposals feeds proposals into raft. node.Propose blocks while there
// is no leader, so it runs apart from the Ready loop, which must keep going
// for a leader to be elected.
func (rc *raftNode) serveProposals() {
	var batch []proposal
	for {
		select {
		case p := <-rc.proposeC:
			// Handlers that arrived while raft took the last proposal are
			// waiting to send theirs: take them all and propose one entry,
			// which raft logs, fsyncs, replicates and commits once.
			batch = rc.takeWaiting(append(batch[:0], p))
			rc.proposeBatch(batch)
		case cc := <-rc.confChangeC:
			rc.propose([]uint64{cc.GetId()}, func(ctx context.Context) error { return rc.node.ProposeConfChange(ctx, cc) })
		case <-rc.stopC:
			return
		}
	}
}

// maxBatchBytes stops a batch from growing once it holds this much. With
// one largest value (maxValueLimit) on top it stays inside the WAL's 10 MiB
// record limit.
const maxBatchBytes = 512 << 10

// takeWaiting adds to batch the proposals handlers are waiting to send, if
// any, until it holds maxBatchBytes.
func (rc *raftNode) takeWaiting(batch []proposal) []proposal {
	size := 0
	for _, p := range batch {
		size += len(p.data)
	}
	for size < maxBatchBytes {
		select {
		case p := <-rc.proposeC:
			batch = append(batch, p)
			size += len(p.data)
		default:
			return batch
		}
	}
	return batch
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
// raft. A proposal raft refuses never reaches the log, so no member will
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
		rc.waiters.Trigger(id, applyResult{err: err})
	}
}

// readIndex asks raft to confirm, with a heartbeat round, that the leader
// is still the leader and to report its commit index; the answer arrives
// on readStateC tagged with requestCtx.
func (rc *raftNode) readIndex(ctx context.Context, requestCtx []byte) error {
	return rc.node.ReadIndex(ctx, requestCtx)
}

// trackLeader records who leads, as rd reports it, and, in the Ready that
// makes this node leader, the index of the empty entry raft appends at the
// start of every leader's term. A new leader's commit index can lag entries
// its predecessor committed and acknowledged; it knows everything committed
// before it only once its own first entry has committed (raft thesis §6.4).
// Raft holds ReadIndex back until then, except on a lone voter, which it
// answers at once (etcd-io/raft PR #105), and a `default` read asks no one:
// so every read this leader serves also waits to apply that entry.
func (rc *raftNode) trackLeader(rd raft.Ready) {
	if rd.SoftState == nil {
		return
	}
	var start uint64
	if rd.SoftState.RaftState == raft.StateLeader && len(rd.Entries) > 0 {
		// Raft appends the empty entry in the step that makes this node
		// leader, so it is among this Ready's entries: the first with the
		// new term, the highest in the log.
		term := rd.Entries[len(rd.Entries)-1].GetTerm()
		i, _ := slices.BinarySearchFunc(rd.Entries, term, func(e *raftpb.Entry, t uint64) int { return cmp.Compare(e.GetTerm(), t) })
		start = rd.Entries[i].GetIndex()
	}
	// Stored before the leader, so a reader that sees this node lead sees
	// the start of its term.
	rc.termStart.Store(start)
	if rc.leader.Swap(rd.SoftState.Lead) != rd.SoftState.Lead {
		rc.leaderMu.Lock()
		if rc.leaderChangeC != nil {
			close(rc.leaderChangeC)
			rc.leaderChangeC = nil // the next leaderChange makes a new one
		}
		rc.leaderMu.Unlock()
	}
}

// leaderChange returns a channel that is closed the next time the leader
// this node knows changes, to None or to another member. Take it before
// looking at leaderID, so that no change can fall between the two.
func (rc *raftNode) leaderChange() <-chan struct{} {
	rc.leaderMu.Lock()
	defer rc.leaderMu.Unlock()
	if rc.leaderChangeC == nil {
		rc.leaderChangeC = make(chan struct{})
	}
	return rc.leaderChangeC
}

// waitLeader returns once ok holds for the leader this node knows, waking
// at each change of leader rather than polling.
func (rc *raftNode) waitLeader(ctx context.Context, ok func(leader uint64) bool) error {
	for {
		changed := rc.leaderChange()
		if ok(rc.leaderID()) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-rc.stopC:
			return ErrStopped
		}
	}
}

// termStartIndex is, while this node leads, the index of its first entry of
// the term, which every read it serves must see applied; otherwise 0.
func (rc *raftNode) termStartIndex() uint64 { return rc.termStart.Load() }

// leaderReadIndex is what a read served by this node as leader, without a
// ReadIndex round, must see applied: everything it knows is committed, which
// includes writes other members acknowledged, and its own first entry.
func (rc *raftNode) leaderReadIndex() uint64 {
	return max(rc.committed.Load(), rc.termStart.Load())
}

// leaderID is the member this node believes leads, or raft.None.
func (rc *raftNode) leaderID() uint64 { return rc.leader.Load() }

// committedIndex is the highest index this node knows to be committed.
func (rc *raftNode) committedIndex() uint64 { return rc.committed.Load() }

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
// raft, the WAL and commitC, which tells the kvstore that nothing more will
// come. The storage goroutines go first, while raft still takes the
// responses they deliver.
func (rc *raftNode) shutdown() {
	rc.stopOnce.Do(func() { close(rc.stopC) })
	rc.storage.Wait()
	rc.transport.Stop()
	rc.peerServer.Close()
	rc.node.Stop()
	if err := rc.wal.Close(); err != nil {
		rc.fail(fmt.Errorf("close WAL: %w", err))
	}
	close(rc.commitC)
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

func (rc *raftNode) walDir() string  { return walDir(rc.cfg.dataDir) }
func (rc *raftNode) snapDir() string { return filepath.Join(rc.cfg.dataDir, "snap") }

func walDir(dataDir string) string { return filepath.Join(dataDir, "wal") }

// hasWAL reports whether dataDir holds a member's WAL: a restart, not a first start.
func hasWAL(dataDir string) bool { return wal.Exist(walDir(dataDir)) }

// Process, IsIDRemoved, ReportUnreachable and ReportSnapshot make raftNode
// the rafthttp.Raft that the transport delivers peer messages to.

func (rc *raftNode) Process(ctx context.Context, m *raftpb.Message) error {
	return rc.node.Step(ctx, m)
}
func (rc *raftNode) IsIDRemoved(id uint64) bool { return rc.sm.isIDRemoved(id) }
func (rc *raftNode) ReportUnreachable(id uint64) {
	rc.node.ReportUnreachable(id)
}
func (rc *raftNode) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	rc.node.ReportSnapshot(id, status)
}
