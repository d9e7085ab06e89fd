package main

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"raftkv/api"
)

// Raft's Ready contract, in one place.
//
// The raft library decides; it does no I/O. Each Ready it hands out asks
// the server to do four things, and raft's safety depends on their order:
//
//  1. persist: append new entries and the hard state (term, vote, commit
//     index) to stable storage;
//  2. send: messages to peers;
//  3. apply: committed entries to the state machine;
//  4. advance: tell raft the work is done, so it hands out what follows.
//
// raftexample does all four on one goroutine, one Ready after another.
// raftkv runs raft with AsyncStorageWrites, which spreads them over three
// goroutines, each taking its work from one channel in the order raft made
// it, so that no step waits for another's disk:
//
//	step     goroutine                        function here     channel in
//	hand out Ready      (serveReady)          serveReady        node.Ready()
//	send     Ready                            serveReady        -
//	persist  append     (serveAppends)        saveAppends       appendC
//	send     append                           sendResponses     -
//	advance  append                           sendResponses     -
//	apply    hand-over  (serveCommitted)      -> kvstore        committedC, then applyC
//	advance  hand-over                        sendResponses     -
//
// The hand-over goroutine is what raft calls the apply thread, but it does
// not apply: it hands the committed entries, in order, to the kvstore's
// apply goroutine (kvstore.serveApply) on applyC, and the advance follows
// the hand-over. The kvstore applies them in the same order, and whatever
// needs the state at an index waits for it to get there: a snapshot or a
// conf change for applyBatch.applied, a read in kvstore.WaitApplied.
//
// With asynchronous writes there is no Advance call. Raft puts the disk work
// into two local messages: MsgStorageAppend (to raft.LocalAppendThread) and
// MsgStorageApply (to raft.LocalApplyThread). Each carries responses to
// deliver once the work is done; stepping those back into raft
// (MsgStorageAppendResp, MsgStorageApplyResp) is the advance.
//
// Why this order is safe. Raft's side (go.etcd.io/raft/v3, rawnode.go and
// log.go) guarantees the two rules that matter, and this file keeps them:
//
//   - Nothing that promises durability leaves before the fsync. Raft does not
//     put an append acknowledgement or a vote into Ready's messages: it
//     attaches them to the MsgStorageAppend that makes them true, and
//     serveAppends sends them only after saveAppends has fsynced. What
//     serveReady sends at once promises nothing about this member's disk: a
//     leader's appends go to followers while it writes the same entries
//     itself (raft thesis §10.2.1), since raft counts the leader's own copy
//     towards a quorum only when its MsgStorageAppendResp comes back.
//   - Only stable entries are applied. With asynchronous writes, raft puts
//     into MsgStorageApply only entries that are committed and already
//     stable on this member, so the kvstore never applies an entry this
//     member could lose in a crash.
//
// The append and hand-over goroutines run side by side; between them order
// does not matter, with one exception: a snapshot from the leader replaces the
// state, so it must reach the kvstore after the entries raft committed
// before it. serveAppends passes it to serveCommitted on committedC, behind
// them (installLeaderSnapshot).
//
// Why asynchronous: with Ready and Advance, raft held every message that
// arrived during a member's fsync until the next Ready; with these three
// goroutines a PUT no longer waits on fsyncs it has no part in (+27% for
// PUT c=64, PERFORMANCE.md).

// storageQueue is how many messages may wait for each of the append and
// hand-over goroutines before serveReady, and so raft, waits for them.
const storageQueue = 256

// committed is work for the hand-over goroutine, in log order: committed entries
// and the responses to deliver once they are handed to the kvstore, or a
// snapshot from the leader that the append goroutine has made durable.
type committed struct {
	entries   []*raftpb.Entry
	responses []*raftpb.Message
	snapshot  *raftpb.Snapshot
}

