package logging

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// observedLogger logs everything, callers included, to the returned
// observer.
func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core, zap.AddCaller()), logs
}

// The raft node's settings (electionTicks, heartbeatTicks and
// maxInflightAppends in the spine's raft.go), copied: what raft does
// below depends on them.
const (
	electionTicks      = 10
	heartbeatTicks     = 1
	maxInflightAppends = 2
)

// newTestRawNode is a raft RawNode for member id of a three-voter cluster
// whose log starts after a snapshot at index (term 1), with raftkv's
// settings: asynchronous storage writes and the RaftLogger adapter.
func newTestRawNode(t *testing.T, id, index uint64, lg *zap.Logger) (*raft.RawNode, *raft.MemoryStorage) {
	t.Helper()
	ms := raft.NewMemoryStorage()
	if err := ms.ApplySnapshot(&raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index: new(index), Term: new(uint64(1)), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}},
	}}); err != nil {
		t.Fatal(err)
	}
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                 id,
		ElectionTick:       electionTicks,
		HeartbeatTick:      heartbeatTicks,
		Storage:            ms,
		MaxSizePerMsg:      1 << 20,
		MaxInflightMsgs:    maxInflightAppends,
		AsyncStorageWrites: true,
		Logger:             NewRaftLogger(lg, id),
	})
	if err != nil {
		t.Fatal(err)
	}
	return rn, ms
}

// storageMessages is what a Ready asks of the append thread, in order;
// what it asks of the apply thread has its responses stepped at once.
func storageMessages(t *testing.T, rn *raft.RawNode) []*raftpb.Message {
	t.Helper()
	var appends []*raftpb.Message
	for _, m := range rn.Ready().Messages {
		switch m.GetTo() {
		case raft.LocalAppendThread:
			appends = append(appends, m)
		case raft.LocalApplyThread:
			stepLocal(t, rn, m.GetResponses())
		}
	}
	return appends
}

// saveAndRespond is the raft node's serveAppends for one
// MsgStorageAppend: make it durable, then deliver its responses to this
// member, each once, in order.
func saveAndRespond(t *testing.T, rn *raft.RawNode, ms *raft.MemoryStorage, m *raftpb.Message) {
	t.Helper()
	if hs := appendHardState(m); hs != nil {
		if err := ms.SetHardState(hs); err != nil {
			t.Fatal(err)
		}
	}
	if err := ms.Append(m.GetEntries()); err != nil {
		t.Fatal(err)
	}
	stepLocal(t, rn, m.GetResponses())
}

// stepLocal steps the responses addressed to this member; those to peers
// are dropped, the peers being played by the test.
func stepLocal(t *testing.T, rn *raft.RawNode, responses []*raftpb.Message) {
	t.Helper()
	for _, r := range responses {
		if r.GetTo() != rn.Status().ID {
			continue
		}
		if err := rn.Step(r); err != nil {
			t.Fatalf("step %s: %v", r.GetType(), err)
		}
	}
}

// appendHardState is the hard state a MsgStorageAppend carries, if any,
// as the raft node's appendHardState reads it.
func appendHardState(m *raftpb.Message) *raftpb.HardState {
	if m.Term == nil {
		return nil
	}
	return &raftpb.HardState{Term: m.Term, Vote: m.Vote, Commit: m.Commit}
}

// appendRespIndex is the index the MsgStorageAppendResp among m's
// responses says is stable, or 0.
func appendRespIndex(m *raftpb.Message) uint64 {
	for _, r := range m.GetResponses() {
		if r.GetType() == raftpb.MsgStorageAppendResp {
			return r.GetIndex()
		}
	}
	return 0
}

