package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// testValue is key's value in s's applied state, if it is there.
func testValue(s *kvstore, key string) ([]byte, bool) {
	kv, _, ok := s.get(key)
	return []byte(kv.value), ok
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
	h.s = newKVStore(zap.NewNop(), 1, defaultWatchHistoryBytes, h.proposeC, h.confChangeC)
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
		if cmd, err := decodeCommand(p.data); err != nil || cmd.requestID != p.requestID {
			h.t.Fatalf("proposal with request id %d carries a command with id %d (decode error %v)", p.requestID, cmd.requestID, err)
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

// advertise is a proposing call for advertiseClientURL's entry; advertiseClientURL
// itself retries, which would hide the result.
func (h *kvTest) advertise(memberID uint64, url string) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		id := h.s.requestIDs.Next()
		return h.s.propose(ctx, id, encodeAdvertise(id, memberID, url))
	}
}

func (h *kvTest) put(key, value string) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		o, err := h.s.put(ctx, key, []byte(value), precondition{}, idempotent{})
		return o.index, err
	}
}

func (h *kvTest) del(key string) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		o, err := h.s.delete(ctx, key, precondition{}, idempotent{})
		return o.index, err
	}
}

func (h *kvTest) addMember(m member) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		o, err := h.s.addMember(ctx, m, idempotent{})
		return o.index, err
	}
}

func (h *kvTest) removeMember(id uint64) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) {
		o, err := h.s.removeMember(ctx, id)
		return o.index, err
	}
}