// serveReady is the Ready goroutine: it ticks raft's clock and hands out
// each Ready, and on the way out shuts everything down. It never waits for
// a disk: the disk work goes to the append goroutine (appendC) and the
// hand-over goroutine (committedC), and every other message goes to peers
// at once.
func (rc *raftNode) serveReady() {
	defer rc.shutdown()

	ticker := time.NewTicker(rc.cfg.TickInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			rc.node.Tick()
		case rd := <-rc.node.Ready():
			rc.trackLeader(rd)
			if !raft.IsEmptyHardState(rd.HardState) {
				rc.commitIndex.Store(rd.HardState.GetCommit())
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
						return
					}
				case raft.LocalApplyThread:
					select {
					case rc.committedC <- committed{entries: m.GetEntries(), responses: m.GetResponses()}:
					case <-rc.stopC:
						return
					}
				default:
					toPeers = append(toPeers, m)
				}
			}
			rc.transport.Send(toPeers)
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

// The append side: persist, then send what the fsync made true.

// serveAppends is the append goroutine, what raft calls the append thread
// (LocalAppendThread): it makes MsgStorageAppend messages durable and then
// delivers their responses.
func (rc *raftNode) serveAppends() {
	for {
		select {
		case m := <-rc.appendC:
			batch := rc.takeAppends(m)
			if err := rc.saveAppends(batch); err != nil {
				rc.fail(err)
				return
			}
			var responses []*raftpb.Message
			for _, saved := range batch {
				responses = append(responses, saved.GetResponses()...)
			}
			rc.sendResponses(responses)
		case <-rc.stopC:
			rc.saveQueuedAppends()
			return
		}
	}
}

// takeAppends adds to first the appends queued behind it, up to and
// including one that carries a snapshot: while this goroutine waited on the
// disk, raft went on producing them, and one fsync covers them all (group
// commit).
func (rc *raftNode) takeAppends(first *raftpb.Message) []*raftpb.Message {
	batch := []*raftpb.Message{first}
	for raft.IsEmptySnap(batch[len(batch)-1].GetSnapshot()) {
		select {
		case m := <-rc.appendC:
			batch = append(batch, m)
		default:
			return batch
		}
	}
	return batch
}

// saveAppends writes a batch of appends to the WAL, with one fsync, and to
// raft's in-memory log; only a snapshot, if the batch carries one, can come
// last.
func (rc *raftNode) saveAppends(batch []*raftpb.Message) error {
	var snapshotMsg *raftpb.Message
	if last := batch[len(batch)-1]; !raft.IsEmptySnap(last.GetSnapshot()) {
		snapshotMsg, batch = last, batch[:len(batch)-1]
	}
	hardState, entries := mergeAppends(batch)
	// Save fsyncs when raft requires it (new entries, term or vote). A new
	// commit index alone is not worth an fsync, as in etcd: the WAL buffers
	// it until the next fsync (or Close), so a crash can lose it; every
	// entry applied is on disk all the same (see bootIndex).
	if err := rc.wal.Save(hardState, entries); err != nil {
		return fmt.Errorf("save to WAL: %w", err)
	}
	if err := rc.raftStorage.Append(entries); err != nil {
		return fmt.Errorf("append to raft log: %w", err)
	}
	if snapshotMsg != nil {
		return rc.saveLeaderSnapshot(snapshotMsg)
	}
	return nil
}

// mergeAppends is what a batch of appends leaves behind: the last hard
// state, and the entries, each append's replacing those from its first
// index on, as a new leader may overwrite a follower's uncommitted tail.
func mergeAppends(batch []*raftpb.Message) (*raftpb.HardState, []*raftpb.Entry) {
	var hardState *raftpb.HardState
	var entries []*raftpb.Entry
	for _, m := range batch {
		if hs := appendHardState(m); hs != nil {
			hardState = hs
		}
		if ents := m.GetEntries(); len(ents) > 0 {
			if len(entries) > 0 {
				keep := uint64(0)
				if first := entries[0].GetIndex(); ents[0].GetIndex() > first {
					keep = min(ents[0].GetIndex()-first, uint64(len(entries)))
				}
				entries = entries[:keep]
			}
			entries = append(entries, ents...)
		}
	}
	return hardState, entries
}

// appendHardState is the hard state a MsgStorageAppend carries, or nil:
// raft sets its term, vote and commit together, or none of them.
func appendHardState(m *raftpb.Message) *raftpb.HardState {
	if m.Term == nil {
		return nil
	}
	return &raftpb.HardState{Term: m.Term, Vote: m.Vote, Commit: m.Commit}
}