// TestRaftLoggerStaleAppendResponse shows where raft's "entry at index N
// missing from unstable log; ignoring" comes from, which a leader under
// write load logs hundreds of times a second, and that the adapter logs it
// at debug. With asynchronous storage writes raft attaches to every
// MsgStorageAppend, while any entries are still being written, a response
// saying its whole log so far is stable, even to one that carries no
// entries, only a new commit index. A leader's commit index moves when
// followers acknowledge, between its own appends, so such appends follow
// one another with the same last index: the first response makes the
// entries stable, and the next finds them gone from the unstable log. That
// is raft's design (see newStorageAppendRespMsg in raft's rawnode.go), not
// responses delivered twice or out of order: here each is delivered once,
// in order, as the raft node's serveAppends does, and raft carries on.
func TestRaftLoggerStaleAppendResponse(t *testing.T) {
	lg, logs := observedLogger()
	rn, ms := newTestRawNode(t, 1, 1, lg)

	// Member 1 campaigns, saves its vote and wins with member 2's.
	if err := rn.Campaign(); err != nil {
		t.Fatal(err)
	}
	for _, m := range storageMessages(t, rn) {
		saveAndRespond(t, rn, ms, m)
	}
	term := rn.Status().GetTerm()
	if err := rn.Step(&raftpb.Message{Type: raftpb.MsgVoteResp.Enum(), From: new(uint64(2)), To: new(uint64(1)), Term: new(term)}); err != nil {
		t.Fatal(err)
	}
	if st := rn.Status(); st.RaftState != raft.StateLeader {
		t.Fatalf("member 1 is %s, want leader", st.RaftState)
	}

	// The leader appends the empty entry of its term (index 2): the first
	// append, whose write takes a while.
	first := storageMessages(t, rn)
	if len(first) != 1 || len(first[0].GetEntries()) != 1 || appendRespIndex(first[0]) != 2 {
		t.Fatalf("first append: %v, want one with entry 2 and a response for index 2", first)
	}
	// Meanwhile both followers acknowledge it: it commits, and raft sends
	// the new commit index to the append thread, with no entries.
	for _, from := range []uint64{2, 3} {
		if err := rn.Step(&raftpb.Message{Type: raftpb.MsgAppResp.Enum(), From: new(from), To: new(uint64(1)), Term: new(term), Index: new(uint64(2))}); err != nil {
			t.Fatal(err)
		}
	}
	second := storageMessages(t, rn)
	if len(second) != 1 || len(second[0].GetEntries()) != 0 || second[0].GetCommit() != 2 {
		t.Fatalf("second append: %v, want commit index 2 and no entries", second)
	}
	if got := appendRespIndex(second[0]); got != 2 {
		t.Fatalf("second append's response says index %d is stable, want 2, as the first's", got)
	}

	saveAndRespond(t, rn, ms, first[0])
	if n := logs.FilterMessage("entry at index 2 missing from unstable log; ignoring").Len(); n != 0 {
		t.Fatalf("logged %d times after the first response, want 0", n)
	}
	saveAndRespond(t, rn, ms, second[0])
	stale := logs.FilterMessage("entry at index 2 missing from unstable log; ignoring").All()
	if len(stale) != 1 {
		t.Fatalf("logged %d times after the second response, want once", len(stale))
	}
	if stale[0].Level != zapcore.DebugLevel {
		t.Errorf("logged at %s, want debug", stale[0].Level)
	}
	if file := stale[0].Caller.File; filepath.Base(file) != "log_unstable.go" {
		t.Errorf("caller %s, want raft's log_unstable.go", file)
	}

	// Raft carries on: the stable entry is handed out to apply.
	rd := rn.Ready()
	if len(rd.CommittedEntries) != 1 || rd.CommittedEntries[0].GetIndex() != 2 {
		t.Errorf("committed entries after both responses: %v, want entry 2", rd.CommittedEntries)
	}
	if info := logs.FilterLevelExact(zapcore.InfoLevel).Len(); info != 0 {
		t.Errorf("%d raft lines at info, want none: %v", info, logs.FilterLevelExact(zapcore.InfoLevel).All())
	}
}

