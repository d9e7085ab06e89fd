package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/pkg/v3/idutil"
	"go.etcd.io/etcd/pkg/v3/wait"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// Errors a proposer can get back once its entry is applied, or instead.
var (
	ErrKeyNotFound    = errors.New("key not found")
	ErrMemberExists   = errors.New("member already exists")
	ErrMemberNotFound = errors.New("member not found")
	ErrStopped        = errors.New("server is shutting down")
)

// proposal is a command on its way into the raft log: the encoded entry,
// the wait-registry key of the handler blocked on it, and the key it
// writes, if any, so that one entry never writes a key twice (see
// versions.go).
type proposal struct {
	requestID uint64
	data      []byte
	key       string
}

// outcome is what a waiting handler learns about its entry.
type outcome struct {
	index      uint64     // the entry's raft index; for a replay, the first attempt's
	err        error      // why the entry changed nothing (ErrKeyNotFound, ...), or why it never made it into the log
	version    keyVersion // the key's version after a write, or when a precondition failed
	hasVersion bool       // version is set: the key exists
	created    bool       // a PUT that created its key
	replayed   bool       // an idempotency key's recorded outcome, not this entry's
}

// applyBatch is what the raft node's apply goroutine sends the kvstore on
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
	// entry is a conf change that the kvstore took (confchange.go).
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
	waiters     wait.Wait         // request id -> handler waiting for its entry's outcome
	appliedWait wait.WaitTime     // applied index -> readers waiting to reach it
	done        chan struct{}     // closed when applyC closes: nothing more will apply
	err         error             // why applying stopped, if not a clean shutdown; set before done closes

	appliedIndex atomic.Uint64 // the last entry applied to kv and members

	mu      sync.RWMutex
	kv      *keySpace
	members map[uint64]*member
	removed map[uint64]bool // ids that left the cluster; peers refuse their messages
	dedup   *dedup          // recent idempotency keys and their outcomes

	watch   *watchHistory // the changes applied, for watchers
	changes []event       // the changes of the entry being applied

	metrics *metrics // set before serveApply starts; nil keeps none (metrics.go)
	// appliedTerm is the term of the entry at appliedIndex, which a backup
	// records (backup.go); mu guards it.
	appliedTerm uint64
}

// newKVStore returns an empty store for member id; the raft node fills it
// through applyC.
func newKVStore(lg *zap.Logger, id uint64, watchHistoryBytes int, proposeC chan<- proposal, confChangeC chan<- *raftpb.ConfChange) *kvstore {
	return &kvstore{
		lg:          lg,
		proposeC:    proposeC,
		confChangeC: confChangeC,
		requestIDs:  idutil.NewGenerator(uint16(id), time.Now()),
		waiters:     wait.New(),
		appliedWait: wait.NewTimeList(),
		done:        make(chan struct{}),
		kv:          newKeySpace(),
		members:     make(map[uint64]*member),
		removed:     make(map[uint64]bool),
		dedup:       newDedup(),
		watch:       newWatchHistory(watchHistoryBytes, 0),
	}
}

// put sets key to value and returns once this member has applied it.
// If cond is given, it applies only if cond holds then (else
// ErrPreconditionFailed); with an idempotency key, only once.
func (s *kvstore) put(ctx context.Context, key string, value []byte, cond precondition, idem idempotent) (outcome, error) {
	id := s.requestIDs.Next()
	data := encodeWrite(id, true, key, value, cond, idem)
	return proposeAndWait(ctx, s, id, s.proposeC, proposal{requestID: id, data: data, key: key})
}

// delete removes key and returns once this member has applied it;
// ErrKeyNotFound if the key was absent when the entry applied. cond and
// idem are as for put.
func (s *kvstore) delete(ctx context.Context, key string, cond precondition, idem idempotent) (outcome, error) {
	id := s.requestIDs.Next()
	data := encodeWrite(id, false, key, nil, cond, idem)
	return proposeAndWait(ctx, s, id, s.proposeC, proposal{requestID: id, data: data, key: key})
}

// propose hands a command that writes no key to the raft node and waits
// for this member to apply it.
func (s *kvstore) propose(ctx context.Context, requestID uint64, data []byte) (uint64, error) {
	o, err := proposeAndWait(ctx, s, requestID, s.proposeC, proposal{requestID: requestID, data: data})
	return o.index, err
}

