package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/pkg/v3/idutil"
	"go.etcd.io/etcd/pkg/v3/wait"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"raftkv/api"
	"raftkv/codec"
	"raftkv/idempotency"
	"raftkv/keyspace"
	"raftkv/lease"
	"raftkv/membership"
	"raftkv/metrics"
	"raftkv/watch"
)

// proposal is a command on its way into the raft log: the encoded command,
// the request id of the handler blocked on it (its key in the waiters
// registry), and the key it writes, if any, so that one entry never writes
// a key twice (a key's version is the index of the entry that wrote it:
// package keyspace).
type proposal struct {
	requestID uint64
	data      []byte
	key       string
}

// outcome is what a waiting handler learns about its entry: the answer
// applying it gave (its index, the error it ended with, the key's
// version), or why it never made it into the log; and whether the answer
// is a replay of an earlier attempt's, recorded under its Idempotency-Key.
type outcome struct {
	idempotency.Answer
	replayed bool
}

// applyBatch is what the raft node's hand-over goroutine sends the kvstore on
// applyC, in log order: a snapshot to load first, if any, then committed
// entries.
type applyBatch struct {
	snapshot *raftpb.Snapshot
	entries  []*raftpb.Entry
	// applied is closed once the batch is applied, so the raft node knows
	// when the state matches the index it handed over: before it takes a
	// snapshot, and before it applies a conf change to raft.
	applied chan struct{}
	// confChangeTaken is set, before applied closes, when the batch's last
	// entry is a conf change that the member table took.
	confChangeTaken bool
}

// kvstore is the replicated state machine. It proposes commands through
// proposeC and confChangeC, applies what raft commits as it arrives on
// applyC, and wakes the handler waiting for each entry. Reads are served
// from the applied state; how stale they may be is the read level's
// business.
type kvstore struct {
	lg          *zap.Logger
	proposeC    chan<- proposal
	confChangeC chan<- *raftpb.ConfChange

	requestIDs  *idutil.Generator // unique across the cluster: the member id is in the top bits
	waiters     wait.Wait         // request id -> handler waiting for its entry's outcome (the raft node wakes those raft refused)
	appliedWait wait.WaitTime     // applied index -> readers waiting to reach it
	done        chan struct{}     // closed when applyC closes: nothing more will apply
	err         error             // why applying stopped, if not a clean shutdown; set before done closes

	appliedIndex atomic.Uint64 // the last entry applied

	// The replicated state, guarded by mu: every member holds the same at
	// the same applied index, and every snapshot holds all of it.
	mu          sync.RWMutex
	keys        *keyspace.Space
	members     *membership.Table
	dedup       *idempotency.Records // recent Idempotency-Keys and their answers
	leases      *lease.Table
	appliedTerm uint64 // the term of the entry at appliedIndex, which a backup records

	watch   *watch.History // the changes applied, for watchers
	changes []watch.Event  // the changes of the entry being applied

	metrics *metrics.Metrics // nil keeps none
}

// newKVStore returns an empty store for member id, whose process proposes
// lease windows as origin; the raft node fills it through applyC.
func newKVStore(lg *zap.Logger, id uint64, origin lease.Origin, watchHistoryBytes int, m *metrics.Metrics, proposeC chan<- proposal, confChangeC chan<- *raftpb.ConfChange) *kvstore {
	return &kvstore{
		lg:          lg,
		proposeC:    proposeC,
		confChangeC: confChangeC,
		requestIDs:  idutil.NewGenerator(uint16(id), time.Now()),
		waiters:     wait.New(),
		appliedWait: wait.NewTimeList(),
		done:        make(chan struct{}),
		keys:        keyspace.New(),
		members:     membership.NewTable(nil, nil),
		dedup:       idempotency.NewRecords(),
		leases:      lease.NewTable(origin, time.Now),
		watch:       watch.NewHistory(watchHistoryBytes, 0),
		metrics:     m,
	}
}

// ProposeMembershipChange proposes a raft conf change (package membership
// makes it) on confChangeC and returns once this member has applied it.
func (s *kvstore) ProposeMembershipChange(ctx context.Context, cc *raftpb.ConfChange) (idempotency.Answer, bool, error) {
	cc.Id = new(s.requestIDs.Next())
	o, err := proposeAndWait(ctx, s, cc.GetId(), s.confChangeC, cc)
	return o.Answer, o.replayed, err
}

// ProposeAdvertise proposes recording clientURL as member id's, so that
// followers can redirect clients to it, and returns once this member has
// applied it.
func (s *kvstore) ProposeAdvertise(ctx context.Context, id uint64, clientURL string) error {
	requestID := s.requestIDs.Next()
	_, err := proposeAndWait(ctx, s, requestID, s.proposeC, proposal{requestID: requestID, data: codec.EncodeAdvertise(requestID, id, clientURL)})
	return err
}

