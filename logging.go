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
	"strings"

	"go.etcd.io/raft/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger logs human-readable lines to stderr, as goreman shows them.
func newLogger(level zapcore.Level) *zap.Logger {
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.Encoding = "console"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.Sampling = nil
	lg, err := zc.Build()
	if err != nil {
		return zap.NewNop() // the config above is fixed and valid
	}
	return lg
}

// raftLogger is raft's Logger over zap. etcd has such an adapter in its
// etcdserver package, but importing that pulls in the whole etcd server.
// It differs from a plain zap SugaredLogger in three ways:
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
type raftLogger struct {
	lg *zap.SugaredLogger // skips the adapter's frame when naming the caller
}

// newRaftLogger is the raft logger of member id.
func newRaftLogger(lg *zap.Logger, id uint64) raftLogger {
	return raftLogger{lg: lg.WithOptions(zap.AddCallerSkip(1)).Sugar()}
}

// Debug to Panicf are raft's Logger methods; see raftLogger for how their
// lines differ from zap's.
func (l raftLogger) Debug(v ...any)                   { l.lg.Debug(v...) }
func (l raftLogger) Debugf(format string, v ...any)   { l.lg.Debugf(decimalIDs(format), v...) }
func (l raftLogger) Info(v ...any)                    { l.lg.Debug(v...) }
func (l raftLogger) Infof(format string, v ...any)    { l.lg.Debugf(decimalIDs(format), v...) }
func (l raftLogger) Warning(v ...any)                 { l.lg.Warn(v...) }
func (l raftLogger) Warningf(format string, v ...any) { l.lg.Warnf(decimalIDs(format), v...) }
func (l raftLogger) Error(v ...any)                   { l.lg.Error(v...) }
func (l raftLogger) Errorf(format string, v ...any)   { l.lg.Errorf(decimalIDs(format), v...) }
func (l raftLogger) Fatal(v ...any)                   { l.lg.Fatal(v...) }
func (l raftLogger) Fatalf(format string, v ...any)   { l.lg.Fatalf(decimalIDs(format), v...) }
func (l raftLogger) Panic(v ...any)                   { l.lg.Panic(v...) }
func (l raftLogger) Panicf(format string, v ...any)   { l.lg.Panicf(decimalIDs(format), v...) }

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
