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

	"raftkv/api"
	"raftkv/metrics"
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
// answer comes back from raft in a Ready, which serveReady puts on
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

	metrics *metrics.Metrics // nil keeps none
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
func newReadLoop(lg *zap.Logger, rn *raftNode, store *kvstore, timeout time.Duration, m *metrics.Metrics) *readLoop {
	return &readLoop{
		lg:      lg,
		raft:    rn,
		store:   store,
		timeout: timeout,
		metrics: m,
		wakeC:   make(chan struct{}, 1),
		next:    &readRound{done: make(chan struct{})},
	}
}

// WaitLinearizable returns once the local state is at least as new as the
// cluster's was when it was called: a read made after it is linearizable.
func (l *readLoop) WaitLinearizable(ctx context.Context) error {
	index, err := l.ReadIndex(ctx)
	if err != nil {
		return err
	}
	return l.store.WaitApplied(ctx, index)
}

// ReadIndex returns the index this member must apply to be as new as the
// cluster was when ReadIndex was called: the leader's commit index then,
// confirmed by a heartbeat round. It does not wait for the apply; a
// learner catching up compares it with how far it has got (package join).
func (l *readLoop) ReadIndex(ctx context.Context) (uint64, error) {
	l.mu.Lock()
	round := l.next
	round.reads++
	l.mu.Unlock()
	select {
	case l.wakeC <- struct{}{}:
	default: // a round is already asked for; it will include us
	}
	select {
	case <-round.done:
		return round.index, round.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-l.store.done:
		return 0, api.ErrStopped
	}
}

// run is the read-index goroutine: it serves rounds until the store stops.
func (l *readLoop) run() {
	for {
		select {
		case <-l.wakeC:
		case <-l.store.done:
			return
		}
		// Readers that joined before this swap are served by a ReadIndex
		// sent after it, so after they began; later ones wait for the next.
		l.mu.Lock()
		round := l.next
		l.next = &readRound{done: make(chan struct{})}
		l.mu.Unlock()

		start := time.Now()
		round.index, round.err = l.requestReadIndex()
		l.metrics.ReadIndexRound(start, round.reads, round.err) // before its reads are answered
		close(round.done)
	}
}

// requestReadIndex sends a ReadIndex request tagged with a fresh id and
// waits for raft's answer, asking again if it is slow to come.
func (l *readLoop) requestReadIndex() (uint64, error) {
	if l.raft.Leader() == raft.None {
		return 0, api.ErrNoLeader
	}
	// Ids only grow, so an answer tagged with an id below firstID belongs
	// to an earlier round that gave up, and is ignored.
	firstID := l.store.requestIDs.Next()
	if err := l.sendReadIndex(firstID); err != nil {
		return 0, err
	}
	deadline := time.NewTimer(l.timeout)
	defer deadline.Stop()
	retry := time.NewTicker(readIndexRetry)
	defer retry.Stop()
	for {
		select {
		case rs := <-l.raft.readStateC:
			if len(rs.RequestCtx) == 8 && binary.BigEndian.Uint64(rs.RequestCtx) >= firstID {
				// On a leader, also wait for its first entry of the
				// term: see trackLeader.
				return max(rs.Index, l.raft.termStartIndex()), nil
			}
		case <-retry.C:
			l.lg.Debug("no answer to ReadIndex yet; asking again")
			if err := l.sendReadIndex(l.store.requestIDs.Next()); err != nil {
				return 0, err
			}
		case <-deadline.C:
			if l.raft.Leader() == raft.None {
				return 0, api.ErrNoLeader
			}
			return 0, fmt.Errorf("no read index within %s: %w", l.timeout, context.DeadlineExceeded)
		case <-l.store.done:
			return 0, api.ErrStopped
		}
	}
}

// sendReadIndex asks raft for a read index tagged with id.
func (l *readLoop) sendReadIndex(id uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	switch err := l.raft.node.ReadIndex(ctx, binary.BigEndian.AppendUint64(nil, id)); {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrStopped):
		return api.ErrStopped
	default:
		return fmt.Errorf("%w: read index: %v", api.ErrNoLeader, err)
	}
}
