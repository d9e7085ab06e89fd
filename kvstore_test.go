package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"raftkv/api"
	"raftkv/codec"
	"raftkv/config"
	"raftkv/idempotency"
	"raftkv/keyspace"
	"raftkv/lease"
	"raftkv/membership"
	"raftkv/metrics"
	"raftkv/watch"
)

// testValue is key's value in s's applied state, if it is there.
func testValue(s *kvstore, key string) ([]byte, bool) {
	v, _, ok := s.get(key)
	return []byte(v.Data), ok
}

// kvTimeout bounds every wait in these tests, so that a bug fails a test in
// seconds instead of hanging the run.
const kvTimeout = 5 * time.Second

// kvTest drives a kvstore without raft: the test plays the raft node,
// reading proposals and feeding batches to apply in log order.
type kvTest struct {
	t           *testing.T
	s           *kvstore
	proposeC    chan proposal
	confChangeC chan *raftpb.ConfChange
	applyC      chan *applyBatch
	closeOnce   sync.Once
}

// newKVTest starts a store's apply loop; it is stopped when the test ends.
func newKVTest(t *testing.T) *kvTest {
	t.Helper()
	h := &kvTest{
		t:           t,
		proposeC:    make(chan proposal),
		confChangeC: make(chan *raftpb.ConfChange),
		applyC:      make(chan *applyBatch),
	}
	h.s = newKVStore(zap.NewNop(), 1, lease.Origin{Member: 1}, watch.DefaultHistoryBytes, nil, h.proposeC, h.confChangeC)
	go h.s.serveApply(h.applyC)
	t.Cleanup(h.stop)
	return h
}

// stop closes applyC, as the raft node does when it stops, and waits for
// the apply loop to exit.
func (h *kvTest) stop() {
	h.closeOnce.Do(func() { close(h.applyC) })
	kvWait(h.t, h.s.done, "the apply loop to stop")
}

// send hands a batch to the apply loop.
func (h *kvTest) send(b *applyBatch) {
	h.t.Helper()
	select {
	case h.applyC <- b:
	case <-time.After(kvTimeout):
		h.t.Fatal("timed out handing a batch to the apply loop")
	}
}

// commit hands a batch of committed entries to the apply loop and waits until it is applied.
func (h *kvTest) commit(snap *raftpb.Snapshot, entries ...*raftpb.Entry) {
	h.t.Helper()
	b := &applyBatch{snapshot: snap, entries: entries, applied: make(chan struct{})}
	h.send(b)
	kvWait(h.t, b.applied, "the batch to apply")
}

// apply commits entries and waits until they are applied.
func (h *kvTest) apply(entries ...*raftpb.Entry) {
	h.t.Helper()
	h.commit(nil, entries...)
}

// kvResult is what a proposing call returned.
type kvResult struct {
	index uint64
	err   error
}

// start runs a proposing call, as an HTTP handler would, with a bounded
// context.
func (h *kvTest) start(call func(context.Context) (uint64, error)) <-chan kvResult {
	return h.startWithTimeout(kvTimeout, call)
}

func (h *kvTest) startWithTimeout(timeout time.Duration, call func(context.Context) (uint64, error)) <-chan kvResult {
	resC := make(chan kvResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		index, err := call(ctx)
		resC <- kvResult{index, err}
	}()
	return resC
}

// nextProposal waits for the entry a call proposes (a command or a conf
// change) and builds it as raft would commit it at index.
func (h *kvTest) nextProposal(index uint64) *raftpb.Entry {
	h.t.Helper()
	select {
	case p := <-h.proposeC:
		if cmd, err := codec.DecodeCommand(p.data); err != nil || cmd.RequestID != p.requestID {
			h.t.Fatalf("proposal with request id %d carries a command with id %d (decode error %v)", p.requestID, cmd.RequestID, err)
		}
		return kvEntry(index, p.data)
	case cc := <-h.confChangeC:
		return kvConfEntry(h.t, index, cc)
	case <-time.After(kvTimeout):
		h.t.Fatal("timed out waiting for a proposal")
		return nil
	}
}

// propose runs call, commits what it proposed at the next index, and returns
// the call's error after checking that it reported that index.
func (h *kvTest) propose(call func(context.Context) (uint64, error)) error {
	h.t.Helper()
	resC := h.start(call)
	index := h.s.appliedIndex.Load() + 1
	h.apply(h.nextProposal(index))
	r := kvRecv(h.t, resC, "the proposer to return")
	if r.index != index {
		h.t.Errorf("proposer got index %d, want %d (err %v)", r.index, index, r.err)
	}
	return r.err
}

// proposeConfChange runs call, commits the conf change it proposed at the
// next index, and returns the call's error, the conf change's type, and
// whether the kvstore took it (which decides whether raft applies it).
func (h *kvTest) proposeConfChange(call func(context.Context) (uint64, error)) (raftpb.ConfChangeType, bool, error) {
	h.t.Helper()
	resC := h.start(call)
	e := h.nextProposal(h.s.appliedIndex.Load() + 1)
	var cc raftpb.ConfChange
	if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
		h.t.Fatalf("not a conf change: %v", err)
	}
	b := &applyBatch{entries: []*raftpb.Entry{e}, applied: make(chan struct{})}
	h.send(b)
	kvWait(h.t, b.applied, "the conf change to apply")
	return cc.GetType(), b.confChangeTaken, kvRecv(h.t, resC, "the proposer to return").err
}