// TestRaftLoggerLines checks how each of raft's Logger methods comes out:
// at the level an operator needs, with member ids in decimal, and naming
// the code that called it (here, this test) rather than the adapter.
func TestRaftLoggerLines(t *testing.T) {
	lg, logs := observedLogger()
	l := NewRaftLogger(lg, 1)
	for _, tc := range []struct {
		log   func()
		level zapcore.Level
		want  string
	}{
		{func() { l.Debug("a", 21) }, zapcore.DebugLevel, "a21"},
		{func() { l.Debugf("%x sent to %x", 21, 2) }, zapcore.DebugLevel, "21 sent to 2"},
		{func() { l.Info("b") }, zapcore.DebugLevel, "b"},
		{func() { l.Infof("%x became leader at term %d", 21, 5) }, zapcore.DebugLevel, "21 became leader at term 5"},
		{func() { l.Warning("c") }, zapcore.WarnLevel, "c"},
		{func() { l.Warningf("%x stepped down to follower since quorum is not active", 21) }, zapcore.WarnLevel, "21 stepped down to follower since quorum is not active"},
		{func() { l.Error("d") }, zapcore.ErrorLevel, "d"},
		{func() { l.Errorf("%x invalid format of MsgReadIndexResp from %x", 21, 3) }, zapcore.ErrorLevel, "21 invalid format of MsgReadIndexResp from 3"},
	} {
		logs.TakeAll()
		tc.log()
		got := logs.All()
		if len(got) != 1 {
			t.Fatalf("%q: %d lines, want 1", tc.want, len(got))
		}
		e := got[0]
		if e.Message != tc.want || e.Level != tc.level {
			t.Errorf("got %s %q, want %s %q", e.Level, e.Message, tc.level, tc.want)
		}
		if file := filepath.Base(e.Caller.File); file != "logging_test.go" {
			t.Errorf("%q: caller %s, want logging_test.go", tc.want, e.Caller.File)
		}
	}
}

// TestRaftLoggerLogBehind shows what a member whose data dir was lost says
// when a leader tells it a commit index beyond its log: raft panics, and
// the line says why and what to do. (A logger from New then exits with
// status 1 instead; see TestE2ELogs.)
func TestRaftLoggerLogBehind(t *testing.T) {
	lg, logs := observedLogger()
	rn, _ := newTestRawNode(t, 2, 3, lg)
	heartbeat := &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: new(uint64(1)), To: new(uint64(2)), Term: new(uint64(2)), Commit: new(uint64(34))}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("raft did not panic at a commit index beyond its log")
			}
		}()
		rn.Step(heartbeat)
	}()
	panics := logs.FilterLevelExact(zapcore.PanicLevel).All()
	if len(panics) != 1 {
		t.Fatalf("%d lines at panic level, want 1: %v", len(panics), logs.All())
	}
	msg := panics[0].Message
	for _, want := range []string{
		fmt.Sprintf(raftLogBehind, 34, 3),
		"its data dir was lost",
		"curl -X DELETE <client URL of any member>/members/2",
		"new id with a fresh data dir and --join",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("line %q does not say %q", msg, want)
		}
	}
	if file := filepath.Base(panics[0].Caller.File); file != "log.go" {
		t.Errorf("caller %s, want raft's log.go", panics[0].Caller.File)
	}
}