// saveQueuedAppends writes the appends still queued when the node stops,
// without sending their responses. Raft hands a new commit index to this
// goroutine and the entries it commits to the hand-over goroutine side by side,
// so the kvstore may have applied, and a client been told of, entries whose
// commit index still waits here. Saving it lets a member stopped cleanly
// restart knowing everything it had applied (see bootIndex).
func (rc *raftNode) saveQueuedAppends() {
	for {
		select {
		case m := <-rc.appendC:
			if err := rc.saveAppends(rc.takeAppends(m)); err != nil {
				rc.fail(err)
				return
			}
		default:
			return
		}
	}
}

// sendResponses delivers the responses of storage work that is done: those
// addressed to this member go into raft (the advance: node.Step puts them
// on raft's recvc channel), the rest to peers (append acknowledgements and
// votes). Raft's goroutine runs until shutdown has waited for the append
// and hand-over goroutines, so Step cannot block for good.
func (rc *raftNode) sendResponses(responses []*raftpb.Message) {
	var toPeers []*raftpb.Message
	for _, m := range responses {
		if m.GetTo() == rc.id {
			rc.node.Step(context.Background(), m)
		} else {
			toPeers = append(toPeers, m)
		}
	}
	rc.transport.Send(toPeers)
}

// The hand-over side: committed entries to the kvstore, in log order.

// serveCommitted is the hand-over goroutine, what raft calls the apply
// thread (LocalApplyThread): it hands committed entries and snapshots to
// the kvstore on applyC, in log order, and takes snapshots of its own
// (maybeSnapshot). The kvstore applies them on its own goroutine
// (kvstore.serveApply), so this one goes on to the next batch meanwhile.
// Raft counts an entry applied once it is handed over (the
// MsgStorageApplyResp in c.responses); raft only uses that to hold back
// the next conf change, which waits for the kvstore anyway. What clients
// see is the kvstore's applied index.
//
// A conf change ends a batch: the kvstore applies it to the member table
// first, then this goroutine applies it to raft and the transport, if the
// table took it (confChangeToRaft).
func (rc *raftNode) serveCommitted() {
	if rc.bootSnapshot != nil {
		// The kvstore learns everything through applyC, the state on disk too.
		if err := rc.sendToApply(&applyBatch{snapshot: rc.bootSnapshot, applied: make(chan struct{})}); err != nil {
			return
		}
		rc.bootSnapshot = nil
	}
	for {
		var c committed
		select {
		case c = <-rc.committedC:
		case <-rc.stopC:
			return
		}
		if c.snapshot != nil {
			if err := rc.installLeaderSnapshot(c.snapshot); err != nil {
				rc.fail(err)
				return
			}
			continue
		}
		if len(c.entries) > 0 && c.entries[0].GetIndex() > rc.handedOver+1 {
			rc.fail(fmt.Errorf("first committed entry %d is past index %d + 1, the last one handed to the kvstore", c.entries[0].GetIndex(), rc.handedOver))
			return
		}
		// A batch at a time: a conf change ends one, since raft must
		// learn of it only once the member table has taken it.
		var b *applyBatch
		for rest := c.entries; len(rest) > 0; {
			n := confChangeEnd(rest)
			b, rest = &applyBatch{entries: rest[:n], applied: make(chan struct{})}, rest[n:]
			if err := rc.sendToApply(b); err != nil {
				return
			}
			last := b.entries[len(b.entries)-1]
			rc.handedOver = last.GetIndex()
			if last.GetType() == raftpb.EntryConfChange {
				removedSelf, err := rc.confChangeToRaft(b)
				if removedSelf {
					err = ErrRemoved // the kvstore has woken the removal's handler
				}
				if err != nil {
					rc.fail(err)
					return
				}
			}
		}
		rc.sendResponses(c.responses)
		if b != nil {
			if err := rc.maybeSnapshot(b.applied); err != nil {
				rc.fail(err)
				return
			}
		}
	}
}

// sendToApply sends a batch to the kvstore, unless the node is stopping.
func (rc *raftNode) sendToApply(b *applyBatch) error {
	select {
	case rc.applyC <- b:
		return nil
	case <-rc.stopC:
		return api.ErrStopped
	}
}
