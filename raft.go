package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"runtime/debug"
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
	"google.golang.org/protobuf/proto"
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

	// maxSnapFiles and maxWALFiles are how many old snapshot and WAL files
	// to keep on disk; older ones are deleted once raft no longer needs them.
	maxSnapFiles = 5
	maxWALFiles  = 5

	// clusterID is checked by rafthttp on every peer request. All raftkv
	// clusters share it; peers are told apart by member id.
	clusterID = 0x1000
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
// it: it persists what raft hands it to etcd's WAL and snapshot files, sends
// raft's messages to peers with etcd's rafthttp, and publishes committed
// entries on commitC for the kvstore to apply. A second goroutine
// (serveProposals) feeds proposals from proposeC and confChangeC into raft.
type raftNode struct {
	id            uint64
	cfg           config
	lg            *zap.Logger
	sm            stateMachine
	waiters       wait.Wait // to fail proposals raft refused; nothing else will ever wake them
	snapshotCount uint64

	proposeC    <-chan proposal
	confChangeC <-chan *raftpb.ConfChange
	commitC     chan<- *commit
	readStateC  chan raft.ReadState // answers to ReadIndex requests, for the read loop

	node        raft.Node
	raftStorage *raft.MemoryStorage // raft's view of the log; the WAL is its durable copy
	wal         *wal.WAL
	snapshotter *snap.Snapshotter
	transport   *rafthttp.Transport
	peerServer  *http.Server

	// Owned by serveReady.
	confState         *raftpb.ConfState
	appliedIndex      uint64           // last index published on commitC
	forceSnapshot     bool             // a conf change was applied since the last snapshot
	bootSnapshot      *raftpb.Snapshot // the snapshot found on disk, published first
	lastSnapshotIndex atomic.Uint64    // index of the newest snapshot on disk

	// replayIndex is the commit index found in the WAL at start: once the
	// kvstore has applied this far it holds everything this member knew.
	replayIndex uint64

	// Updated from each Ready, read by the HTTP API.
	leader    atomic.Uint64
	committed atomic.Uint64

	stopOnce sync.Once
	stopC    chan struct{} // closed to stop; also stops the purge and listener goroutines
	doneC    chan struct{} // closed when serveReady has shut everything down
	err      error         // why serveReady stopped, if not asked to; set before doneC closes
}

// startRaftNode opens (or creates) the member's WAL and snapshots, starts
// the peer transport and raft, and starts serving. Committed entries appear
// on commitC, which is closed when the node stops.
func startRaftNode(cfg config, lg *zap.Logger, sm stateMachine, waiters wait.Wait,
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
		return nil, fmt.Errorf("listen for peers on %s: %w", u.Host, err)
	}
	walExisted, err := rc.openStorage()
	if err != nil {
		peerLn.Close()
		close(rc.stopC)
		return nil, err
	}
	c := &raft.Config{
		ID:              rc.id,
		ElectionTick:    electionTicks,
		HeartbeatTick:   heartbeatTicks,
		Storage:         diskSnapshots{MemoryStorage: rc.raftStorage, snapshotter: rc.snapshotter},
		Applied:         rc.appliedIndex,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: 256,
		// Bound the log a leader without quorum accumulates; proposals
		// beyond it are dropped and their handlers told so.
		MaxUncommittedEntriesSize: 1 << 30,
		// CheckQuorum makes a leader that cannot hear a majority step down,
		// so a partitioned old leader stops serving `default` reads; PreVote
		// keeps a rejoining member from disrupting a healthy leader.
		CheckQuorum:       true,
		PreVote:           true,
		StepDownOnRemoval: true,
		Logger:            raftLogger{lg.Sugar()},
	}
	if walExisted || cfg.join != "" {
		// A restart resumes from what is on disk; a joining member starts
		// empty and learns the cluster from the leader's log or snapshot.
		rc.node = raft.RestartNode(c)
	} else {
		peers := make([]raft.Peer, len(cfg.cluster))
		for i, u := range cfg.cluster {
			// Marshalling a member (numbers and strings) cannot fail.
			ctx, _ := json.Marshal(member{ID: uint64(i + 1), PeerURLs: []string{u}})
			peers[i] = raft.Peer{ID: uint64(i + 1), Context: ctx}
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
		peerLn.Close()
		close(rc.stopC)
		rc.wal.Close()
		return nil, err
	}
	// Serve peers only now too: their messages go straight into rc.node.
	rc.peerServer = &http.Server{Handler: rc.transport.Handler()}
	go rc.peerServer.Serve(peerLn)
	go rc.purgeOldFiles()
	go rc.serveReady()
	go rc.serveProposals()
	return rc, nil
}

