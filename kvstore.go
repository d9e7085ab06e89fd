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

// proposal is a command on its way into the raft log: the encoded entry and
// the wait-registry key of the handler blocked on it.
type proposal struct {
	requestID uint64
	data      []byte
}

// outcome is what a waiting handler learns about its entry.
type outcome struct {
	index uint64 // the entry's raft index
	err   error  // why the entry changed nothing (ErrKeyNotFound, ...), or why it never made it into the log
}

func (o outcome) unpack() (uint64, error) { return o.index, o.err }

// applyBatch is what the raft node's apply goroutine sends the kvstore on
// applyC, in log order: a snapshot to load first, if any, then committed
// entries.
type applyBatch struct {
	snapshot *raftpb.Snapshot
	entries  []*raftpb.Entry
	// applied is closed once the batch is applied, so the raft node knows
	// when the state matches the index it handed over and a snapshot may be
	// taken.
	applied chan struct{}
}

// kvstore is the replicated state machine. It proposes commands through
// proposeC and confChangeC, applies what raft commits as it arrives on
// applyC, and wakes the handler waiting for each entry. Reads are served from the
// applied state; how stale they may be is the read level's business.
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
	kv      map[string][]byte
	members map[uint64]*member
	removed map[uint64]bool // ids that left the cluster; peers refuse their messages
}

// newKVStore returns an empty store for member id; the raft node fills it
// through applyC.
func newKVStore(lg *zap.Logger, id uint64, proposeC chan<- proposal, confChangeC chan<- *raftpb.ConfChange) *kvstore {
	return &kvstore{
		lg:          lg,
		proposeC:    proposeC,
		confChangeC: confChangeC,
		requestIDs:  idutil.NewGenerator(uint16(id), time.Now()),
		waiters:     wait.New(),
		appliedWait: wait.NewTimeList(),
		done:        make(chan struct{}),
		kv:          make(map[string][]byte),
		members:     make(map[uint64]*member),
		removed:     make(map[uint64]bool),
	}
}

// put sets key to value and returns once this member has applied it.
func (s *kvstore) put(ctx context.Context, key string, value []byte) (uint64, error) {
	id := s.requestIDs.Next()
	return s.propose(ctx, id, encodePut(id, key, value))
}

// delete removes key and returns once this member has applied it;
// ErrKeyNotFound if the key was absent when the entry applied.
func (s *kvstore) delete(ctx context.Context, key string) (uint64, error) {
	id := s.requestIDs.Next()
	return s.propose(ctx, id, encodeDelete(id, key))
}

// propose hands a command to the raft node and waits for this member to
// apply it.
func (s *kvstore) propose(ctx context.Context, requestID uint64, data []byte) (uint64, error) {
	return proposeAndWait(ctx, s, requestID, s.proposeC, proposal{requestID: requestID, data: data})
}

// proposeAndWait registers a waiter for requestID, sends msg to the raft
// node on c (proposeC or confChangeC), and waits for the entry's outcome.
// Every member applies every entry, but only the member that registered
// requestID has a waiter to wake: a follower may apply before the leader,
// and any member can wake its own handler. The raft node wakes it too, with
// ErrNoLeader, if raft refuses the proposal.
func proposeAndWait[T any](ctx context.Context, s *kvstore, requestID uint64, c chan<- T, msg T) (uint64, error) {
	outcomeC := s.waiters.Register(requestID)
	select {
	case c <- msg:
	case <-ctx.Done():
		s.waiters.Trigger(requestID, nil)
		return 0, ctx.Err()
	case <-s.done:
		s.waiters.Trigger(requestID, nil)
		return 0, ErrStopped
	}
	select {
	case x := <-outcomeC:
		return x.(outcome).unpack()
	case <-ctx.Done():
		// Unregister: the entry may still apply later, and must find no one.
		s.waiters.Trigger(requestID, nil)
		return 0, ctx.Err()
	case <-s.done:
		// The entry may have applied just before the store stopped (a
		// member applying its own removal): its outcome wins.
		select {
		case x := <-outcomeC:
			return x.(outcome).unpack()
		default:
			s.waiters.Trigger(requestID, nil)
			return 0, ErrStopped
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

// get reads key from the applied state. The returned slice is never
// modified: a put stores a new slice.
func (s *kvstore) get(key string) ([]byte, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.kv[key]
	return v, ok
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
		go releaseSnapshotMemory()
	}
	for _, e := range b.entries {
		// Store the index first: the handler woken below may ask /status.
		s.appliedIndex.Store(e.GetIndex())
		switch e.GetType() {
		case raftpb.EntryNormal:
			s.applyNormal(e)
		case raftpb.EntryConfChange:
			s.applyConfChange(e)
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
	result := outcome{index: index}
	switch cmd.op {
	case opPut:
		// Copy the value out of the entry so that the map does not pin the
		// whole entry after raft compacts its log.
		s.kv[string(cmd.key)] = append([]byte(nil), cmd.value...)
	case opDelete:
		if _, ok := s.kv[string(cmd.key)]; ok {
			delete(s.kv, string(cmd.key))
		} else {
			result.err = ErrKeyNotFound
		}
	case opAdvertise:
		if m, ok := s.members[cmd.memberID]; ok {
			m.ClientURLs = []string{cmd.clientURL}
		} else {
			result.err = ErrMemberNotFound
		}
	}
	s.waiters.Trigger(cmd.requestID, result)
}

// snapshot serialises the applied state. The raft node calls it only when
// the store has applied exactly up to the snapshot's index.
func (s *kvstore) snapshot() []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return encodeSnapshot(s.members, s.removed, s.kv)
}

// loadSnapshot replaces the whole state with a snapshot's; s.mu must be held.
func (s *kvstore) loadSnapshot(snap *raftpb.Snapshot) error {
	d, err := newSnapshotDecoder(snap.GetData())
	if err != nil {
		return fmt.Errorf("load snapshot at index %d: %w", snap.GetMetadata().GetIndex(), err)
	}
	members, removed, err := d.decodeMembers()
	if err != nil {
		return fmt.Errorf("load snapshot at index %d: %w", snap.GetMetadata().GetIndex(), err)
	}
	kv, err := d.decodeKeys()
	if err != nil {
		return fmt.Errorf("load snapshot at index %d: %w", snap.GetMetadata().GetIndex(), err)
	}
	s.kv, s.members, s.removed = kv, members, removed
	s.appliedIndex.Store(snap.GetMetadata().GetIndex())
	s.lg.Info("loaded snapshot", zap.Uint64("index", snap.GetMetadata().GetIndex()), zap.Int("keys", len(kv)))
	return nil
}