// advertise is a proposing call for ProposeAdvertise's entry that reports
// the entry's index, which ProposeAdvertise does not.
func (h *kvTest) advertise(memberID uint64, url string) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		id := h.s.requestIDs.Next()
		o, err := proposeAndWait(ctx, h.s, id, h.s.proposeC, proposal{requestID: id, data: codec.EncodeAdvertise(id, memberID, url)})
		return o.Index, err
	}
}

func (h *kvTest) put(key, value string) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		o, err := writeTest(ctx, h.s, true, key, []byte(value), keyspace.Condition{}, idempotency.Key{})
		return o.Index, err
	}
}

func (h *kvTest) del(key string) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		o, err := writeTest(ctx, h.s, false, key, nil, keyspace.Condition{}, idempotency.Key{})
		return o.Index, err
	}
}

// writeTest proposes a PUT of value to key (put true) or a DELETE of key,
// as writeKey does, and waits for store to apply it.
func writeTest(ctx context.Context, store *kvstore, put bool, key string, value []byte, cond keyspace.Condition, idem idempotency.Key) (outcome, error) {
	id := store.requestIDs.Next()
	return proposeAndWait(ctx, store, id, store.proposeC, proposal{requestID: id, data: codec.EncodeWrite(id, put, key, value, cond, idem, 0), key: key})
}

// confChange is a proposing call for ProposeMembershipChange, as the /members
// handlers make it.
func (h *kvTest) confChange(cc *raftpb.ConfChange) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		a, _, err := h.s.ProposeMembershipChange(ctx, cc)
		return a.Index, err
	}
}

func (h *kvTest) addMember(m membership.Member) func(context.Context) (uint64, error) {
	return h.confChange(membership.AddChange(m, idempotency.Key{}))
}

func (h *kvTest) removeMember(id uint64) func(context.Context) (uint64, error) {
	return h.confChange(membership.RemoveChange(id))
}

func (h *kvTest) promote(id uint64) func(context.Context) (uint64, error) {
	return h.confChange(membership.PromoteChange(id))
}

// kv returns a copy of the applied key-value map.
func (h *kvTest) kv() map[string][]byte {
	h.s.mu.RLock()
	defer h.s.mu.RUnlock()
	values := make(map[string][]byte, h.s.keys.Len())
	h.s.keys.Scan(func(k string, v keyspace.Value) bool {
		values[k] = []byte(v.Data)
		return true
	})
	return values
}

// checkKV fails the test unless the applied keys are exactly want.
func (h *kvTest) checkKV(want map[string][]byte) {
	h.t.Helper()
	if got := h.kv(); !maps.EqualFunc(got, want, bytes.Equal) {
		h.t.Errorf("keys = %q, want %q", got, want)
	}
}

// checkMembers fails the test unless the member table lists exactly want,
// in order.
func (h *kvTest) checkMembers(want ...membership.Member) {
	h.t.Helper()
	if got := h.s.Table().List(); !slices.EqualFunc(got, want, memberEqual) {
		h.t.Errorf("members = %+v, want %+v", got, want)
	}
}

// memberEqual reports whether two members are the same, an empty URL list
// the same as none.
func memberEqual(a, b membership.Member) bool {
	return a.ID == b.ID && a.IsLearner == b.IsLearner && slices.Equal(a.PeerURLs, b.PeerURLs) && slices.Equal(a.ClientURLs, b.ClientURLs)
}

// encodePut and encodeDelete are the entries of a plain PUT and DELETE.
func encodePut(requestID uint64, key string, value []byte) []byte {
	return codec.EncodeWrite(requestID, true, key, value, keyspace.Condition{}, idempotency.Key{}, 0)
}

func encodeDelete(requestID uint64, key string) []byte {
	return codec.EncodeWrite(requestID, false, key, nil, keyspace.Condition{}, idempotency.Key{}, 0)
}

// kvEntry is a normal entry carrying data, committed at index.
func kvEntry(index uint64, data []byte) *raftpb.Entry {
	return &raftpb.Entry{Index: new(index), Term: new(uint64(1)), Type: raftpb.EntryNormal.Enum(), Data: data}
}

// kvConfEntry is a conf change entry, committed at index.
func kvConfEntry(t *testing.T, index uint64, cc *raftpb.ConfChange) *raftpb.Entry {
	t.Helper()
	data, err := proto.Marshal(cc)
	if err != nil {
		t.Fatalf("marshal conf change: %v", err)
	}
	return &raftpb.Entry{Index: new(index), Term: new(uint64(1)), Type: raftpb.EntryConfChange.Enum(), Data: data}
}

// kvAddEntry is the entry that adds m, with no one waiting for it.
func kvAddEntry(t *testing.T, index uint64, m membership.Member) *raftpb.Entry {
	t.Helper()
	return kvConfEntry(t, index, membership.AddChange(m, idempotency.Key{}))
}

// kvRemoveEntry is the entry that removes member id, with no one waiting for it.
func kvRemoveEntry(t *testing.T, index, id uint64) *raftpb.Entry {
	t.Helper()
	return kvConfEntry(t, index, membership.RemoveChange(id))
}