// ProposeLease proposes a lease command (package lease makes it) on
// proposeC and returns once this member has applied it. A grant's lease id
// is its entry's index, so an entry carries one grant at most: grants are
// batched as writes of one key are (codec.EncodeLease gives them one).
func (s *kvstore) ProposeLease(ctx context.Context, cmd lease.Command) (idempotency.Answer, bool, error) {
	id := s.requestIDs.Next()
	data, key := codec.EncodeLease(id, cmd)
	o, err := proposeAndWait(ctx, s, id, s.proposeC, proposal{requestID: id, data: data, key: key})
	return o.Answer, o.replayed, err
}

// proposeAndWait registers a waiter for requestID (etcd's pkg/wait: a
// channel of its own), sends msg to the raft node on c (proposeC or
// confChangeC), and waits for the entry's outcome on that channel. Every
// member applies every entry, but only the member that registered
// requestID has a waiter to wake: a follower may apply before the leader,
// and any member can wake its own handler. The raft node wakes it instead
// if the proposal never reaches the log: with api.ErrNoLeader when raft
// refuses it, api.ErrStopped when raft stops (see raftNode.propose).
func proposeAndWait[T any](ctx context.Context, s *kvstore, requestID uint64, c chan<- T, msg T) (result outcome, err error) {
	s.metrics.ProposalStarted()
	defer func() { s.metrics.ProposalDone(proposalEnd(result, err)) }()
	outcomeC := s.waiters.Register(requestID)
	select {
	case c <- msg:
	case <-ctx.Done():
		s.waiters.Trigger(requestID, nil)
		return outcome{}, ctx.Err()
	case <-s.done:
		s.waiters.Trigger(requestID, nil)
		return outcome{}, api.ErrStopped
	}
	select {
	case x := <-outcomeC:
		o := x.(outcome)
		return o, o.Err
	case <-ctx.Done():
		// Unregister: the entry may still apply later, and must find no one.
		s.waiters.Trigger(requestID, nil)
		return outcome{}, ctx.Err()
	case <-s.done:
		// The entry may have applied just before the store stopped (a
		// member applying its own removal): its outcome wins.
		select {
		case x := <-outcomeC:
			o := x.(outcome)
			return o, o.Err
		default:
			s.waiters.Trigger(requestID, nil)
			return outcome{}, api.ErrStopped
		}
	}
}

// proposalEnd is how a proposal's wait ended, for the metrics. An entry
// refused for an Idempotency-Key used by another request was applied all
// the same, as a no-op.
func proposalEnd(o outcome, err error) metrics.ProposalEnd {
	switch {
	case o.Index != 0, errors.Is(err, idempotency.ErrKeyReused):
		return metrics.ProposalApplied
	case errors.Is(err, api.ErrNoLeader):
		return metrics.ProposalDropped
	case errors.Is(err, context.DeadlineExceeded):
		return metrics.ProposalTimedOut
	case errors.Is(err, context.Canceled):
		return metrics.ProposalCanceled
	}
	return metrics.ProposalStopped
}

// WaitApplied returns once this member has applied index.
func (s *kvstore) WaitApplied(ctx context.Context, index uint64) error {
	select {
	case <-s.appliedWait.Wait(index):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return api.ErrStopped
	}
}

// AppliedIndex is the index of the last entry this member applied.
func (s *kvstore) AppliedIndex() uint64 { return s.appliedIndex.Load() }

// Done is closed once the kvstore stops applying: the member is stopping.
func (s *kvstore) Done() <-chan struct{} { return s.done }

// get reads key from the applied state, with the applied index the answer
// reflects. The value is a string, so no later write can change it.
func (s *kvstore) get(key string) (keyspace.Value, uint64, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.keys.Get(key)
	return v, s.appliedIndex.Load(), ok
}

// list returns a page of the keys under prefix after after (see
// keyspace.Space.List), and the applied index the page reflects.
func (s *kvstore) list(prefix, after string, limit int) ([]keyspace.Listed, bool, uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	page, more := s.keys.List(prefix, after, limit)
	return page, more, s.appliedIndex.Load()
}

// Table is a copy of the applied member table.
func (s *kvstore) Table() *membership.Table {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.members.Clone()
}

// isIDRemoved reports whether id was a member and was removed. rafthttp asks
// it to turn away messages from removed members, which tells them to stop.
func (s *kvstore) isIDRemoved(id uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.members.IsRemoved(id)
}

// Lease returns lease id from the applied lease table.
func (s *kvstore) Lease(id uint64) (lease.Info, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.leases.Get(id)
}

// Leases returns the applied lease table, ordered by id.
func (s *kvstore) Leases() []lease.Info {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.leases.List()
}

