package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	"go.uber.org/zap"
)

// readIndexRetry is how long to wait for a ReadIndex answer before asking
// again: raft silently drops the request if leadership changes meanwhile.
const readIndexRetry = 500 * time.Millisecond

// readLoop serves `consistent` reads with raft's ReadIndex, as etcd's
// linearizableReadLoop does. A linearizable read must see every write that
// completed before it began. Rather than put each read through the log, the
// member asks the leader for its commit index (the leader first confirms
// with a heartbeat round that it still leads), waits until its own state
// machine has applied that far, and then reads locally, on any member.
//
// Reads that arrive while a round is in flight wait for the next round, so
// one ReadIndex serves every read that was waiting when it was sent. The
// answer comes back from raft in a Ready, which handleReady puts on
// readStateC; if the loop is so far behind that readStateC is full, the
// answer is dropped (with a warning) and the loop asks again after
// readIndexRetry. Each read then waits for the apply itself, so the loop
// can send the next ReadIndex while the state machine catches up with the
// last.
type readLoop struct {
	lg      *zap.Logger
	raft    *raftNode
	store   *kvstore
	timeout time.Duration

	wakeC chan struct{} // holds one token while some reader waits for a round
	mu    sync.Mutex
	next  *readRound // the round the next ReadIndex will release

	metrics *metrics // set before run starts; nil keeps none (metrics.go)
}

// readRound is one ReadIndex round: done closes when the leader has
// confirmed index, the commit index reads of the round must wait to see
// applied, or err says why it could not.
type readRound struct {
	done  chan struct{}
	index uint64
	err   error
	reads int // readers that joined it, under readLoop.mu while it is next
}

// newReadLoop is the read loop of the member rn drives; run starts it.
// Each round waits for --request-timeout at most.
func newReadLoop(lg *zap.Logger, rn *raftNode, store *kvstore, timeout time.Duration) *readLoop {
	return &readLoop{
		lg:      lg,
		raft:    rn,
		store:   store,
		timeout: timeout,
		wakeC:   make(chan struct{}, 1),
		next:    &readRound{done: make(chan struct{})},
	}
}

// wait returns once the local state is at least as new as the cluster's
// was when wait was called: a read made after it is linearizable.
func (r *readLoop) wait(ctx context.Context) error {
	index, err := r.readIndex(ctx)
	if err != nil {
		return err
	}
	return r.store.waitApplied(ctx, index)
}

// readIndex returns the index this member must apply to be as new as the
// cluster was when readIndex was called: the leader's commit index then.
// It does not wait for the apply; a learner catching up compares it with
// how far it has got (autopromote.go).
func (r *readLoop) readIndex(ctx context.Context) (uint64, error) {
	r.mu.Lock()
	round := r.next
	round.reads++
	r.mu.Unlock()
	select {
	case r.wakeC <- struct{}{}:
	default: // a round is already asked for; it will include us
	}
	select {
	case <-round.done:
		return round.index, round.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-r.store.done:
		return 0, ErrStopped
	}
}

// run serves rounds until the store stops.
func (r *readLoop) run() {
	for {
		select {
		case <-r.wakeC:
		case <-r.store.done:
			return
		}
		// Readers that joined before this swap are served by a ReadIndex
		// sent after it, so after they began; later ones wait for the next.
		r.mu.Lock()
		round := r.next
		r.next = &readRound{done: make(chan struct{})}
		r.mu.Unlock()

		start := time.Now()
		round.index, round.err = r.requestReadIndex()
		r.metrics.readIndexRound(start, round.reads, round.err) // before its reads are answered
		close(round.done)
	}
}

// requestReadIndex sends a ReadIndex request tagged with a fresh id and
// waits for raft's answer, asking again if it is slow to come.
func (r *readLoop) requestReadIndex() (uint64, error) {
	if r.raft.leaderID() == raft.None {
		return 0, ErrNoLeader
	}
	// Ids only grow, so an answer tagged with an id below firstID belongs
	// to an earlier round that gave up, and is ignored.
	firstID := r.store.requestIDs.Next()
	if err := r.sendReadIndex(firstID); err != nil {
		return 0, err
	}
	deadline := time.NewTimer(r.timeout)
	defer deadline.Stop()
	retry := time.NewTicker(readIndexRetry)
	defer retry.Stop()
	for {
		select {
		case rs := <-r.raft.readStateC:
			if len(rs.RequestCtx) == 8 && binary.BigEndian.Uint64(rs.RequestCtx) >= firstID {
				// On a leader, also wait for its first entry of the
				// term: see trackLeader.
				return max(rs.Index, r.raft.termStartIndex()), nil
			}
		case <-retry.C:
			r.lg.Debug("no answer to ReadIndex yet; asking again")
			if err := r.sendReadIndex(r.store.requestIDs.Next()); err != nil {
				return 0, err
			}
		case <-deadline.C:
			if r.raft.leaderID() == raft.None {
				return 0, ErrNoLeader
			}
			return 0, fmt.Errorf("no read index within %s: %w", r.timeout, context.DeadlineExceeded)
		case <-r.store.done:
			return 0, ErrStopped
		}
	}
}

// sendReadIndex asks raft for a read index tagged with id.
func (r *readLoop) sendReadIndex(id uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	switch err := r.raft.readIndex(ctx, binary.BigEndian.AppendUint64(nil, id)); {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrStopped):
		return ErrStopped
	default:
		return fmt.Errorf("%w: read index: %v", ErrNoLeader, err)
	}
}
