package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/pkg/v3/idutil"
	"go.etcd.io/etcd/pkg/v3/wait"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// Errors a proposer can get back once its entry is applied, or instead.
var (
	ErrKeyNotFound    = errors.New("key not found")
	ErrMemberExists   = errors.New("member already exists")
	ErrMemberNotFound = errors.New("member not found")
	ErrStopped        = errors.New("server is shutting down")
)

// member is one raft voter as the cluster knows it: where peers and clients
// reach it. The member table is replicated state: it changes only when a
// conf-change or publish entry is applied, and it is part of every snapshot.
type member struct {
	ID         uint64   `json:"id"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
}

// memberFromConfChange reads the member carried in an AddNode conf change's
// context (JSON: conf changes are rare, and it keeps WAL dumps readable).
func memberFromConfChange(cc *raftpb.ConfChange) (member, error) {
	var m member
	if err := json.Unmarshal(cc.GetContext(), &m); err != nil {
		return member{}, fmt.Errorf("%w: conf change context: %v", ErrCorruptEntry, err)
	}
	m.ID = cc.GetNodeId()
	return m, nil
}

// proposal is a command on its way into the raft log: the encoded entry and
// the wait-registry key of the handler blocked on it.
type proposal struct {
	requestID uint64
	data      []byte
}

// applyResult is what a waiting handler learns about its entry.
type applyResult struct {
	index uint64 // the entry's raft index
	err   error  // why the entry changed nothing (ErrKeyNotFound, ...), or why it never made it into the log
}

func (r applyResult) unpack() (uint64, error) { return r.index, r.err }

// commit is one batch for the state machine from the raft node, in log
// order: a snapshot to load first, if any, then committed entries.
type commit struct {
	snapshot *raftpb.Snapshot
	entries  []*raftpb.Entry
	// applyDoneC is closed once the batch is applied, so the raft node knows
	// when the state matches its applied index and a snapshot may be taken.
	applyDoneC chan struct{}
}

// kvstore is the replicated state machine. It proposes commands through
// proposeC and confChangeC, applies what raft commits through commitC, and
// wakes the handler waiting for each entry. Reads are served from the
// applied state; how stale they may be is the read level's business.
type kvstore struct {
	lg          *zap.Logger
	proposeC    chan<- proposal
	confChangeC chan<- *raftpb.ConfChange

	requestIDs  *idutil.Generator // unique across the cluster: the member id is in the top bits
	waiters     wait.Wait         // request id -> handler waiting for its entry to apply
	appliedWait wait.WaitTime     // applied index -> readers waiting to reach it
	done        chan struct{}     // closed when commitC closes: nothing more will apply
	err         error             // why applying stopped, if not a clean shutdown; set before done closes

	appliedIndex atomic.Uint64

	mu      sync.RWMutex
	kv      map[string][]byte
	members map[uint64]*member
	removed map[uint64]bool // ids that left the cluster; peers refuse their messages
}

// newKVStore returns an empty store for member id; the raft node fills it
// through commitC.
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

// addMember proposes adding m as a voter.
func (s *kvstore) addMember(ctx context.Context, m member) (uint64, error) {
	memberCtx, err := json.Marshal(m)
	if err != nil {
		return 0, err
	}
	cc := &raftpb.ConfChange{
		Id:      new(s.requestIDs.Next()),
		Type:    raftpb.ConfChangeAddNode.Enum(),
		NodeId:  new(m.ID),
		Context: memberCtx,
	}
	return s.proposeConfChange(ctx, cc)
}

// removeMember proposes removing member id.
func (s *kvstore) removeMember(ctx context.Context, id uint64) (uint64, error) {
	cc := &raftpb.ConfChange{
		Id:     new(s.requestIDs.Next()),
		Type:   raftpb.ConfChangeRemoveNode.Enum(),
		NodeId: new(id),
	}
	return s.proposeConfChange(ctx, cc)
}

// leaderWatch is what publishing a client URL needs of the raft node: who
// leads, and a channel closed at the next change of leader.
type leaderWatch interface {
	leaderID() uint64
	leaderChange() <-chan struct{}
}

// publishClientURL puts this member's client URL into the replicated member
// table, so that followers can redirect clients to it when it leads. Like
// etcd publishing its member attributes, it runs on every start, until the
// table shows the URL (published by this run, by an earlier one, or given
// when the member was added) or the store stops. A proposal needs a leader,
// so it proposes the moment one is known, woken by the change of leader
// rather than by a timer; after a failure, again at the next change of
// leader or a tenth of timeout later, whichever comes first.
func (s *kvstore) publishClientURL(leaders leaderWatch, memberID uint64, clientURL string, timeout time.Duration) {
	for !s.hasClientURL(memberID, clientURL) {
		changed := leaders.leaderChange()
		if leaders.leaderID() == raft.None {
			select {
			case <-changed:
				continue
			case <-s.done:
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		id := s.requestIDs.Next()
		_, err := s.propose(ctx, id, encodePublish(id, memberID, clientURL))
		cancel()
		switch {
		case err == nil:
			s.lg.Info("published client URL", zap.String("client-url", clientURL))
			return
		case errors.Is(err, ErrMemberNotFound):
			s.lg.Warn("not publishing client URL: not a member", zap.Uint64("member-id", memberID))
			return
		case errors.Is(err, ErrStopped):
			return
		}
		select {
		case <-changed:
		case <-time.After(timeout / 10):
		case <-s.done:
			return
		}
	}
}

// hasClientURL reports whether the applied member table gives member id
// exactly clientURL, the one it serves clients on.
func (s *kvstore) hasClientURL(id uint64, clientURL string) bool {
	m, ok := s.lookupMember(id)
	return ok && slices.Equal(m.ClientURLs, []string{clientURL})
}

// propose hands an entry to the raft node and waits for this member to apply it.
func (s *kvstore) propose(ctx context.Context, requestID uint64, data []byte) (uint64, error) {
	return sendAndWait(ctx, s, requestID, s.proposeC, proposal{requestID: requestID, data: data})
}

// proposeConfChange is propose for membership changes; the conf change's Id
// is its request id.
func (s *kvstore) proposeConfChange(ctx context.Context, cc *raftpb.ConfChange) (uint64, error) {
	return sendAndWait(ctx, s, cc.GetId(), s.confChangeC, cc)
}

// sendAndWait registers a waiter for requestID, sends msg to the raft node
// on c, and waits for the entry to apply.
func sendAndWait[T any](ctx context.Context, s *kvstore, requestID uint64, c chan<- T, msg T) (uint64, error) {
	appliedC := s.waiters.Register(requestID)
	select {
	case c <- msg:
		return s.waitApply(ctx, requestID, appliedC)
	case <-ctx.Done():
		s.waiters.Trigger(requestID, nil)
		return 0, ctx.Err()
	case <-s.done:
		s.waiters.Trigger(requestID, nil)
		return 0, ErrStopped
	}
}

// waitApply waits for the apply loop (or the raft node, if raft refused the
// proposal) to trigger requestID. Every member applies every entry, but only
// the member that registered requestID has a waiter to wake: followers may
// apply before the leader, and any member can wake its own waiter.
func (s *kvstore) waitApply(ctx context.Context, requestID uint64, appliedC <-chan any) (uint64, error) {
	select {
	case x := <-appliedC:
		return x.(applyResult).unpack()
	case <-ctx.Done():
		// Unregister: the entry may still apply later, and must find no one.
		s.waiters.Trigger(requestID, nil)
		return 0, ctx.Err()
	case <-s.done:
		// The entry may have applied just before the store stopped (a
		// member applying its own removal): its result wins.
		select {
		case x := <-appliedC:
			return x.(applyResult).unpack()
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

// applyCommits is the apply loop: it applies each batch from the raft node
// in order until commitC closes.
func (s *kvstore) applyCommits(commitC <-chan *commit) {
	defer close(s.done)
	for c := range commitC {
		if err := s.applyCommit(c); err != nil {
			s.err = err
			return
		}
		s.appliedWait.Trigger(s.appliedIndex.Load())
		close(c.applyDoneC)
	}
}

// applyCommit applies one batch under the write lock, so readers never see
// half of it.
func (s *kvstore) applyCommit(c *commit) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.snapshot != nil {
		if err := s.loadSnapshot(c.snapshot); err != nil {
			return err
		}
		go releaseSnapshotMemory()
	}
	for _, e := range c.entries {
		// Store the index first: the waiter woken below may ask /status.
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
	result := applyResult{index: index}
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
	case opPublish:
		if m, ok := s.members[cmd.memberID]; ok {
			m.ClientURLs = []string{cmd.clientURL}
		} else {
			result.err = ErrMemberNotFound
		}
	}
	s.waiters.Trigger(cmd.requestID, result)
}

// applyConfChange records a membership change in the member table. The raft
// node has already applied it to raft's configuration and the transport;
// both follow the same rules (adding a member twice or removing a stranger
// changes nothing), so the table and raft's voters agree.
func (s *kvstore) applyConfChange(e *raftpb.Entry) {
	var cc raftpb.ConfChange
	if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
		s.lg.Error("skipping undecodable conf change", zap.Uint64("index", e.GetIndex()), zap.Error(err))
		return
	}
	result := applyResult{index: e.GetIndex()}
	id := cc.GetNodeId()
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode:
		m, err := memberFromConfChange(&cc)
		switch {
		case err != nil:
			result.err = err
		case s.members[id] != nil:
			result.err = ErrMemberExists
		default:
			s.members[id] = &m
			delete(s.removed, id)
			s.lg.Info("member added to the cluster", zap.Uint64("member-id", id), zap.Strings("peer-urls", m.PeerURLs))
		}
	case raftpb.ConfChangeRemoveNode:
		if s.members[id] == nil {
			result.err = ErrMemberNotFound
			break
		}
		delete(s.members, id)
		s.removed[id] = true
		s.lg.Info("member removed from the cluster", zap.Uint64("member-id", id))
	}
	s.waiters.Trigger(cc.GetId(), result)
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
