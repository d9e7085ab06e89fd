package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/pkg/v3/wait"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"raftkv/codec"
	"raftkv/config"
	"raftkv/logging"
)

// The raft node: proposals and their batching (raft.go), the Ready
// contract (ready.go), who leads (leader.go) and ReadIndex (readindex.go).

// proposalRecorder is a raft.Node that only takes proposals, and hands
// each one's data to the test.
type proposalRecorder struct {
	raft.Node
	proposed chan []byte
}

func (n proposalRecorder) Propose(ctx context.Context, data []byte) error {
	select {
	case n.proposed <- data:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestServeProposalsOneWritePerKey proves a batch of proposals never writes
// one key twice: the proposal that would is held back to start the next
// batch, so that each of a key's versions has an index of its own.
// Proposals that write no key (advertise entries) batch freely.
func TestServeProposalsOneWritePerKey(t *testing.T) {
	proposeC := make(chan proposal, 8)
	node := proposalRecorder{proposed: make(chan []byte, 2)}
	rc := &raftNode{proposeC: proposeC, node: node, waiters: wait.New(), cfg: config.Config{RequestTimeout: kvTimeout}, stopC: make(chan struct{})}
	rc.leader.Store(1)
	// All waiting before the proposal goroutine looks: the first batch
	// takes every one it may.
	for i, key := range []string{"a", "b", "", "c", "", "a", "d"} {
		id := uint64(i + 1)
		data := encodePut(id, key, []byte("x"))
		if key == "" {
			data = codec.EncodeAdvertise(id, 1, "http://127.0.0.1:1")
		}
		proposeC <- proposal{requestID: id, data: data, key: key}
	}
	var wg sync.WaitGroup
	wg.Go(rc.serveProposals)
	defer wg.Wait()
	defer close(rc.stopC)

	// batch is the request ids of the next entry proposed, in order.
	batch := func() []uint64 {
		t.Helper()
		var ids []uint64
		data := kvRecv(t, node.proposed, "a proposal")
		if err := codec.ForEachCommand(data, func(command []byte) {
			cmd, err := codec.DecodeCommand(command)
			if err != nil {
				t.Errorf("undecodable command in a proposal: %v", err)
			}
			ids = append(ids, cmd.RequestID)
		}); err != nil {
			t.Fatalf("undecodable proposal: %v", err)
		}
		return ids
	}
	if ids := batch(); !slices.Equal(ids, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("batch holds request ids %v, want 1 to 5: the proposals before the second write to a", ids)
	}
	if ids := batch(); !slices.Equal(ids, []uint64{6, 7}) {
		t.Errorf("next batch holds request ids %v, want 6, the second write to a, held back, and 7", ids)
	}
}

// TestMergeAppends checks that one WAL write of a batch of appends leaves
// what the appends one by one would: a later append that starts inside the
// batch's entries replaces them from there on (a new leader overwriting an
// uncommitted tail), one that starts before the batch replaces them all,
// and the last hard state wins over earlier ones and over appends with none.
func TestMergeAppends(t *testing.T) {
	entry := func(index, term uint64) *raftpb.Entry {
		return &raftpb.Entry{Index: new(index), Term: new(term)}
	}
	appendMsg := func(hs *raftpb.HardState, ents ...*raftpb.Entry) *raftpb.Message {
		m := &raftpb.Message{Type: raftpb.MsgStorageAppend.Enum(), Entries: ents}
		if hs != nil {
			m.Term, m.Vote, m.Commit = hs.Term, hs.Vote, hs.Commit
		}
		return m
	}
	hs := func(term, commit uint64) *raftpb.HardState {
		return &raftpb.HardState{Term: new(term), Vote: new(uint64(1)), Commit: new(commit)}
	}
	type id struct{ index, term uint64 }

	for _, tc := range []struct {
		name      string
		batch     []*raftpb.Message
		wantHS    *raftpb.HardState
		wantEntry []id
	}{
		{"one", []*raftpb.Message{appendMsg(hs(1, 0), entry(1, 1), entry(2, 1))}, hs(1, 0), []id{{1, 1}, {2, 1}}},
		{"contiguous", []*raftpb.Message{
			appendMsg(hs(1, 1), entry(1, 1)),
			appendMsg(nil, entry(2, 1), entry(3, 1)),
		}, hs(1, 1), []id{{1, 1}, {2, 1}, {3, 1}}},
		{"overwrites the tail", []*raftpb.Message{
			appendMsg(nil, entry(4, 1), entry(5, 1), entry(6, 1)),
			appendMsg(hs(2, 4), entry(5, 2)),
		}, hs(2, 4), []id{{4, 1}, {5, 2}}},
		{"overwrites everything", []*raftpb.Message{
			appendMsg(hs(1, 3), entry(4, 1), entry(5, 1)),
			appendMsg(hs(2, 3), entry(3, 2)),
		}, hs(2, 3), []id{{3, 2}}},
		{"hard state only", []*raftpb.Message{
			appendMsg(hs(1, 2)),
			appendMsg(nil),
		}, hs(1, 2), nil},
		{"nothing", []*raftpb.Message{appendMsg(nil)}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotHS, gotEntries := mergeAppends(tc.batch)
			if gotHS.GetTerm() != tc.wantHS.GetTerm() || gotHS.GetCommit() != tc.wantHS.GetCommit() || (gotHS == nil) != (tc.wantHS == nil) {
				t.Errorf("hard state %v, want %v", gotHS, tc.wantHS)
			}
			var got []id
			for _, e := range gotEntries {
				got = append(got, id{e.GetIndex(), e.GetTerm()})
			}
			if !slices.Equal(got, tc.wantEntry) {
				t.Errorf("entries %v, want %v", got, tc.wantEntry)
			}
		})
	}
}

// TestLeaderReadsWaitForItsTermStart proves that a member newly elected
// leader serves `consistent` and `default` reads only from an index that
// covers every write acknowledged before it was elected.
//
// The log here is what a crash of a one-member cluster leaves: writes 3 and
// 4 were committed, applied and acknowledged, but the hard state on disk
// still commits only index 2, since a hard state that moves nothing but the
// commit index is not fsynced. (In a larger cluster a follower's commit
// index lags its leader's the same way, until the next heartbeat.) Raft
// answers a lone voter's ReadIndex with that commit index at once, before
// its entry of the new term commits, and a `default` read asks no one. The
// test plays the append and apply threads, and holds the new term's entry
// off the disk until raft has answered, so that answer is the stale one
// every time.
func TestLeaderReadsWaitForItsTermStart(t *testing.T) {
	const acknowledged = 4 // the last write a client was told was saved
	h := newKVTest(t)
	log := []*raftpb.Entry{
		kvEntry(2, encodePut(h.s.requestIDs.Next(), "k", []byte("v2"))),
		kvEntry(3, encodePut(h.s.requestIDs.Next(), "k", []byte("v3"))),
		kvEntry(acknowledged, encodePut(h.s.requestIDs.Next(), "k", []byte("v4"))),
	}
	// Applied before the crash only as far as the hard state on disk says:
	// the restart replays no further.
	h.apply(kvEntry(1, nil), log[0])

	ms := raft.NewMemoryStorage()
	if err := ms.ApplySnapshot(&raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index: new(uint64(1)), Term: new(uint64(1)),
		ConfState: &raftpb.ConfState{Voters: []uint64{1}},
	}}); err != nil {
		t.Fatal(err)
	}
	if err := ms.Append(log); err != nil {
		t.Fatal(err)
	}
	if err := ms.SetHardState(&raftpb.HardState{Term: new(uint64(1)), Vote: new(uint64(1)), Commit: new(uint64(2))}); err != nil {
		t.Fatal(err)
	}
	node := raft.RestartNode(&raft.Config{
		ID:                 1,
		ElectionTick:       10,
		HeartbeatTick:      1,
		Storage:            ms,
		Applied:            2,
		MaxSizePerMsg:      1 << 20,
		MaxInflightMsgs:    maxInflightAppends,
		AsyncStorageWrites: true,
		Logger:             logging.NewRaftLogger(zap.NewNop(), 1),
	})
	rn := &raftNode{id: 1, lg: zap.NewNop(), node: node, raftStorage: ms, readStateC: make(chan raft.ReadState, 64)}
	threads := &loneLeaderThreads{t: t, h: h, node: node, storage: ms, rn: rn,
		answeredC: make(chan uint64, 1), releaseC: make(chan struct{}), stopC: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(threads.run)
	t.Cleanup(func() {
		close(threads.stopC)
		wg.Wait()
		node.Stop()
	})

	if err := node.Campaign(kvContext(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, kvTimeout, "member 1 to lead", func() bool { return rn.Leader() == 1 })

	// A `default` read on the leader asks no one; it must wait as far.
	if got := rn.leaderCatchUpIndex(); got < acknowledged {
		t.Errorf("leader read index %d: a default read would miss write %d, acknowledged before the crash", got, acknowledged)
	}

	loop := newReadLoop(zap.NewNop(), rn, h.s, kvTimeout, nil)
	resC := h.start(func(context.Context) (uint64, error) { return loop.requestReadIndex() })
	t.Logf("raft answered the first ReadIndex with index %d", kvRecv(t, threads.answeredC, "raft's answer to ReadIndex"))
	close(threads.releaseC)

	r := kvRecv(t, resC, "the read index")
	if r.err != nil {
		t.Fatalf("requestReadIndex: %v", r.err)
	}
	if r.index < acknowledged {
		t.Fatalf("read index %d: a read would miss write %d, acknowledged before the crash", r.index, acknowledged)
	}
}

// loneLeaderThreads plays raft's append and apply threads for a node run
// with asynchronous storage writes, holding every append that carries
// entries, and all after it, until releaseC closes.
type loneLeaderThreads struct {
	t         *testing.T
	h         *kvTest
	node      raft.Node
	storage   *raft.MemoryStorage
	rn        *raftNode
	answeredC chan uint64   // the first read index raft hands out
	releaseC  chan struct{} // closed to let entries reach the disk
	stopC     chan struct{}
}

func (l *loneLeaderThreads) run() {
	var held []*raftpb.Message
	releaseC := l.releaseC
	for {
		select {
		case rd := <-l.node.Ready():
			l.rn.trackLeader(rd)
			for _, rs := range rd.ReadStates {
				l.rn.readStateC <- rs
				select {
				case l.answeredC <- rs.Index:
				default:
				}
			}
			for _, m := range rd.Messages {
				switch m.GetTo() {
				case raft.LocalAppendThread:
					held = append(held, m)
				case raft.LocalApplyThread:
					l.apply(m)
				}
			}
			for len(held) > 0 && (releaseC == nil || len(held[0].GetEntries()) == 0) {
				l.save(held[0])
				held = held[1:]
			}
		case <-releaseC:
			releaseC = nil
			for _, m := range held {
				l.save(m)
			}
			held = nil
		case <-l.stopC:
			return
		}
	}
}

// save makes an append durable, as far as this test needs, and tells raft.
func (l *loneLeaderThreads) save(m *raftpb.Message) {
	if hs := appendHardState(m); hs != nil {
		if err := l.storage.SetHardState(hs); err != nil {
			l.t.Error(err)
		}
	}
	if err := l.storage.Append(m.GetEntries()); err != nil {
		l.t.Error(err)
	}
	l.respond(m)
}

// apply hands committed entries to the store, waits until they are
// applied, and tells raft.
func (l *loneLeaderThreads) apply(m *raftpb.Message) {
	b := &applyBatch{entries: m.GetEntries(), applied: make(chan struct{})}
	select {
	case l.h.applyC <- b:
		<-b.applied
	case <-l.stopC:
		return
	}
	l.respond(m)
}

// respond steps into raft the messages m asks to be delivered once its
// work is done: with asynchronous storage writes, raft learns that way what
// is durable or applied.
func (l *loneLeaderThreads) respond(m *raftpb.Message) {
	for _, resp := range m.GetResponses() {
		if err := l.node.Step(context.Background(), resp); err != nil {
			l.t.Error(err)
		}
	}
}

// TestClusterFollowerWriteIsConsistentEverywhere proves a write a follower acknowledged is seen at once by a consistent read on every member.
func TestClusterFollowerWriteIsConsistentEverywhere(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	var last uint64
	for i := range 6 {
		// Alternate between the two followers, so each answers some writes.
		via := clusterOther(t, c, leader)
		if i%2 == 1 {
			via = clusterOther(t, c, leader, via)
		}
		key, value := fmt.Sprintf("rw/%d", i), fmt.Sprintf("value-%d", i)
		index := clusterPut(t, c, via, key, value)
		if index <= last {
			t.Fatalf("write %d: X-Raft-Index %d not above the previous write's %d", i, index, last)
		}
		last = index
		// No polling: the 204 means committed, so every member must see it now.
		for _, id := range []uint64{1, 2, 3} {
			clusterMustRead(t, c, id, key, levelConsistent, value)
		}
		// The leader's default read waits for what it knows committed.
		clusterMustRead(t, c, leader, key, levelDefault, value)
	}
}

// TestClusterNoLeader proves a member without a quorum answers 503 with Retry-After, and a leader that just lost its followers fails a write with a one-line 503 or 504.
func TestClusterNoLeader(t *testing.T) {
	t.Run("survivor", func(t *testing.T) {
		c := newTestCluster(t, 3, nil)
		survivor := c.waitLeader()
		clusterPut(t, c, survivor, "noleader/k", "v")
		clusterStopAllBut(t, c, survivor)
		// CheckQuorum makes the lone leader step down within an election timeout or two.
		eventually(t, 5*time.Second, "the survivor to report no leader", func() bool {
			return do(t, http.MethodGet, c.url(survivor, "/health"), "").code == http.StatusServiceUnavailable
		})
		for _, req := range []struct{ method, path string }{
			{http.MethodGet, "/health"},
			{http.MethodPut, "/keys/noleader/k"},
			{http.MethodDelete, "/keys/noleader/k"},
			{http.MethodGet, "/keys/noleader/k?level=consistent"},
			{http.MethodGet, "/keys/noleader/k?level=default"},
		} {
			r := do(t, req.method, c.url(survivor, req.path), "w")
			what := req.method + " " + req.path
			if r.code != http.StatusServiceUnavailable {
				t.Fatalf("%s on the survivor: %d %q, want 503", what, r.code, r.body)
			}
			if r.header.Get("Retry-After") == "" {
				t.Fatalf("%s on the survivor: 503 without Retry-After", what)
			}
			clusterOneLineBody(t, what, r)
		}
		// Stale reads still answer from what the survivor has.
		clusterMustRead(t, c, survivor, "noleader/k", levelStale, "v")
	})

	t.Run("leader loses followers", func(t *testing.T) {
		const timeout = 500 * time.Millisecond
		c := newTestCluster(t, 3, func(cfg *config.Config) { cfg.RequestTimeout = timeout })
		leader := c.waitLeader()
		clusterPut(t, c, leader, "noleader/k", "v")
		clusterStopAllBut(t, c, leader)
		start := time.Now()
		r := do(t, http.MethodPut, c.url(leader, "/keys/noleader/k"), "w")
		if r.code != http.StatusGatewayTimeout && r.code != http.StatusServiceUnavailable {
			t.Fatalf("PUT on a leader without followers: %d %q, want 504 or 503", r.code, r.body)
		}
		if elapsed := time.Since(start); elapsed > timeout+2*time.Second {
			t.Fatalf("PUT on a leader without followers took %s with a request timeout of %s", elapsed, timeout)
		}
		clusterOneLineBody(t, "PUT on a leader without followers", r)
		if r.code == http.StatusServiceUnavailable && r.header.Get("Retry-After") == "" {
			t.Fatalf("PUT on a leader without followers: 503 without Retry-After")
		}
		// The write never committed: the old value is what the leader has.
		clusterMustRead(t, c, leader, "noleader/k", levelStale, "v")
	})
}