// proposeAndWait registers a waiter for requestID, sends msg to the raft
// node on c (proposeC or confChangeC), and waits for the entry's outcome.
// Every member applies every entry, but only the member that registered
// requestID has a waiter to wake: a follower may apply before the leader,
// and any member can wake its own handler. The raft node wakes it too, with
// ErrNoLeader, if raft refuses the proposal.
func proposeAndWait[T any](ctx context.Context, s *kvstore, requestID uint64, c chan<- T, msg T) (result outcome, err error) {
	s.metrics.proposalStarted()
	defer func() { s.metrics.proposalDone(result, err) }()
	outcomeC := s.waiters.Register(requestID)
	select {
	case c <- msg:
	case <-ctx.Done():
		s.waiters.Trigger(requestID, nil)
		return outcome{}, ctx.Err()
	case <-s.done:
		s.waiters.Trigger(requestID, nil)
		return outcome{}, ErrStopped
	}
	select {
	case x := <-outcomeC:
		o := x.(outcome)
		return o, o.err
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
			return o, o.err
		default:
			s.waiters.Trigger(requestID, nil)
			return outcome{}, ErrStopped
		}
	}
}

// waitApplied returns once this member has applied index.
func (s *kvstore) waitApplied(ctx context.Context, index uint64) error {
	select {
	case <-s.appliedWait.Wait(index):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return ErrStopped
	}
}

// get reads key from the applied state, with the applied index the answer
// reflects. The value is a string, so no later write can change it.
func (s *kvstore) get(key string) (keyValue, uint64, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.kv.Get(key)
	return v, s.appliedIndex.Load(), ok
}

// memberList returns the applied member table, ordered by id.
func (s *kvstore) memberList() []member {
	s.mu.RLock()
	defer s.mu.RUnlock()
	list := make([]member, 0, len(s.members))
	for _, m := range s.members {
		list = append(list, *m)
	}
	slices.SortFunc(list, func(a, b member) int { return cmp.Compare(a.ID, b.ID) })
	return list
}

// lookupMember returns member id from the applied member table.
func (s *kvstore) lookupMember(id uint64) (member, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m, ok := s.members[id]
	if !ok {
		return member{}, false
	}
	return *m, true
}

// isIDRemoved reports whether id was a member and was removed. rafthttp asks
// it to turn away messages from removed members, which tells them to stop.
func (s *kvstore) isIDRemoved(id uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.removed[id]
}

// serveApply is the kvstore's goroutine: it applies each batch from the raft
// node in order until applyC closes, then wakes readers waiting for the
// index it reached.
func (s *kvstore) serveApply(applyC <-chan *applyBatch) {
	defer close(s.done)
	for b := range applyC {
		if err := s.apply(b); err != nil {
			s.err = err
			return
		}
		s.appliedWait.Trigger(s.appliedIndex.Load())
		close(b.applied)
	}
}

// apply applies one batch under the write lock, so readers never see half
// of it.
func (s *kvstore) apply(b *applyBatch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.snapshot != nil {
		if err := s.loadSnapshot(b.snapshot); err != nil {
			return err
		}
		releaseMemoryAfter(len(b.snapshot.GetData()))
	}
	for _, e := range b.entries {
		// Store the index first: the handler woken below may ask /status.
		s.appliedIndex.Store(e.GetIndex())
		s.appliedTerm = e.GetTerm()
		switch e.GetType() {
		case raftpb.EntryNormal:
			s.applyNormal(e)
		case raftpb.EntryConfChange:
			b.confChangeTaken = s.applyConfChange(e)
		}
	}
	return nil
}

// applyNormal applies the client commands an entry carries, one or a batch.
func (s *kvstore) applyNormal(e *raftpb.Entry) {
	if len(e.GetData()) == 0 {
		return // a new leader's empty entry, which commits everything before it
	}
	err := batchCommands(e.GetData(), func(data []byte) error {
		s.applyCommand(e.GetIndex(), data)
		return nil
	})
	if err != nil {
		// Every member decodes the same bytes, so every member skips alike.
		s.lg.Error("skipping the rest of an undecodable batch", zap.Uint64("index", e.GetIndex()), zap.Error(err))
	}
	// The entry's changes reach watchers together: a watch stream ends
	// only between entries, so resuming after an index skips nothing.
	s.watch.record(s.changes)
	clear(s.changes)
	s.changes = s.changes[:0]
}