// kvSnapshot is a raft snapshot of data taken at index.
func kvSnapshot(index uint64, data []byte) *raftpb.Snapshot {
	return &raftpb.Snapshot{Data: data, Metadata: &raftpb.SnapshotMetadata{
		Index: new(index), Term: new(uint64(1)), ConfState: &raftpb.ConfState{},
	}}
}

// kvContext is a context for a call the test expects to return promptly.
func kvContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), kvTimeout)
	t.Cleanup(cancel)
	return ctx
}

// kvWait waits, boundedly, for c to close or deliver.
func kvWait[T any](t *testing.T, c <-chan T, what string) {
	t.Helper()
	kvRecv(t, c, what)
}

// kvRecv receives from c, failing the test if nothing comes in time.
func kvRecv[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(kvTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// stateContent is a replicated state in comparable form: every key with
// its version, the members and the removed ids, and the idempotency
// records in order.
type stateContent struct {
	keys    map[string]keyspace.Value
	members []membership.Member
	removed []uint64
	records []string
}

// contentOf is st in comparable form.
func contentOf(st codec.State) stateContent {
	c := stateContent{keys: make(map[string]keyspace.Value), members: st.Members.List(), removed: st.Members.Removed()}
	st.Keys.Scan(func(k string, v keyspace.Value) bool {
		c.keys[k] = v
		return true
	})
	for _, r := range st.Records {
		c.records = append(c.records, fmt.Sprintf("%+v", *r))
	}
	return c
}

// TestKVStoreApplyEntries proves that committed puts, overwrites and deletes
// change the state exactly as the log says and advance the applied index,
// while empty and undecodable entries change nothing, since every member
// must reach the same state from the same log.
func TestKVStoreApplyEntries(t *testing.T) {
	h := newKVTest(t)
	steps := []struct {
		name string
		data []byte
		want map[string][]byte
	}{
		{"put", encodePut(1, "a", []byte("1")), map[string][]byte{"a": []byte("1")}},
		{"put empty value", encodePut(2, "b/c", nil), map[string][]byte{"a": []byte("1"), "b/c": {}}},
		{"overwrite", encodePut(3, "a", []byte{0, 2}), map[string][]byte{"a": {0, 2}, "b/c": {}}},
		{"leader's empty entry", nil, map[string][]byte{"a": {0, 2}, "b/c": {}}},
		{"undecodable entry", []byte{0xff, 1}, map[string][]byte{"a": {0, 2}, "b/c": {}}},
		{"delete", encodeDelete(4, "a"), map[string][]byte{"b/c": {}}},
		{"delete absent key", encodeDelete(5, "a"), map[string][]byte{"b/c": {}}},
		{"delete empty value", encodeDelete(6, "b/c"), map[string][]byte{}},
		{"batch, in order", codec.EncodeBatch([][]byte{encodePut(7, "x", []byte("1")), encodePut(8, "y", []byte("2")), encodeDelete(9, "x")}), map[string][]byte{"y": []byte("2")}},
		{"batch with an undecodable command", codec.EncodeBatch([][]byte{{0xff}, encodePut(10, "z", []byte("3"))}), map[string][]byte{"y": []byte("2"), "z": []byte("3")}},
		{"corrupt batch", append(codec.EncodeBatch([][]byte{encodePut(11, "w", nil)}), 0), map[string][]byte{"y": []byte("2"), "z": []byte("3"), "w": {}}},
	}
	for i, step := range steps {
		index := uint64(i + 1)
		h.apply(kvEntry(index, step.data))
		if got := h.s.appliedIndex.Load(); got != index {
			t.Errorf("after %s: applied index %d, want %d", step.name, got, index)
		}
		h.checkKV(step.want)
	}
	if v, ok := testValue(h.s, "a"); ok {
		t.Errorf("get(a) = %q after delete, want absent", v)
	}
}

// TestKVStoreCopiesValue proves that the store keeps its own copy of a put's
// value, since raft reuses or releases entry buffers after they are applied.
func TestKVStoreCopiesValue(t *testing.T) {
	h := newKVTest(t)
	data := encodePut(1, "k", []byte("value"))
	h.apply(kvEntry(1, data))
	clear(data)
	if v, ok := testValue(h.s, "k"); !ok || string(v) != "value" {
		t.Errorf("get(k) = %q, %v after the entry buffer changed, want \"value\", true", v, ok)
	}
}

// TestKVStoreProposerGetsResult proves that a handler blocked in a put, a
// delete or an advertise is woken with its entry's index and outcome, since
// that is how clients learn their write is applied (or why it changed
// nothing).
func TestKVStoreProposerGetsResult(t *testing.T) {
	h := newKVTest(t)
	h.apply(kvAddEntry(t, 1, membership.Member{ID: 1, PeerURLs: []string{"http://p1"}}))
	steps := []struct {
		name    string
		call    func(context.Context) (uint64, error)
		wantErr error
		wantKV  map[string][]byte
	}{
		{"put", h.put("k", "v"), nil, map[string][]byte{"k": []byte("v")}},
		{"overwrite", h.put("k", "w"), nil, map[string][]byte{"k": []byte("w")}},
		{"delete present key", h.del("k"), nil, map[string][]byte{}},
		{"delete absent key", h.del("k"), keyspace.ErrKeyNotFound, map[string][]byte{}},
		{"advertise for a member", h.advertise(1, "http://c1"), nil, map[string][]byte{}},
		{"advertise for a stranger", h.advertise(9, "http://c9"), membership.ErrMemberNotFound, map[string][]byte{}},
	}
	// One store through all steps, so no subtests: h reports on t.
	for _, step := range steps {
		if err := h.propose(step.call); !errors.Is(err, step.wantErr) {
			t.Errorf("%s: error = %v, want %v", step.name, err, step.wantErr)
		}
		h.checkKV(step.wantKV)
	}
	h.checkMembers(membership.Member{ID: 1, PeerURLs: []string{"http://p1"}, ClientURLs: []string{"http://c1"}})
}

// TestKVStoreWaitApplied proves that WaitApplied blocks until the index is
// applied and gives up with the context, since stale and linearizable reads
// wait on it before reading the state.
func TestKVStoreWaitApplied(t *testing.T) {
	h := newKVTest(t)
	waitC := h.start(func(ctx context.Context) (uint64, error) { return 0, h.s.WaitApplied(ctx, 3) })
	h.apply(kvEntry(1, encodePut(1, "a", nil)), kvEntry(2, nil))
	select {
	case r := <-waitC:
		t.Fatalf("WaitApplied(3) returned %v at applied index 2", r.err)
	default:
	}
	h.apply(kvEntry(3, encodeDelete(2, "a")))
	if r := kvRecv(t, waitC, "WaitApplied(3)"); r.err != nil {
		t.Errorf("WaitApplied(3) = %v after index 3 applied, want nil", r.err)
	}
	if err := h.s.WaitApplied(kvContext(t), 2); err != nil {
		t.Errorf("WaitApplied(2) = %v for an applied index, want nil", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := h.s.WaitApplied(ctx, 4); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitApplied(4) = %v with an expiring context, want DeadlineExceeded", err)
	}
}

// TestKVStoreProposerTimeout proves that a proposer whose context expires
// gets DeadlineExceeded and unregisters its waiter, whether raft never took
// the proposal or never committed it, since a leaked waiter is a memory leak
// per timed-out request and a late entry must then apply harmlessly.
func TestKVStoreProposerTimeout(t *testing.T) {
	for _, taken := range []bool{false, true} {
		name := map[bool]string{false: "proposal never taken", true: "proposal taken, never committed"}[taken]
		t.Run(name, func(t *testing.T) {
			h := newKVTest(t)
			id := h.s.requestIDs.Next()
			data := encodePut(id, "k", []byte("late"))
			resC := h.startWithTimeout(50*time.Millisecond, func(ctx context.Context) (uint64, error) {
				o, err := proposeAndWait(ctx, h.s, id, h.s.proposeC, proposal{requestID: id, data: data, key: "k"})
				return o.Index, err
			})
			if taken {
				if p := kvRecv(t, h.proposeC, "the proposal"); p.requestID != id {
					t.Fatalf("proposal request id %d, want %d", p.requestID, id)
				}
			}
			if r := kvRecv(t, resC, "the proposer to time out"); !errors.Is(r.err, context.DeadlineExceeded) || r.index != 0 {
				t.Errorf("propose = %d, %v, want 0, DeadlineExceeded", r.index, r.err)
			}
			if h.s.waiters.IsRegistered(id) {
				t.Errorf("request %d still has a waiter after its proposer gave up", id)
			}
			// The entry may still commit; it must apply with no one to wake.
			h.apply(kvEntry(1, data))
			h.checkKV(map[string][]byte{"k": []byte("late")})
		})
	}
}

// TestKVStoreConfChanges proves that applied conf changes and advertise entries
// maintain the member table (ordered by id, no duplicate adds, removals
// remembered), since peers and client redirects are driven by it.
func TestKVStoreConfChanges(t *testing.T) {
	h := newKVTest(t)
	m1 := membership.Member{ID: 1, PeerURLs: []string{"http://p1"}}
	m2 := membership.Member{ID: 2, PeerURLs: []string{"http://p2"}}
	m3 := membership.Member{ID: 3, PeerURLs: []string{"http://p3a", "http://p3b"}, ClientURLs: []string{"http://c3"}}
	m1Advertised := membership.Member{ID: 1, PeerURLs: m1.PeerURLs, ClientURLs: []string{"http://c1"}}
	steps := []struct {
		name        string
		call        func(context.Context) (uint64, error)
		wantErr     error
		wantMembers []membership.Member
		wantRemoved []uint64
	}{
		{"add 3", h.addMember(m3), nil, []membership.Member{m3}, nil},
		{"add 1", h.addMember(m1), nil, []membership.Member{m1, m3}, nil},
		{"add 2", h.addMember(m2), nil, []membership.Member{m1, m2, m3}, nil},
		{"add existing 2", h.addMember(membership.Member{ID: 2, PeerURLs: []string{"http://other"}}), membership.ErrMemberExists, []membership.Member{m1, m2, m3}, nil},
		{"advertise 1", h.advertise(1, "http://c1"), nil, []membership.Member{m1Advertised, m2, m3}, nil},
		{"remove 2", h.removeMember(2), nil, []membership.Member{m1Advertised, m3}, []uint64{2}},
		{"remove absent 9", h.removeMember(9), membership.ErrMemberNotFound, []membership.Member{m1Advertised, m3}, []uint64{2}},
		{"advertise removed 2", h.advertise(2, "http://c2"), membership.ErrMemberNotFound, []membership.Member{m1Advertised, m3}, []uint64{2}},
		{"remove 3", h.removeMember(3), nil, []membership.Member{m1Advertised}, []uint64{2, 3}},
		{"re-add 3", h.addMember(m3), nil, []membership.Member{m1Advertised, m3}, []uint64{2}},
	}
	for _, step := range steps {
		if err := h.propose(step.call); !errors.Is(err, step.wantErr) {
			t.Errorf("%s: error = %v, want %v", step.name, err, step.wantErr)
		}
		h.checkMembers(step.wantMembers...)
		for _, id := range []uint64{1, 2, 3, 9} {
			if got, want := h.s.isIDRemoved(id), slices.Contains(step.wantRemoved, id); got != want {
				t.Errorf("%s: isIDRemoved(%d) = %v, want %v", step.name, id, got, want)
			}
		}
	}
	if m, ok := h.s.Table().Lookup(3); !ok || !memberEqual(m, m3) {
		t.Errorf("Lookup(3) = %+v, %v, want %+v, true", m, ok, m3)
	}
	if m, ok := h.s.Table().Lookup(2); ok {
		t.Errorf("Lookup(2) = %+v, true after removal, want false", m)
	}
}

// TestKVStoreLearners proves the member table's side of learners: an add
// with IsLearner proposes AddLearnerNode and records a learner; a promotion
// makes it a voter, and is refused, not taken (so raft never applies it),
// for a voter or a stranger; an add never turns an existing learner into a
// voter, or a voter into a learner (raft would demote it); a learner can be
// removed.
func TestKVStoreLearners(t *testing.T) {
	h := newKVTest(t)
	m1 := membership.Member{ID: 1, PeerURLs: []string{"http://p1"}}
	m4 := membership.Member{ID: 4, PeerURLs: []string{"http://p4"}, ClientURLs: []string{"http://c4"}, IsLearner: true}
	m4Voter := m4
	m4Voter.IsLearner = false
	steps := []struct {
		name        string
		call        func(context.Context) (uint64, error)
		wantErr     error
		wantType    raftpb.ConfChangeType
		wantMembers []membership.Member
	}{
		{"add voter 1", h.addMember(m1), nil, raftpb.ConfChangeAddNode, []membership.Member{m1}},
		{"add learner 4", h.addMember(m4), nil, raftpb.ConfChangeAddLearnerNode, []membership.Member{m1, m4}},
		{"add learner 4 again", h.addMember(m4), membership.ErrMemberExists, raftpb.ConfChangeAddLearnerNode, []membership.Member{m1, m4}},
		{"add learner 4 as a voter", h.addMember(m4Voter), membership.ErrMemberExists, raftpb.ConfChangeAddNode, []membership.Member{m1, m4}},
		{"add voter 1 as a learner", h.addMember(membership.Member{ID: 1, PeerURLs: m1.PeerURLs, IsLearner: true}), membership.ErrMemberExists, raftpb.ConfChangeAddLearnerNode, []membership.Member{m1, m4}},
		{"promote voter 1", h.promote(1), membership.ErrNotLearner, raftpb.ConfChangeAddNode, []membership.Member{m1, m4}},
		{"promote stranger 9", h.promote(9), membership.ErrMemberNotFound, raftpb.ConfChangeAddNode, []membership.Member{m1, m4}},
		{"promote learner 4", h.promote(4), nil, raftpb.ConfChangeAddNode, []membership.Member{m1, m4Voter}},
		{"promote 4 again", h.promote(4), membership.ErrNotLearner, raftpb.ConfChangeAddNode, []membership.Member{m1, m4Voter}},
		{"add learner 5", h.addMember(membership.Member{ID: 5, PeerURLs: []string{"http://p5"}, IsLearner: true}), nil, raftpb.ConfChangeAddLearnerNode, nil},
		{"remove learner 5", h.removeMember(5), nil, raftpb.ConfChangeRemoveNode, []membership.Member{m1, m4Voter}},
	}
	for _, step := range steps {
		typ, taken, err := h.proposeConfChange(step.call)
		if !errors.Is(err, step.wantErr) {
			t.Errorf("%s: error = %v, want %v", step.name, err, step.wantErr)
		}
		if typ != step.wantType {
			t.Errorf("%s: proposed %v, want %v", step.name, typ, step.wantType)
		}
		if taken != (step.wantErr == nil) {
			t.Errorf("%s: taken = %v with error %v: a refused change must not reach raft, a taken one must", step.name, taken, err)
		}
		if step.wantMembers != nil {
			h.checkMembers(step.wantMembers...)
		}
	}
	if !h.s.isIDRemoved(5) {
		t.Errorf("removed learner 5 is not remembered as removed")
	}
	// The learner flag survives a snapshot, as every member must agree on it.
	m6 := membership.Member{ID: 6, PeerURLs: []string{"http://p6"}, IsLearner: true}
	if _, _, err := h.proposeConfChange(h.addMember(m6)); err != nil {
		t.Fatalf("add learner 6: %v", err)
	}
	h.checkMembers(m1, m4Voter, m6)
	data := h.s.snapshot()
	other := newKVTest(t)
	other.commit(kvSnapshot(h.s.appliedIndex.Load(), data))
	other.checkMembers(m1, m4Voter, m6)
}

// TestKVStoreSnapshotRecovery proves that a store loading another's snapshot,
// then the entries after it, ends with the same keys, members, removed ids
// and applied index, and drops whatever it held before, since that is how
// restarted and lagging members catch up.
func TestKVStoreSnapshotRecovery(t *testing.T) {
	src := newKVTest(t)
	src.apply(
		kvAddEntry(t, 1, membership.Member{ID: 1, PeerURLs: []string{"http://p1"}}),
		kvAddEntry(t, 2, membership.Member{ID: 2, PeerURLs: []string{"http://p2"}}),
		kvAddEntry(t, 3, membership.Member{ID: 3, PeerURLs: []string{"http://p3"}}),
		kvRemoveEntry(t, 4, 3),
		kvEntry(5, codec.EncodeAdvertise(1, 1, "http://c1")),
		kvEntry(6, encodePut(2, "a", []byte("1"))),
		kvEntry(7, encodePut(3, "empty", nil)),
		kvEntry(8, encodePut(4, "gone", []byte("x"))),
		kvEntry(9, encodeDelete(5, "gone")),
	)
	const snapIndex = 9
	data := src.s.snapshot()
	after := func(t *testing.T) []*raftpb.Entry {
		return []*raftpb.Entry{
			kvEntry(snapIndex+1, encodePut(6, "b", []byte("2"))),
			kvEntry(snapIndex+2, encodeDelete(7, "a")),
			kvRemoveEntry(t, snapIndex+3, 2),
		}
	}
	src.apply(after(t)...)

	for _, oneBatch := range []bool{false, true} {
		name := map[bool]string{false: "snapshot, then entries", true: "snapshot and entries in one batch"}[oneBatch]
		t.Run(name, func(t *testing.T) {
			h := newKVTest(t)
			h.apply(kvEntry(1, encodePut(1, "stale", []byte("x"))), kvAddEntry(t, 2, membership.Member{ID: 7}))
			if oneBatch {
				h.commit(kvSnapshot(snapIndex, data), after(t)...)
			} else {
				h.commit(kvSnapshot(snapIndex, data))
				if got := h.s.appliedIndex.Load(); got != snapIndex {
					t.Errorf("applied index after the snapshot = %d, want %d", got, snapIndex)
				}
				h.checkKV(map[string][]byte{"a": []byte("1"), "empty": {}})
				h.apply(after(t)...)
			}
			if got, want := h.s.appliedIndex.Load(), src.s.appliedIndex.Load(); got != want {
				t.Errorf("applied index = %d, want %d", got, want)
			}
			if err := h.s.WaitApplied(kvContext(t), snapIndex+3); err != nil {
				t.Errorf("WaitApplied(last index) = %v", err)
			}
			h.checkKV(src.kv())
			h.checkMembers(src.s.Table().List()...)
			for _, id := range []uint64{1, 2, 3, 7} {
				if got, want := h.s.isIDRemoved(id), src.s.isIDRemoved(id); got != want {
					t.Errorf("isIDRemoved(%d) = %v, want %v", id, got, want)
				}
			}
		})
	}
}

// TestKVStoreCorruptSnapshotStops proves that a snapshot that does not decode
// stops the apply loop with a codec.ErrCorrupt error and leaves the state
// untouched, since applying past it would silently diverge from the cluster.
func TestKVStoreCorruptSnapshotStops(t *testing.T) {
	keys := keyspace.New()
	keys.Set("new", keyspace.Value{Data: "v"})
	valid := codec.State{Members: membership.NewTable([]membership.Member{{ID: 1}}, nil), Keys: keys}.Encode()
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"bad version", append([]byte{valid[0] + 1}, valid[1:]...)},
		{"truncated", valid[:len(valid)-1]},
		{"trailing garbage", append(slices.Clone(valid), 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newKVTest(t)
			h.apply(kvEntry(1, encodePut(1, "old", []byte("v"))))
			h.send(&applyBatch{snapshot: kvSnapshot(5, tt.data), applied: make(chan struct{})})
			kvWait(t, h.s.done, "the apply loop to stop")
			if !errors.Is(h.s.err, codec.ErrCorrupt) {
				t.Errorf("store error = %v, want one wrapping codec.ErrCorrupt", h.s.err)
			}
			if got := h.s.appliedIndex.Load(); got != 1 {
				t.Errorf("applied index = %d, want 1", got)
			}
			h.checkKV(map[string][]byte{"old": []byte("v")})
			h.checkMembers()
		})
	}
}

// TestKVStoreStopWakesProposers proves that closing applyC closes done and
// turns every blocked or new proposal and wait into api.ErrStopped, since a
// stopping server must not leave handlers hanging.
func TestKVStoreStopWakesProposers(t *testing.T) {
	h := newKVTest(t)
	// One put proposed and waiting to apply, one stuck handing its proposal
	// to a raft node that no longer reads.
	appliedC := h.start(h.put("a", "1"))
	p := kvRecv(t, h.proposeC, "the first proposal")
	sendingC := h.start(h.put("b", "2"))
	waitC := h.start(func(ctx context.Context) (uint64, error) { return 0, h.s.WaitApplied(ctx, 1) })

	h.stop()
	for what, c := range map[string]<-chan kvResult{"applying put": appliedC, "proposing put": sendingC, "WaitApplied": waitC} {
		if r := kvRecv(t, c, what); !errors.Is(r.err, api.ErrStopped) {
			t.Errorf("%s returned %v, want api.ErrStopped", what, r.err)
		}
	}
	if h.s.waiters.IsRegistered(p.requestID) {
		t.Errorf("request %d still has a waiter after the store stopped", p.requestID)
	}
	if h.s.err != nil {
		t.Errorf("store error after a clean stop = %v, want nil", h.s.err)
	}
	if _, err := writeTest(kvContext(t), h.s, false, "a", nil, keyspace.Condition{}, idempotency.Key{}); !errors.Is(err, api.ErrStopped) {
		t.Errorf("delete after stop = %v, want api.ErrStopped", err)
	}
}

// TestIdempotencyWindow proves the record keeps only the newest window keys,
// evicting the oldest in apply order with the window the entry carries, so a
// retry of an evicted key applies again.
func TestIdempotencyWindow(t *testing.T) {
	h := newKVTest(t)
	ctx := context.Background()
	put := func(idemKey, value string, window uint64) outcome {
		t.Helper()
		done := make(chan outcome, 1)
		go func() {
			idem := idempotency.Key{Name: idemKey, Fingerprint: idempotency.Fingerprint([]byte(value)), Window: window}
			o, _ := writeTest(ctx, h.s, true, "k", []byte(value), keyspace.Condition{}, idem)
			done <- o
		}()
		h.apply(h.nextProposal(h.s.appliedIndex.Load() + 1))
		return <-done
	}
	for i := range 3 {
		if o := put(fmt.Sprint("key-", i), "v", 2); o.replayed {
			t.Fatalf("write %d replayed", i)
		}
	}
	if o := put("key-2", "v", 2); !o.replayed {
		t.Error("newest key not remembered with window 2")
	}
	if o := put("key-0", "v", 2); o.replayed {
		t.Error("oldest key remembered beyond window 2")
	}
	if n := len(h.s.dedup.List()); n != 2 {
		t.Errorf("%d records kept, want 2", n)
	}
}

// TestPointInTimeIsolated proves that the copy PointInTime takes is the
// state at its index whatever is applied after it: new, replaced and
// deleted keys, a member's client URL advertised in place, and idempotency
// records evicted and compacted in place. GET /snapshot encodes the copy
// while the kvstore goes on applying.
func TestPointInTimeIsolated(t *testing.T) {
	h := newKVTest(t)
	m := membership.Member{ID: 1, PeerURLs: []string{"http://127.0.0.1:2380"}}
	h.commit(nil, kvAddEntry(t, 1, m))
	keyed := func(i int) idempotency.Key {
		return idempotency.Key{Name: fmt.Sprintf("idem-%d", i), Fingerprint: uint64(i), Window: 3}
	}
	var index uint64 = 1
	for i := range 10 {
		index++
		h.commit(nil, kvEntry(index, codec.EncodeWrite(index, true, fmt.Sprintf("k%d", i), []byte("v"), keyspace.Condition{}, keyed(i), 0)))
	}
	wantState, err := codec.DecodeState(h.s.snapshot())
	if err != nil {
		t.Fatal(err)
	}
	want := contentOf(wantState)
	st, gotIndex, term := h.s.PointInTime()
	if gotIndex != index || term != 1 {
		t.Fatalf("PointInTime at index %d, term %d; want %d, 1", gotIndex, term, index)
	}
	// After the copy: replace, delete, add, advertise, and evict records.
	for i := range 10 {
		index++
		h.commit(nil, kvEntry(index, codec.EncodeWrite(index, i%2 == 0, fmt.Sprintf("k%d", i+5), []byte("w"), keyspace.Condition{}, keyed(100+i), 0)))
	}
	index++
	h.commit(nil, kvEntry(index, codec.EncodeAdvertise(index, 1, "http://127.0.0.1:2379")))

	gotState, err := codec.DecodeState(st.Encode())
	if err != nil {
		t.Fatal(err)
	}
	got := contentOf(gotState)
	if !maps.Equal(got.keys, want.keys) {
		t.Errorf("copy has keys %v, want %v", got.keys, want.keys)
	}
	if !slices.EqualFunc(got.members, want.members, memberEqual) || !slices.Equal(got.removed, want.removed) {
		t.Errorf("copy has members %v (removed %v), want %v (removed %v)", got.members, got.removed, want.members, want.removed)
	}
	if !slices.Equal(got.records, want.records) || len(got.records) != 3 {
		t.Errorf("copy has %d idempotency records, want the %d taken, as they were", len(got.records), len(want.records))
	}
}

// TestMetricsProposalOutcomes proves each way a proposal's wait ends is
// counted as what it is, and a member stopping as none of them.
func TestMetricsProposalOutcomes(t *testing.T) {
	m := metrics.New(testLogger(0))
	scrapeOwn := func() scrape {
		rec := httptest.NewRecorder()
		m.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return parseScrape(t, rec.Header().Get("Content-Type"), rec.Body)
	}
	const (
		committed = "raftkv_proposals_committed_total"
		dropped   = "raftkv_proposals_dropped_total"
		timedOut  = "raftkv_proposals_timed_out_total"
		canceled  = "raftkv_proposals_canceled_total"
	)
	for _, tc := range []struct {
		o      outcome
		err    error
		end    metrics.ProposalEnd
		series string
	}{
		{outcome{Answer: idempotency.Answer{Index: 7}}, nil, metrics.ProposalApplied, committed},
		{outcome{Answer: idempotency.Answer{Index: 7, Err: keyspace.ErrPreconditionFailed}}, keyspace.ErrPreconditionFailed, metrics.ProposalApplied, committed},
		{outcome{Answer: idempotency.Answer{Err: api.ErrNoLeader}}, fmt.Errorf("%w: raft: proposal dropped", api.ErrNoLeader), metrics.ProposalDropped, dropped},
		{outcome{}, context.DeadlineExceeded, metrics.ProposalTimedOut, timedOut},
		{outcome{}, context.Canceled, metrics.ProposalCanceled, canceled},
	} {
		end := proposalEnd(tc.o, tc.err)
		if end != tc.end {
			t.Errorf("outcome %+v, error %v: ended as %v, want %v", tc.o, tc.err, end, tc.end)
		}
		was := scrapeOwn().get(t, tc.series)
		m.ProposalStarted()
		m.ProposalDone(end)
		if got := scrapeOwn().get(t, tc.series); got != was+1 {
			t.Errorf("outcome %+v, error %v: %s %v, want %v", tc.o, tc.err, tc.series, got, was+1)
		}
	}
	total := func() float64 {
		s := scrapeOwn()
		return s.get(t, committed) + s.get(t, dropped) + s.get(t, timedOut) + s.get(t, canceled)
	}
	if end := proposalEnd(outcome{}, api.ErrStopped); end != metrics.ProposalStopped {
		t.Errorf("a proposal ended by the member stopping ended as %v, want %v", end, metrics.ProposalStopped)
	}
	was := total()
	m.ProposalStarted()
	m.ProposalDone(proposalEnd(outcome{}, api.ErrStopped))
	if got := total(); got != was {
		t.Errorf("a proposal ended by the member stopping moved the outcome counters from %v to %v", was, got)
	}
	if got := scrapeOwn().get(t, "raftkv_proposals_pending"); got != 0 {
		t.Errorf("proposals pending after each ended: %v, want 0", got)
	}
}

// versionsState is a member's replicated state that versions and
// idempotency keys add: every key's version, and the records in order.
func versionsState(s *kvstore) (applied uint64, state string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var b strings.Builder
	s.keys.Scan(func(k string, v keyspace.Value) bool {
		fmt.Fprintf(&b, "%s=%s@%d/%d ", k, v.Data, v.CreateIndex, v.ModIndex)
		return true
	})
	for _, r := range s.dedup.List() {
		fmt.Fprintf(&b, "[%s %x %d %v %d/%d %t %t] ", r.Name, r.Fingerprint, r.Answer.Index, r.Answer.Err,
			r.Answer.Version.CreateIndex, r.Answer.Version.ModIndex, r.Answer.HasVersion, r.Answer.Created)
	}
	return s.appliedIndex.Load(), b.String()
}

// TestVersionsSameOnEveryMember proves versions and idempotency records are
// replicated state, identical on every member at the same applied index:
// through snapshots every 50 entries, a member restarted after missing
// writes (it catches up by snapshot), and a member added late.
func TestVersionsSameOnEveryMember(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config.Config) { cfg.SnapshotCount = 50 })
	leader := c.waitLeader()
	write := func(via uint64, round int) {
		t.Helper()
		for i := range 40 {
			key := fmt.Sprintf("v/%d", i%7)
			hdr := []string{"Idempotency-Key", fmt.Sprintf("r%d-%d", round, i)}
			if i%3 == 0 {
				hdr = append(hdr, "If-None-Match", "*")
			}
			rec := versionsReq(c.server(via).http.Handler, "PUT", "/keys/"+key, fmt.Sprint(round, i), hdr...)
			if rec.Code != 201 && rec.Code != 204 && rec.Code != 412 {
				t.Fatalf("PUT %s via %d: %d %q", key, via, rec.Code, rec.Body.String())
			}
		}
	}
	write(leader, 0)
	down := c.follower()
	if err := c.stop(down); err != nil {
		t.Fatal(err)
	}
	write(leader, 1)
	write(leader, 2)
	c.start(down)
	added := c.addMember(leader)
	write(c.waitLeader(), 3)

	var want string
	eventually(t, 20*time.Second, "every member to reach the same applied index and state", func() bool {
		index, first := versionsState(c.server(1).store)
		for _, id := range c.runningIDs() {
			if i, st := versionsState(c.server(id).store); i != index || st != first {
				return false
			}
		}
		want = first
		return true
	})
	if !strings.Contains(want, "[r3-39 ") {
		t.Fatalf("state without the last round's records: %.200s", want)
	}
	if st := clusterStatus(t, c, down); st.SnapshotIndex == 0 {
		t.Errorf("restarted member %d took no snapshot", down)
	}
	t.Logf("members %v agree; added member %d", c.runningIDs(), added)
}