// Recorded is the answer recorded for idempotency key k, if any, as an
// entry carrying k would be answered now, and whether it is a replay.
func (s *kvstore) Recorded(k idempotency.Key) (a idempotency.Answer, replayed, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok = s.dedup.Replay(k)
	return a, replayOf(a).replayed, ok
}

// replayOf is the outcome of an entry whose idempotency key is recorded:
// the recorded answer, replayed, or idempotency.ErrKeyReused if the key
// was recorded for another request.
func replayOf(a idempotency.Answer) outcome {
	return outcome{Answer: a, replayed: !errors.Is(a.Err, idempotency.ErrKeyReused)}
}

// serveApply is the apply goroutine: it applies each batch from the raft
// node in order, under the write lock, so readers never see half of one,
// until applyC closes. After each batch it wakes the readers waiting for
// the index it reached, then the raft node (b.applied).
func (s *kvstore) serveApply(applyC <-chan *applyBatch) {
	defer close(s.done)
	for b := range applyC {
		s.mu.Lock()
		if b.snapshot != nil {
			if err := s.loadSnapshot(b.snapshot); err != nil {
				s.mu.Unlock()
				s.err = err
				return
			}
		}
		for _, e := range b.entries {
			// Store the index first: the handler woken below may ask /status.
			s.appliedIndex.Store(e.GetIndex())
			s.appliedTerm = e.GetTerm()
			switch {
			case e.GetType() == raftpb.EntryConfChange:
				b.confChangeTaken = s.applyConfChange(e)
			case len(e.GetData()) == 0:
				// A new leader's empty entry, which commits everything before it.
			default:
				err := codec.ForEachCommand(e.GetData(), func(data []byte) { s.applyCommand(e.GetIndex(), data) })
				if err != nil {
					// Every member decodes the same bytes, so every member skips alike.
					s.lg.Error("skipping the rest of an undecodable batch", zap.Uint64("index", e.GetIndex()), zap.Error(err))
				}
				// The entry's changes reach watchers together: a watch stream
				// ends only between entries, so resuming after an index skips
				// nothing.
				s.watch.Append(s.changes)
				clear(s.changes)
				s.changes = s.changes[:0]
			}
		}
		s.mu.Unlock()
		s.appliedWait.Trigger(s.appliedIndex.Load())
		close(b.applied)
	}
}

// applyCommand applies one client command from the entry at index and
// wakes its waiter, if it is here.
func (s *kvstore) applyCommand(index uint64, data []byte) {
	cmd, err := codec.DecodeCommand(data)
	if err != nil {
		// Every member decodes the same bytes, so every member skips it alike.
		s.lg.Error("skipping undecodable command", zap.Uint64("index", index), zap.Error(err))
		return
	}
	if replay, ok := s.dedup.Replay(cmd.Idem); ok {
		s.waiters.Trigger(cmd.RequestID, replayOf(replay))
		return
	}
	a := idempotency.Answer{Index: index}
	switch cmd.Op {
	case codec.OpAdvertise:
		a.Err = s.members.SetClientURL(cmd.MemberID, cmd.ClientURL)
	case codec.OpGrant, codec.OpRevoke, codec.OpWindow:
		a.Err = s.applyLease(index, cmd)
	case codec.OpPut, codec.OpPutWith, codec.OpDelete, codec.OpDeleteWith:
		key, put := string(cmd.Key), cmd.Op == codec.OpPut || cmd.Op == codec.OpPutWith
		var old, v keyspace.Value // old's lease, if any, a write detaches the key from
		if s.leases.Len() > 0 {
			old, _ = s.keys.Get(key)
		}
		var existed bool
		switch {
		case cmd.Lease != 0 && !s.leases.Exists(cmd.Lease):
			a.Err = fmt.Errorf("lease %d: %w", cmd.Lease, lease.ErrNotFound)
		case put:
			// A string copies the value out of the entry, so that the tree
			// does not pin the whole entry after raft compacts its log.
			v, existed, a.Err = s.keys.Put(index, key, string(cmd.Value), cmd.Cond, cmd.Lease)
			a.Created = a.Err == nil && !existed
		default:
			v, existed, a.Err = s.keys.Delete(index, key, cmd.Cond)
		}
		// The answer names the key's version after a PUT, or the version
		// that failed a condition.
		if (put && a.Err == nil) || (existed && errors.Is(a.Err, keyspace.ErrPreconditionFailed)) {
			a.Version, a.HasVersion = v.Version, true
		}
		if a.Err == nil {
			s.leases.Detach(old.Lease, key)
			if put {
				s.leases.Attach(cmd.Lease, key)
			}
			s.changes = append(s.changes, watch.Event{Index: index, Delete: !put, Key: key, Value: v})
		}
	}
	if cmd.Idem.Name != "" {
		s.dedup.Remember(cmd.Idem, a)
	}
	s.waiters.Trigger(cmd.RequestID, outcome{Answer: a})
}

