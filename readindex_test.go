package main

import (
	"context"
	"sync"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

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
		Logger:             newRaftLogger(zap.NewNop(), 1),
	})
	rn := &raftNode{id: 1, node: node, raftStorage: ms, readStateC: make(chan raft.ReadState, 64)}
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
	eventually(t, kvTimeout, "member 1 to lead", func() bool { return rn.leaderID() == 1 })

	// A `default` read on the leader asks no one; it must wait as far.
	if got := rn.leaderCatchUpIndex(); got < acknowledged {
		t.Errorf("leader read index %d: a default read would miss write %d, acknowledged before the crash", got, acknowledged)
	}

	loop := newReadLoop(zap.NewNop(), rn, h.s, kvTimeout)
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
