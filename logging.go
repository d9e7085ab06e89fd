package main

// Logging: the process's zap logger, and the adapter through which raft
// logs into it. A member's log is written for an operator: info says what
// this member does and what happens to the cluster, warn that something is
// wrong, and debug has the libraries' narration of their own machinery.
//
// Member ids are decimal, as GET /members, DELETE /members/<id> and --id
// spell them. raft formats ids with %x, which differs from decimal from id
// 10 on: an operator who copied "15" from a log line into DELETE
// /members/15 would remove the wrong member. So the raft adapter formats
// ids in decimal.

import (
	"fmt"
	"strings"

	"go.etcd.io/raft/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger logs human-readable lines to stderr, as goreman shows them, one
// line per entry: no stack traces. A line at panic level, from raft (see
// raftLogger) or any of etcd's packages, is written and then the process
// exits with status 1 instead of panicking, so that the reason a member
// stopped is one line, not a goroutine dump.
func newLogger(level zapcore.Level) *zap.Logger {
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.Encoding = "console"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.Sampling = nil
	zc.DisableStacktrace = true
	lg, err := zc.Build(zap.WithPanicHook(zapcore.WriteThenFatal))
	if err != nil {
		return zap.NewNop() // the config above is fixed and valid
	}
	return lg
}

// raftLogger is raft's Logger over zap. etcd has such an adapter in its
// etcdserver package, but importing that pulls in the whole etcd server.
// It differs from a plain zap SugaredLogger in four ways:
//
//   - raft's Info lines are logged at debug. They narrate the protocol
//     (votes cast, terms seen, messages ignored) and, under write load,
//     repeat "entry at index N missing from unstable log; ignoring"
//     hundreds of times a second, which is raft working as designed (see
//     TestRaftLoggerStaleAppendResponse). What an operator needs from them,
//     leader and membership changes, raftkv logs itself: see
//     logLeaderChange and kvstore.applyConfChange.
//   - member ids come out in decimal (raft formats them with %x).
//   - each line names raft's code as its caller, not this adapter.
//   - a panic, raft finding its state impossible, ends the process with
//     one line (see Panicf).
type raftLogger struct {
	lg *zap.SugaredLogger // skips the adapter's frame when naming the caller
	id uint64             // this member, named in the hint of a fatal line
}

// newRaftLogger is the raft logger of member id.
func newRaftLogger(lg *zap.Logger, id uint64) raftLogger {
	return raftLogger{lg: lg.WithOptions(zap.AddCallerSkip(1)).Sugar(), id: id}
}

// Debug to Panic are raft's Logger methods; see raftLogger for how their
// lines differ from zap's, and Panicf.
func (l raftLogger) Debug(v ...any)                   { l.lg.Debug(v...) }
func (l raftLogger) Debugf(format string, v ...any)   { l.lg.Debugf(decimalIDs(format), v...) }
func (l raftLogger) Info(v ...any)                    { l.lg.Debug(v...) }
func (l raftLogger) Infof(format string, v ...any)    { l.lg.Debugf(decimalIDs(format), v...) }
func (l raftLogger) Warning(v ...any)                 { l.lg.Warn(v...) }
func (l raftLogger) Warningf(format string, v ...any) { l.lg.Warnf(decimalIDs(format), v...) }
func (l raftLogger) Error(v ...any)                   { l.lg.Error(v...) }
func (l raftLogger) Errorf(format string, v ...any)   { l.lg.Errorf(decimalIDs(format), v...) }
func (l raftLogger) Fatal(v ...any)                   { l.lg.Fatal(v...) }
func (l raftLogger) Fatalf(format string, v ...any)   { l.lg.Fatal(l.withHint(format, v)) }
func (l raftLogger) Panic(v ...any)                   { l.lg.Panic(v...) }

// Panicf is raft finding its state impossible, most often because of what
// a peer told it: a leader's commit index beyond the end of this member's
// log, for one. Raft cannot go on, and this runs on raft's goroutine, so it
// cannot return either. The line is logged at panic level, which
// newLogger's panic hook turns into an exit with status 1 (a logger without
// the hook, as in tests, panics as raft expects).
//
// Exiting without closing the WAL is as safe as a crash, which the WAL is
// built to survive: every record carries a checksum, raft sends nothing
// that depends on one (an acknowledgement, a vote) before it is fsynced, a
// torn last record is cut off at the next start (readWAL), and a snapshot
// file is written before the WAL record that points at it. Closing would
// only sync records nobody was promised and unlock files, which the kernel
// does for an exiting process.
func (l raftLogger) Panicf(format string, v ...any) { l.lg.Panic(l.withHint(format, v)) }

// raftLogBehind is the panic raft raises when a leader says more is
// committed than this member's log holds. A member only ever acknowledges
// entries it has fsynced, so its log can be behind the cluster's commit
// index only if it lost what it had: its data dir was wiped or replaced
// with an older copy, and it started again with the same id.
const raftLogBehind = "tocommit(%d) is out of range [lastIndex(%d)]. Was the raft log corrupted, truncated, or lost?"

// withHint formats a fatal line, adding what to do about it when raftkv
// knows: for raftLogBehind, restarting cannot help, because the cluster
// counts on entries this member no longer has; the member must come back
// as a new one.
func (l raftLogger) withHint(format string, v []any) string {
	msg := fmt.Sprintf(decimalIDs(format), v...)
	if format == raftLogBehind {
		msg += fmt.Sprintf(": this member's log ends before what the cluster has committed, most likely because its data dir was lost;"+
			" restarting it as member %d cannot fix that. Remove it (curl -X DELETE <client URL of any member>/members/%d)"+
			" and add it back under a new id with a fresh data dir and --join", l.id, l.id)
	}
	return msg
}

// decimalIDs makes a raft format string print member ids in decimal: raft
// formats ids, and only ids, with %x.
func decimalIDs(format string) string { return strings.ReplaceAll(format, "%x", "%d") }

// logLeaderChange logs, when rd changes who this member believes leads,
// the new leader and the term. Raft's own lines about it are at debug (see
// raftLogger); this is the one an operator reads.
func (rc *raftNode) logLeaderChange(rd raft.Ready) {
	if rd.SoftState == nil {
		return
	}
	before, now := rc.leader.Load(), rd.SoftState.Lead
	if before == now {
		return
	}
	term := rc.node.Status().GetTerm()
	switch now {
	case rc.id:
		rc.lg.Info("became leader", zap.Uint64("term", term))
	case raft.None:
		rc.lg.Info("lost the leader", zap.Uint64("former-leader", before), zap.Uint64("term", term))
	default:
		rc.lg.Info("following leader", zap.Uint64("leader", now), zap.Uint64("term", term))
	}
}