// openStorage creates the data dir on first start; on a restart it loads the
// newest valid snapshot and replays the WAL after it into raftStorage.
func (rc *raftNode) openStorage() (walExisted bool, err error) {
	walDir, snapDir := rc.walDir(), rc.snapDir()
	if err := fileutil.TouchDirAll(rc.lg, snapDir); err != nil {
		return false, fmt.Errorf("data dir %s: %w", rc.cfg.dataDir, err)
	}
	rc.snapshotter = snap.New(rc.lg, snapDir)

	if !wal.Exist(walDir) {
		// The WAL's metadata records whose log this is, so that a data
		// dir is never replayed as another member's.
		rc.wal, err = wal.Create(rc.lg, walDir, binary.AppendUvarint(nil, rc.id))
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
	if owner, _ := binary.Uvarint(metadata); owner != rc.id {
		rc.wal.Close()
		return true, fmt.Errorf("data dir %s belongs to member %d, not %d", rc.cfg.dataDir, owner, rc.id)
	}
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
func (rc *raftNode) startTransport() error {
	rc.transport = &rafthttp.Transport{
		Logger:      rc.lg,
		ID:          types.ID(rc.id),
		ClusterID:   clusterID,
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
		for i, u := range rc.cfg.cluster {
			if id := uint64(i + 1); id != rc.id {
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

// serveReady is the raft goroutine: it ticks raft's clock and handles each
// Ready, and on the way out shuts everything down.
func (rc *raftNode) serveReady() {
	defer rc.shutdown()

	if rc.bootSnapshot != nil {
		// The kvstore learns everything through commitC, the state on disk too.
		if err := rc.publish(&commit{snapshot: rc.bootSnapshot, applyDoneC: make(chan struct{})}); err != nil {
			return
		}
		rc.bootSnapshot = nil
	}

	ticker := time.NewTicker(rc.cfg.tickInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			rc.node.Tick()
		case rd := <-rc.node.Ready():
			if err := rc.handleReady(rd); err != nil {
				if !errors.Is(err, ErrStopped) {
					rc.err = err
				}
				return
			}
		case err := <-rc.transport.ErrorC:
			// The only critical error rafthttp reports is a peer telling us
			// we were removed: our own removal entry may never reach us.
			rc.err = fmt.Errorf("%w: %v", ErrRemoved, err)
			return
		case <-rc.stopC:
			return
		}
	}
}

// handleReady does what raft asks, in the order raft requires: save the
// snapshot, save entries and hard state, send messages, apply, advance. Two
// steps may come early, as etcd takes them, because neither waits on what
// this member has yet to write:
//
//   - Messages go out before the disk write, except the ones that promise
//     it: a vote, and an acknowledgement of appended entries (see
//     mustPersistFirst). So the leader sends its entries to followers while
//     it writes them itself (raft thesis §10.2.1), and a follower forwards a
//     proposal or a read-index request without waiting for its fsync.
//   - Committed entries are applied while the disk write runs: committed
//     means a majority already has them on disk, whatever this member's
//     write then does.
func (rc *raftNode) handleReady(rd raft.Ready) error {
	if rd.SoftState != nil {
		rc.leader.Store(rd.SoftState.Lead)
	}
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

	afterSave := rc.sendBeforeSave(rd.Messages)

	// Raft never hands over committed entries in the Ready that carries a
	// snapshot, so the kvstore cannot get entries before the snapshot they
	// follow.
	applyDoneC, err := rc.publishEntries(rd.CommittedEntries)
	if err != nil {
		return err
	}

	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := rc.saveSnapshot(rd.Snapshot); err != nil {
			return err
		}
	}
	if err := rc.wal.Save(rd.HardState, rd.Entries); err != nil {
		return fmt.Errorf("save to WAL: %w", err)
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := rc.installSnapshot(rd.Snapshot); err != nil {
			return err
		}
	}
	if err := rc.raftStorage.Append(rd.Entries); err != nil {
		return fmt.Errorf("append to raft log: %w", err)
	}
	rc.transport.Send(afterSave)

	if err := rc.maybeSnapshot(applyDoneC); err != nil {
		return err
	}
	rc.node.Advance()
	return nil
}

// mustPersistFirst reports whether m may only be sent once this Ready is on
// disk: a vote must not be forgotten by a restart, nor an acknowledged entry
// lost, or the leader would count on what this member no longer has. These
// are the messages raft itself holds back in its asynchronous-write mode.
func mustPersistFirst(m *raftpb.Message) bool {
	switch m.GetType() {
	case raftpb.MsgAppResp, raftpb.MsgVoteResp, raftpb.MsgPreVoteResp:
		return true
	}
	return false
}

// sendBeforeSave sends the messages that need not wait for this Ready's
// disk write and returns, in their order, those that must.
func (rc *raftNode) sendBeforeSave(msgs []*raftpb.Message) (afterSave []*raftpb.Message) {
	var now []*raftpb.Message
	for _, m := range msgs {
		if mustPersistFirst(m) {
			afterSave = append(afterSave, m)
		} else {
			now = append(now, m)
		}
	}
	rc.transport.Send(now)
	return afterSave
}

// installSnapshot takes a snapshot the leader sent: raft's log restarts at
// it, the kvstore loads it, and the transport learns its members.
func (rc *raftNode) installSnapshot(snapshot *raftpb.Snapshot) error {
	// The hard state saved with the snapshot must be on disk before WAL
	// files are released, or a crash could leave a commit index beyond the
	// log (etcd issue 10219).
	if err := rc.wal.Sync(); err != nil {
		return fmt.Errorf("sync WAL: %w", err)
	}
	if err := rc.raftStorage.ApplySnapshot(withoutData(snapshot)); err != nil {
		return fmt.Errorf("apply snapshot to raft log: %w", err)
	}
	if err := rc.publish(&commit{snapshot: snapshot, applyDoneC: make(chan struct{})}); err != nil {
		return err
	}
	index := snapshot.GetMetadata().GetIndex()
	rc.confState = snapshot.GetMetadata().GetConfState()
	rc.appliedIndex = index
	rc.lastSnapshotIndex.Store(index)
	if err := rc.resetPeers(snapshot); err != nil {
		return err
	}
	if err := rc.wal.ReleaseLockTo(index); err != nil {
		return fmt.Errorf("release WAL: %w", err)
	}
	rc.lg.Info("installed snapshot from leader", zap.Uint64("index", index))
	return nil
}

// publishEntries applies conf changes to raft and the transport, then hands
// the whole batch to the kvstore. It returns the batch's applyDoneC, and
// ErrRemoved once this member's own removal is published.
func (rc *raftNode) publishEntries(entries []*raftpb.Entry) (<-chan struct{}, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	if first := entries[0].GetIndex(); first > rc.appliedIndex+1 {
		return nil, fmt.Errorf("first committed entry %d is past applied index %d + 1", first, rc.appliedIndex)
	}
	removedSelf := false
	for _, e := range entries {
		if e.GetType() != raftpb.EntryConfChange {
			continue
		}
		cc := &raftpb.ConfChange{}
		if err := proto.Unmarshal(e.GetData(), cc); err != nil {
			return nil, fmt.Errorf("decode conf change at %d: %w", e.GetIndex(), err)
		}
		rc.confState = rc.node.ApplyConfChange(cc)
		rc.forceSnapshot = true
		switch id := cc.GetNodeId(); cc.GetType() {
		case raftpb.ConfChangeAddNode:
			if m, err := memberFromConfChange(cc); err != nil {
				rc.lg.Error("conf change without a member", zap.Uint64("index", e.GetIndex()), zap.Error(err))
			} else if id != rc.id {
				rc.addPeer(id, m.PeerURLs)
			}
		case raftpb.ConfChangeRemoveNode:
			if id == rc.id {
				removedSelf = true
			} else {
				rc.transport.RemovePeer(types.ID(id))
			}
		}
	}

	c := &commit{entries: entries, applyDoneC: make(chan struct{})}
	if err := rc.publish(c); err != nil {
		return nil, err
	}
	rc.appliedIndex = entries[len(entries)-1].GetIndex()
	if removedSelf {
		// Published first, so the kvstore still wakes the handler of
		// the removal if it is waiting on this member.
		return c.applyDoneC, ErrRemoved
	}
	return c.applyDoneC, nil
}

// publish sends a batch to the kvstore, unless the node is stopping.
func (rc *raftNode) publish(c *commit) error {
	select {
	case rc.commitC <- c:
		return nil
	case <-rc.stopC:
		return ErrStopped
	}
}

// maybeSnapshot snapshots the kvstore once snapshotCount entries have been
// applied since the last snapshot, then compacts raft's in-memory log and
// lets the WAL release the files the snapshot covers.
//
// It also snapshots right after a conf change, as etcd does. A member added
// after the leader compacted its log can only catch up by snapshot, and it
// refuses one whose configuration does not include it: without a fresh
// snapshot it would wait, empty, for snapshotCount more writes.
func (rc *raftNode) maybeSnapshot(applyDoneC <-chan struct{}) error {
	if applyDoneC == nil || (!rc.forceSnapshot && rc.appliedIndex-rc.lastSnapshotIndex.Load() < rc.snapshotCount) {
		return nil
	}
	// The kvstore applies asynchronously; the snapshot must hold exactly
	// the state at appliedIndex, so wait for it to get there.
	select {
	case <-applyDoneC:
	case <-rc.stopC:
		return ErrStopped
	}
	data := rc.sm.snapshot()
	snapshot, err := rc.raftStorage.CreateSnapshot(rc.appliedIndex, rc.confState, nil)
	if err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	snapshot.Data = data // a copy of raft's; only the file on disk keeps the data (see diskSnapshots)
	if err := rc.saveSnapshot(snapshot); err != nil {
		return err
	}
	keep := min(rc.snapshotCount, maxCatchUpEntries)
	if rc.appliedIndex > keep {
		if err := rc.raftStorage.Compact(rc.appliedIndex - keep); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return fmt.Errorf("compact raft log: %w", err)
		}
	}
	if err := rc.wal.ReleaseLockTo(rc.appliedIndex); err != nil {
		return fmt.Errorf("release WAL: %w", err)
	}
	rc.lastSnapshotIndex.Store(rc.appliedIndex)
	rc.forceSnapshot = false
	rc.lg.Info("saved snapshot", zap.Uint64("index", rc.appliedIndex))
	if len(data) >= releaseMemoryAbove {
		go releaseSnapshotMemory()
	}
	return nil
}

// saveSnapshot writes the snapshot file, then the WAL record that points
// at it: a crash in between leaves an unused file, never a WAL record
// without its snapshot.
func (rc *raftNode) saveSnapshot(snapshot *raftpb.Snapshot) error {
	if err := rc.snapshotter.SaveSnap(snapshot); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	md := snapshot.GetMetadata()
	walSnap := &walpb.Snapshot{Index: new(md.GetIndex()), Term: new(md.GetTerm()), ConfState: md.GetConfState()}
	if err := rc.wal.SaveSnapshot(walSnap); err != nil {
		return fmt.Errorf("save snapshot record to WAL: %w", err)
	}
	return nil
}

// releaseSnapshotMemory returns freed memory to the OS at once. Making or
// loading a snapshot takes several copies of the whole state (the encoding,
// then the snap package's two protobuf layers); without this the process
// keeps that high-water mark as its size. It runs a garbage collection, so
// a caller that must not pause runs it on a goroutine of its own.
func releaseSnapshotMemory() { debug.FreeOSMemory() }

// releaseMemoryAbove is the snapshot size from which making one is followed
// by releaseSnapshotMemory. Below it the copies are too small to matter, and
// a forced collection every few seconds under load costs more CPU (8% of a
// member's, measured at 10 000-key snapshots) than it gives back memory.
const releaseMemoryAbove = 32 << 20

// diskSnapshots is raft's in-memory log with snapshots kept on disk only:
// the MemoryStorage holds each snapshot's metadata, and Snapshot reads the
// data back from the newest snapshot file. Raft asks for it only to send a
// follower that has fallen behind the log; keeping the whole state machine
// in memory a second time for that would double a member's footprint.
type diskSnapshots struct {
	*raft.MemoryStorage
	snapshotter *snap.Snapshotter
}

// Snapshot returns the newest snapshot, data included.
func (s diskSnapshots) Snapshot() (*raftpb.Snapshot, error) {
	meta, err := s.MemoryStorage.Snapshot()
	if err != nil || meta.GetMetadata().GetIndex() == 0 {
		return meta, err
	}
	snapshot, err := s.snapshotter.Load()
	if err != nil || snapshot.GetMetadata().GetIndex() != meta.GetMetadata().GetIndex() {
		// Made in memory but not yet saved to disk, or the other way round;
		// raft asks again later.
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return snapshot, nil
}

// withoutData is snapshot with its metadata only, for the MemoryStorage.
func withoutData(snapshot *raftpb.Snapshot) *raftpb.Snapshot {
	return &raftpb.Snapshot{Metadata: snapshot.GetMetadata()}
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

// stop stops the node and waits for it. It returns why the node stopped if
// it stopped on its own; ErrRemoved when this member was removed.
func (rc *raftNode) stop() error {
	rc.stopOnce.Do(func() { close(rc.stopC) })
	<-rc.doneC
	return rc.err
}

// shutdown releases everything serveReady owned: the transport, raft, the
// WAL and commitC, which tells the kvstore that nothing more will come.
func (rc *raftNode) shutdown() {
	rc.stopOnce.Do(func() { close(rc.stopC) })
	rc.transport.Stop()
	rc.peerServer.Close()
	rc.node.Stop()
	if err := rc.wal.Close(); err != nil && rc.err == nil {
		rc.err = fmt.Errorf("close WAL: %w", err)
	}
	close(rc.commitC)
	close(rc.doneC)
}

// purgeOldFiles deletes old snapshot and WAL files beyond the newest few.
// A WAL file is deleted only once the WAL has released it, after a snapshot
// covers it.
func (rc *raftNode) purgeOldFiles() {
	const interval = 30 * time.Second
	snapErrC := fileutil.PurgeFile(rc.lg, rc.snapDir(), "snap", maxSnapFiles, interval, rc.stopC)
	walErrC := fileutil.PurgeFile(rc.lg, rc.walDir(), "wal", maxWALFiles, interval, rc.stopC)
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

// raftLogger lets raft log through zap. etcd has the same adapter in its
// etcdserver package, but importing that pulls in the whole etcd server;
// zap's SugaredLogger already has every method raft wants but these two.
type raftLogger struct{ *zap.SugaredLogger }

func (l raftLogger) Warning(args ...any)                 { l.Warn(args...) }
func (l raftLogger) Warningf(format string, args ...any) { l.Warnf(format, args...) }