// TestTransportLogger checks the levels rafthttp's lines come out at and
// that member ids in its fields are decimal.
func TestTransportLogger(t *testing.T) {
	lg, logs := observedLogger()
	tl := NewTransportLogger(lg)
	refused := errors.New("failed to dial 15 on stream Message (dial tcp 127.0.0.1:1: connect: connection refused)")
	canceled := errors.New("failed to read 15 on stream MsgApp v2 (context canceled)")
	for _, tc := range []struct {
		level zapcore.Level
		msg   string
		field zap.Field
		want  zapcore.Level
	}{
		{zapcore.InfoLevel, "started stream writer with remote peer", zap.String("remote-peer-id", "15"), zapcore.DebugLevel},
		{zapcore.InfoLevel, "established TCP streaming connection with remote peer", zap.String("remote-peer-id", "15"), zapcore.DebugLevel},
		{zapcore.InfoLevel, "peer became active", zap.String("peer-id", "15"), zapcore.InfoLevel},
		{zapcore.InfoLevel, "sending database snapshot", zap.String("remote-peer-id", "15"), zapcore.InfoLevel},
		{zapcore.WarnLevel, "lost TCP streaming connection with remote peer", zap.String("remote-peer-id", "15"), zapcore.DebugLevel},
		{zapcore.WarnLevel, "closed TCP streaming connection with remote peer", zap.String("remote-peer-id", "15"), zapcore.DebugLevel},
		{zapcore.WarnLevel, "prober detected unhealthy status", zap.String("remote-peer-id", "15"), zapcore.DebugLevel},
		{zapcore.WarnLevel, "peer became inactive (message send to peer failed)", zap.Error(refused), zapcore.WarnLevel},
		{zapcore.WarnLevel, "peer became inactive (message send to peer failed)", zap.Error(canceled), zapcore.DebugLevel},
		{zapcore.WarnLevel, "request sent was ignored by remote peer due to cluster ID mismatch", zap.String("remote-peer-id", "15"), zapcore.WarnLevel},
		{zapcore.ErrorLevel, "request sent was ignored by peer", zap.String("remote-peer-id", "15"), zapcore.ErrorLevel},
	} {
		logs.TakeAll()
		if ce := tl.Check(tc.level, tc.msg); ce != nil {
			ce.Write(tc.field, zap.String("local-member-id", "1"))
		}
		got := logs.All()
		if len(got) != 1 || got[0].Level != tc.want {
			t.Errorf("%s %q (%v): got %v, want one line at %s", tc.level, tc.msg, tc.field.Interface, got, tc.want)
			continue
		}
		fields := got[0].ContextMap()
		if id, ok := fields[tc.field.Key]; tc.field.Type == zapcore.StringType && (!ok || id != uint64(21)) {
			t.Errorf("%q: %s = %v (%T), want 21", tc.msg, tc.field.Key, id, id)
		}
		if fields["local-member-id"] != uint64(1) {
			t.Errorf("%q: local-member-id = %v, want 1", tc.msg, fields["local-member-id"])
		}
	}

	// A logger with fields of its own relevels alike.
	logs.TakeAll()
	tl.With(zap.String("local-member-id", "1")).Warn("lost TCP streaming connection with remote peer", zap.String("remote-peer-id", "15"))
	if got := logs.All(); len(got) != 1 || got[0].Level != zapcore.DebugLevel || got[0].ContextMap()["remote-peer-id"] != uint64(21) {
		t.Errorf("a child logger's line: %v, want one at debug with remote-peer-id 21", got)
	}

	// At info, the lines relevelled to debug are not written at all.
	core, infoLogs := observer.New(zapcore.InfoLevel)
	NewTransportLogger(zap.New(core)).Warn("lost TCP streaming connection with remote peer")
	if infoLogs.Len() != 0 {
		t.Errorf("an info logger wrote %v", infoLogs.All())
	}
}

// TestAnswerLogger checks that the answer logger writes the first
// answersPerSecond lines of each message in a second, and drops the rest,
// each message counted on its own.
func TestAnswerLogger(t *testing.T) {
	lg, logs := observedLogger()
	al := NewAnswerLogger(lg)
	for range 3 * answersPerSecond {
		al.Warn("answered 503 Service Unavailable")
	}
	al.Warn("answered 504 Gateway Timeout")
	if n := logs.FilterMessage("answered 503 Service Unavailable").Len(); n != answersPerSecond {
		t.Errorf("%d lines of %d within a second, want %d", n, 3*answersPerSecond, answersPerSecond)
	}
	if n := logs.FilterMessage("answered 504 Gateway Timeout").Len(); n != 1 {
		t.Errorf("%d lines of another message after the first was dropped, want 1", n)
	}
}