// kv returns a copy of the applied key-value map.
func (h *kvTest) kv() map[string][]byte {
	h.s.mu.RLock()
	defer h.s.mu.RUnlock()
	values := make(map[string][]byte, h.s.kv.Len())
	h.s.kv.Scan(func(k string, v keyValue) bool {
		values[k] = []byte(v.value)
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

// checkMembers fails the test unless memberList is exactly want, in order.
func (h *kvTest) checkMembers(want ...member) {
	h.t.Helper()
	got := h.s.memberList()
	if !slices.EqualFunc(got, want, func(a, b member) bool { return snapMemberEqual(&a, &b) }) {
		h.t.Errorf("members = %+v, want %+v", got, want)
	}
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
func kvAddEntry(t *testing.T, index uint64, m member) *raftpb.Entry {
	t.Helper()
	memberCtx, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return kvConfEntry(t, index, &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(m.ID), Context: memberCtx})
}

// kvRemoveEntry is the entry that removes member id, with no one waiting for it.
func kvRemoveEntry(t *testing.T, index, id uint64) *raftpb.Entry {
	t.Helper()
	return kvConfEntry(t, index, &raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode.Enum(), NodeId: new(id)})
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
		{"batch, in order", encodeBatch([][]byte{encodePut(7, "x", []byte("1")), encodePut(8, "y", []byte("2")), encodeDelete(9, "x")}), map[string][]byte{"y": []byte("2")}},
		{"batch with an undecodable command", encodeBatch([][]byte{{0xff}, encodePut(10, "z", []byte("3"))}), map[string][]byte{"y": []byte("2"), "z": []byte("3")}},
		{"corrupt batch", append(encodeBatch([][]byte{encodePut(11, "w", nil)}), 0), map[string][]byte{"y": []byte("2"), "z": []byte("3"), "w": {}}},
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

// TestKVStoreProposerGetsResult proves that a handler blocked in put, delete
// or advertise is woken with its entry's index and outcome, since that is how
// clients learn their write is applied (or why it changed nothing).
func TestKVStoreProposerGetsResult(t *testing.T) {
	h := newKVTest(t)
	h.apply(kvAddEntry(t, 1, member{ID: 1, PeerURLs: []string{"http://p1"}}))
	steps := []struct {
		name    string
		call    func(context.Context) (uint64, error)
		wantErr error
		wantKV  map[string][]byte
	}{
		{"put", h.put("k", "v"), nil, map[string][]byte{"k": []byte("v")}},
		{"overwrite", h.put("k", "w"), nil, map[string][]byte{"k": []byte("w")}},
		{"delete present key", h.del("k"), nil, map[string][]byte{}},
		{"delete absent key", h.del("k"), ErrKeyNotFound, map[string][]byte{}},
		{"advertise for a member", h.advertise(1, "http://c1"), nil, map[string][]byte{}},
		{"advertise for a stranger", h.advertise(9, "http://c9"), ErrMemberNotFound, map[string][]byte{}},
	}
	// One store through all steps, so no subtests: h reports on t.
	for _, step := range steps {
		if err := h.propose(step.call); !errors.Is(err, step.wantErr) {
			t.Errorf("%s: error = %v, want %v", step.name, err, step.wantErr)
		}
		h.checkKV(step.wantKV)
	}
	h.checkMembers(member{ID: 1, PeerURLs: []string{"http://p1"}, ClientURLs: []string{"http://c1"}})
}

// TestKVStoreWaitApplied proves that waitApplied blocks until the index is
// applied and gives up with the context, since stale and linearizable reads
// wait on it before reading the state.
func TestKVStoreWaitApplied(t *testing.T) {
	h := newKVTest(t)
	waitC := h.start(func(ctx context.Context) (uint64, error) { return 0, h.s.waitApplied(ctx, 3) })
	h.apply(kvEntry(1, encodePut(1, "a", nil)), kvEntry(2, nil))
	select {
	case r := <-waitC:
		t.Fatalf("waitApplied(3) returned %v at applied index 2", r.err)
	default:
	}
	h.apply(kvEntry(3, encodeDelete(2, "a")))
	if r := kvRecv(t, waitC, "waitApplied(3)"); r.err != nil {
		t.Errorf("waitApplied(3) = %v after index 3 applied, want nil", r.err)
	}
	if err := h.s.waitApplied(kvContext(t), 2); err != nil {
		t.Errorf("waitApplied(2) = %v for an applied index, want nil", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := h.s.waitApplied(ctx, 4); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waitApplied(4) = %v with an expiring context, want DeadlineExceeded", err)
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
				return h.s.propose(ctx, id, data)
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
	m1 := member{ID: 1, PeerURLs: []string{"http://p1"}}
	m2 := member{ID: 2, PeerURLs: []string{"http://p2"}}
	m3 := member{ID: 3, PeerURLs: []string{"http://p3a", "http://p3b"}, ClientURLs: []string{"http://c3"}}
	m1Advertised := member{ID: 1, PeerURLs: m1.PeerURLs, ClientURLs: []string{"http://c1"}}
	steps := []struct {
		name        string
		call        func(context.Context) (uint64, error)
		wantErr     error
		wantMembers []member
		wantRemoved []uint64
	}{
		{"add 3", h.addMember(m3), nil, []member{m3}, nil},
		{"add 1", h.addMember(m1), nil, []member{m1, m3}, nil},
		{"add 2", h.addMember(m2), nil, []member{m1, m2, m3}, nil},
		{"add existing 2", h.addMember(member{ID: 2, PeerURLs: []string{"http://other"}}), ErrMemberExists, []member{m1, m2, m3}, nil},
		{"advertise 1", h.advertise(1, "http://c1"), nil, []member{m1Advertised, m2, m3}, nil},
		{"remove 2", h.removeMember(2), nil, []member{m1Advertised, m3}, []uint64{2}},
		{"remove absent 9", h.removeMember(9), ErrMemberNotFound, []member{m1Advertised, m3}, []uint64{2}},
		{"advertise removed 2", h.advertise(2, "http://c2"), ErrMemberNotFound, []member{m1Advertised, m3}, []uint64{2}},
		{"remove 3", h.removeMember(3), nil, []member{m1Advertised}, []uint64{2, 3}},
		{"re-add 3", h.addMember(m3), nil, []member{m1Advertised, m3}, []uint64{2}},
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
	if m, ok := h.s.lookupMember(3); !ok || !snapMemberEqual(&m, &m3) {
		t.Errorf("lookupMember(3) = %+v, %v, want %+v, true", m, ok, m3)
	}
	if m, ok := h.s.lookupMember(2); ok {
		t.Errorf("lookupMember(2) = %+v, true after removal, want false", m)
	}
}

// TestKVStoreSnapshotRecovery proves that a store loading another's snapshot,
// then the entries after it, ends with the same keys, members, removed ids
// and applied index, and drops whatever it held before, since that is how
// restarted and lagging members catch up.
func TestKVStoreSnapshotRecovery(t *testing.T) {
	src := newKVTest(t)
	src.apply(
		kvAddEntry(t, 1, member{ID: 1, PeerURLs: []string{"http://p1"}}),
		kvAddEntry(t, 2, member{ID: 2, PeerURLs: []string{"http://p2"}}),
		kvAddEntry(t, 3, member{ID: 3, PeerURLs: []string{"http://p3"}}),
		kvRemoveEntry(t, 4, 3),
		kvEntry(5, encodeAdvertise(1, 1, "http://c1")),
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
			h.apply(kvEntry(1, encodePut(1, "stale", []byte("x"))), kvAddEntry(t, 2, member{ID: 7}))
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
			if err := h.s.waitApplied(kvContext(t), snapIndex+3); err != nil {
				t.Errorf("waitApplied(last index) = %v", err)
			}
			h.checkKV(src.kv())
			h.checkMembers(src.s.memberList()...)
			for _, id := range []uint64{1, 2, 3, 7} {
				if got, want := h.s.isIDRemoved(id), src.s.isIDRemoved(id); got != want {
					t.Errorf("isIDRemoved(%d) = %v, want %v", id, got, want)
				}
			}
		})
	}
}

// TestKVStoreCorruptSnapshotStops proves that a snapshot that does not decode
// stops the apply loop with an ErrCorruptEntry error and leaves the state
// untouched, since applying past it would silently diverge from the cluster.
func TestKVStoreCorruptSnapshotStops(t *testing.T) {
	valid := encodeSnapshot(map[uint64]*member{1: {ID: 1}}, nil, treeOf(snapKV(map[string][]byte{"new": []byte("v")})), nil)
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"bad version", append([]byte{snapshotVersion + 1}, valid[1:]...)},
		{"truncated", valid[:len(valid)-1]},
		{"trailing garbage", append(slices.Clone(valid), 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newKVTest(t)
			h.apply(kvEntry(1, encodePut(1, "old", []byte("v"))))
			h.send(&applyBatch{snapshot: kvSnapshot(5, tt.data), applied: make(chan struct{})})
			kvWait(t, h.s.done, "the apply loop to stop")
			if !errors.Is(h.s.err, ErrCorruptEntry) {
				t.Errorf("store error = %v, want one wrapping ErrCorruptEntry", h.s.err)
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
// turns every blocked or new proposal and wait into ErrStopped, since a
// stopping server must not leave handlers hanging.
func TestKVStoreStopWakesProposers(t *testing.T) {
	h := newKVTest(t)
	// One put proposed and waiting to apply, one stuck handing its proposal
	// to a raft node that no longer reads.
	appliedC := h.start(h.put("a", "1"))
	p := kvRecv(t, h.proposeC, "the first proposal")
	sendingC := h.start(h.put("b", "2"))
	waitC := h.start(func(ctx context.Context) (uint64, error) { return 0, h.s.waitApplied(ctx, 1) })

	h.stop()
	for what, c := range map[string]<-chan kvResult{"applying put": appliedC, "proposing put": sendingC, "waitApplied": waitC} {
		if r := kvRecv(t, c, what); !errors.Is(r.err, ErrStopped) {
			t.Errorf("%s returned %v, want ErrStopped", what, r.err)
		}
	}
	if h.s.waiters.IsRegistered(p.requestID) {
		t.Errorf("request %d still has a waiter after the store stopped", p.requestID)
	}
	if h.s.err != nil {
		t.Errorf("store error after a clean stop = %v, want nil", h.s.err)
	}
	if _, err := h.s.delete(kvContext(t), "a", precondition{}, idempotent{}); !errors.Is(err, ErrStopped) {
		t.Errorf("delete after stop = %v, want ErrStopped", err)
	}
}