// applyCommand applies one client command from the entry at index and
// wakes its waiter, if it is here.
func (s *kvstore) applyCommand(index uint64, data []byte) {
	cmd, err := decodeCommand(data)
	if err != nil {
		// Every member decodes the same bytes, so every member skips it alike.
		s.lg.Error("skipping undecodable command", zap.Uint64("index", index), zap.Error(err))
		return
	}
	if cmd.op == opAdvertise {
		result := outcome{index: index}
		if m, ok := s.members[cmd.memberID]; ok {
			m.ClientURLs = []string{cmd.clientURL}
		} else {
			result.err = ErrMemberNotFound
		}
		s.waiters.Trigger(cmd.requestID, result)
		return
	}
	if replay, ok := s.replay(cmd.idem); ok {
		s.waiters.Trigger(cmd.requestID, replay)
		return
	}
	result := s.applyWrite(index, cmd)
	if cmd.idem.key != "" {
		s.dedup.record(cmd.idem, result)
	}
	s.waiters.Trigger(cmd.requestID, result)
}

// recorded is the outcome recorded for idem's key, if any, as an entry
// carrying idem would be answered now.
func (s *kvstore) recorded(idem idempotent) (outcome, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.replay(idem)
}

// replay is the outcome of an entry whose idempotency key is already
// recorded: the recorded one, or ErrIdempotencyKeyReused if the key was
// recorded for another request. Either way the entry changes nothing.
func (s *kvstore) replay(idem idempotent) (outcome, bool) {
	if idem.key == "" {
		return outcome{}, false
	}
	r, ok := s.dedup.lookup(idem.key)
	if !ok {
		return outcome{}, false
	}
	if r.fingerprint != idem.fingerprint {
		return outcome{err: ErrIdempotencyKeyReused}, true
	}
	replay := r.result
	replay.replayed = true
	return replay, true
}

// applyWrite applies a PUT or a DELETE at index, if its precondition holds.
// The condition is checked here, when the entry applies, against the state
// every entry before it left: only the log order decides between racing
// writes, and every member decides alike.
func (s *kvstore) applyWrite(index uint64, cmd command) outcome {
	result := outcome{index: index}
	key := string(cmd.key)
	cur, exists := s.kv.Get(key)
	if !cmd.cond.holds(cur.keyVersion, exists) {
		result.err = ErrPreconditionFailed
		result.version, result.hasVersion = cur.keyVersion, exists
		return result
	}
	switch cmd.op {
	case opPut, opPutIf:
		v := keyVersion{createIndex: index, modIndex: index}
		if exists {
			v.createIndex = cur.createIndex
		}
		// A string copies the value out of the entry, so that the tree does
		// not pin the whole entry after raft compacts its log.
		kv := keyValue{value: string(cmd.value), keyVersion: v}
		s.kv.Set(key, kv)
		s.changes = append(s.changes, event{index: index, key: key, kv: kv})
		result.version, result.hasVersion, result.created = v, true, !exists
	case opDelete, opDeleteIf:
		if exists {
			s.kv.Delete(key)
			// As etcd's delete events: the version is the delete's.
			cur.value, cur.modIndex = "", index
			s.changes = append(s.changes, event{index: index, delete: true, key: key, kv: cur})
		} else {
			result.err = ErrKeyNotFound
		}
	}
	return result
}

// snapshot serialises the applied state. The raft node calls it only when
// the store has applied exactly up to the snapshot's index. It encodes a
// point-in-time copy (backup.go), as GET /snapshot does, so that reads go
// on while a large state is encoded.
func (s *kvstore) snapshot() []byte {
	st, _, _ := s.pointInTime()
	return st.encode()
}

// loadSnapshot replaces the whole state with a snapshot's; s.mu must be held.
func (s *kvstore) loadSnapshot(snap *raftpb.Snapshot) error {
	start := time.Now()
	index := snap.GetMetadata().GetIndex()
	d, err := newSnapshotDecoder(snap.GetData())
	if err != nil {
		return fmt.Errorf("load snapshot at index %d: %w", index, err)
	}
	members, removed, err := d.decodeMembers()
	if err != nil {
		return fmt.Errorf("load snapshot at index %d: %w", index, err)
	}
	kv, err := d.decodeKeys()
	if err != nil {
		return fmt.Errorf("load snapshot at index %d: %w", index, err)
	}
	records, err := d.decodeRecords()
	if err != nil {
		return fmt.Errorf("load snapshot at index %d: %w", index, err)
	}
	s.kv, s.members, s.removed, s.dedup = kv, members, removed, records
	s.appliedIndex.Store(index)
	s.appliedTerm = snap.GetMetadata().GetTerm()
	s.watch.reset(index, fmt.Sprintf("this member loaded a snapshot at index %d, and the changes before it are not known here", index))
	s.lg.Info("loaded snapshot", zap.Uint64("index", index), zap.Int("keys", kv.Len()))
	s.metrics.snapshotLoaded(start)
	return nil
}