// applyLease applies a lease command from the entry at index: a grant
// (the lease's id is the index), a window, or the end of a lease, which
// deletes all its keys in this one entry.
func (s *kvstore) applyLease(index uint64, cmd codec.Command) error {
	switch cmd.Op {
	case codec.OpGrant:
		s.leases.Grant(index, time.Duration(cmd.TTL)*time.Second)
		s.metrics.LeaseGranted()
	case codec.OpWindow:
		s.leases.Window(lease.Origin{Member: cmd.Origin[0], Nonce: cmd.Origin[1]}, cmd.Leases)
	case codec.OpRevoke:
		keys, err := s.leases.Revoke(cmd.Lease)
		if err != nil {
			return fmt.Errorf("lease %d: %w", cmd.Lease, err)
		}
		reason := lease.Revoked
		if cmd.Reason == codec.ReasonExpired {
			reason = lease.Expired
		}
		for _, key := range keys {
			if v, _, err := s.keys.Delete(index, key, keyspace.Condition{}); err == nil {
				s.changes = append(s.changes, watch.Event{Index: index, Delete: true, Key: key, Value: v, Reason: reason})
			}
		}
		s.metrics.LeaseEnded(cmd.Reason == codec.ReasonExpired)
	}
	return nil
}

// applyConfChange records a membership change in the member table, or
// refuses it, and wakes the handler waiting for it. It reports whether the
// table took the change, which the raft node then applies to raft and the
// transport (confchange.go).
func (s *kvstore) applyConfChange(e *raftpb.Entry) bool {
	var cc raftpb.ConfChange
	if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
		s.lg.Error("skipping undecodable conf change", zap.Uint64("index", e.GetIndex()), zap.Error(err))
		return false
	}
	idem := membership.IdempotencyOf(&cc)
	if replay, ok := s.dedup.Replay(idem); ok {
		s.waiters.Trigger(cc.GetId(), replayOf(replay))
		return false
	}
	a := idempotency.Answer{Index: e.GetIndex(), Err: s.members.Apply(&cc)}
	if a.Err == nil {
		s.lg.Info(membership.Describe(&cc, s.members), zap.Uint64("member-id", cc.GetNodeId()))
	}
	if idem.Name != "" {
		s.dedup.Remember(idem, a)
	}
	s.waiters.Trigger(cc.GetId(), outcome{Answer: a})
	return a.Err == nil
}

// snapshot serialises the applied state. The raft node calls it only when
// the store has applied exactly up to the snapshot's index. It encodes a
// point-in-time copy, as GET /snapshot does, so that reads go on while a
// large state is encoded.
func (s *kvstore) snapshot() []byte {
	st, _, _ := s.PointInTime()
	return st.Encode()
}

// PointInTime returns a copy of the applied state, with the index and term
// of the last entry it reflects. It holds the write lock, for a moment:
// Copy marks the key tree so that the next write to it copies the nodes it
// changes instead, and two Copies must not race. The member table is
// copied whole; idempotency records never change once made, but the list
// of them is compacted in place.
func (s *kvstore) PointInTime() (st codec.State, index, term uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st = codec.State{Members: s.members.Clone(), Keys: s.keys.Copy(), Records: append([]*idempotency.Record(nil), s.dedup.List()...), Leases: s.leases.Save()}
	return st, s.appliedIndex.Load(), s.appliedTerm
}

// loadSnapshot replaces the whole state with a snapshot's; s.mu must be held.
func (s *kvstore) loadSnapshot(snap *raftpb.Snapshot) error {
	start := time.Now()
	index := snap.GetMetadata().GetIndex()
	st, err := codec.DecodeState(snap.GetData())
	if err != nil {
		return fmt.Errorf("load snapshot at index %d: %w", index, err)
	}
	s.keys, s.members, s.dedup = st.Keys, st.Members, idempotency.NewRecords(st.Records...)
	s.leases.Load(st.Leases)
	if len(st.Leases) > 0 {
		st.Keys.Scan(func(key string, v keyspace.Value) bool {
			s.leases.Attach(v.Lease, key)
			return true
		})
	}
	s.appliedIndex.Store(index)
	s.appliedTerm = snap.GetMetadata().GetTerm()
	s.watch.Reset(index, fmt.Sprintf("this member loaded a snapshot at index %d, and the changes before it are not known here", index))
	s.lg.Info("loaded snapshot", zap.Uint64("index", index), zap.Int("keys", st.Keys.Len()))
	s.metrics.SnapshotLoaded(start)
	codec.ReleaseMemoryAfter(len(snap.GetData()))
	return nil
}
