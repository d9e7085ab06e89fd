// Package logging is the process's zap logger, and the adapters through
// which raft and etcd's packages log into it: main makes the process's
// logger (New); the raft node gives raft, rafthttp and the purging of old
// files theirs (NewRaftLogger, NewTransportLogger, NewPurgeLogger), and
// startServer the client API's 5xx answers (NewAnswerLogger). A member's log is written for an
// operator:
//
//   - info says what this member does and what happens to the cluster: it
//     starts (id, URLs, data dir, what it replayed), serves, sees the leader
//     change, applies a membership change, saves or loads a snapshot, and
//     finds a peer unreachable or back;
//   - warn says something is wrong, or that clients got a 5xx answer;
//   - debug has the libraries' narration of their own machinery.
//
// Member ids are decimal everywhere, as GET /members, DELETE /members/<id>
// and --id spell them. raft formats ids with %x and rafthttp logs them in
// hex, which differs from decimal from id 10 on: an operator who copied
// "15" from a log line into DELETE /members/15 would remove the wrong
// member. So the raft adapter formats ids in decimal, and the rafthttp one
// rewrites its id fields; the only hex left is inside the text of some of
// rafthttp's error strings, such as "failed to dial 15 on stream Message",
// where the line's peer-id field names the same member in decimal.
package logging

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New logs human-readable lines to stderr, as goreman shows them, one
// line per entry: no stack traces. A line at panic level, from raft (see
// RaftLogger) or any of etcd's packages, is written and then the process
// exits with status 1 instead of panicking, so that the reason a member
// stopped is one line, not a goroutine dump.
func New(level zapcore.Level) *zap.Logger {
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

// RaftLogger is raft's Logger over zap. etcd has such an adapter in its
// etcdserver package, but importing that pulls in the whole etcd server.
// It differs from a plain zap SugaredLogger in four ways:
//
//   - raft's Info lines are logged at debug. They narrate the protocol
//     (votes cast, terms seen, messages ignored) and, under write load,
//     repeat "entry at index N missing from unstable log; ignoring"
//     hundreds of times a second, which is raft working as designed (see
//     TestRaftLoggerStaleAppendResponse). What an operator needs from them,
//     leader and membership changes, raftkv logs itself: see
//     the raft node's trackLeader and the kvstore's conf change lines.
//   - member ids come out in decimal (raft formats them with %x).
//   - each line names raft's code as its caller, not this adapter.
//   - a panic, raft finding its state impossible, ends the process with
//     one line (see Panicf).
type RaftLogger struct {
	lg *zap.SugaredLogger // skips the adapter's frame when naming the caller
	id uint64             // this member, named in the hint of a fatal line
}

// NewRaftLogger is the raft logger of member id.
func NewRaftLogger(lg *zap.Logger, id uint64) RaftLogger {
	return RaftLogger{lg: lg.WithOptions(zap.AddCallerSkip(1)).Sugar(), id: id}
}

// Debug to Panic are raft's Logger methods; see RaftLogger for how their
// lines differ from zap's, and Panicf.
func (l RaftLogger) Debug(v ...any)                   { l.lg.Debug(v...) }
func (l RaftLogger) Debugf(format string, v ...any)   { l.debugf(format, v) }
func (l RaftLogger) Info(v ...any)                    { l.lg.Debug(v...) }
func (l RaftLogger) Infof(format string, v ...any)    { l.debugf(format, v) }
func (l RaftLogger) Warning(v ...any)                 { l.lg.Warn(v...) }
func (l RaftLogger) Warningf(format string, v ...any) { l.lg.Warnf(decimalIDs(format), v...) }
func (l RaftLogger) Error(v ...any)                   { l.lg.Error(v...) }
func (l RaftLogger) Errorf(format string, v ...any)   { l.lg.Errorf(decimalIDs(format), v...) }
func (l RaftLogger) Fatal(v ...any)                   { l.lg.Fatal(v...) }
func (l RaftLogger) Fatalf(format string, v ...any)   { l.lg.Fatal(l.withHint(format, v)) }
func (l RaftLogger) Panic(v ...any)                   { l.lg.Panic(v...) }

// Panicf is raft finding its state impossible, most often because of what
// a peer told it: a leader's commit index beyond the end of this member's
// log, for one. Raft cannot go on, and this runs on raft's goroutine, so it
// cannot return either. The line is logged at panic level, which
// New's panic hook turns into an exit with status 1 (a logger without
// the hook, as in tests, panics as raft expects).
//
// Exiting without closing the WAL is as safe as a crash, which the WAL is
// built to survive: every record carries a checksum, raft sends nothing
// that depends on one (an acknowledgement, a vote) before it is fsynced, a
// torn last record is cut off at the next start (the raft node's readWAL), and a snapshot
// file is written before the WAL record that points at it. Closing would
// only sync records nobody was promised and unlock files, which the kernel
// does for an exiting process.
func (l RaftLogger) Panicf(format string, v ...any) { l.lg.Panic(l.withHint(format, v)) }

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
func (l RaftLogger) withHint(format string, v []any) string {
	msg := fmt.Sprintf(decimalIDs(format), v...)
	if format == raftLogBehind {
		msg += fmt.Sprintf(": this member's log ends before what the cluster has committed, most likely because its data dir was lost;"+
			" restarting it as member %d cannot fix that. Remove it (curl -X DELETE <client URL of any member>/members/%d)"+
			" and add it back under a new id with a fresh data dir and --join", l.id, l.id)
	}
	return msg
}

// debugf logs a line of raft's at debug. Raft logs some of its Info lines
// hundreds of times a second, so its format is rewritten only when the
// line is written. It is one frame deeper than the other methods.
func (l RaftLogger) debugf(format string, v []any) {
	if l.lg.Level().Enabled(zapcore.DebugLevel) {
		l.lg.WithOptions(zap.AddCallerSkip(1)).Debugf(decimalIDs(format), v...)
	}
}

// decimalIDs makes a raft format string print member ids in decimal: raft
// formats ids, and only ids, with %x.
func decimalIDs(format string) string { return strings.ReplaceAll(format, "%x", "%d") }

// NewTransportLogger is the logger rafthttp logs through. rafthttp narrates
// each stream and pipeline to each peer: a start logs a dozen lines per
// peer, and a peer that stops costs every member half a dozen warnings and
// two more every five seconds while it is down. What an operator needs,
// that a peer became unreachable and that it is back, rafthttp also says,
// once each ("peer became inactive", "peer became active"); transportLevel
// keeps those and rafthttp's warnings of real trouble (a cluster ID
// mismatch, dropped messages, a removed member still calling), and logs
// the rest at debug. Id fields are rewritten in decimal.
func NewTransportLogger(lg *zap.Logger) *zap.Logger {
	return lg.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return relevelCore{Core: c, level: transportLevel, decimalIDs: true}
	}))
}

// transportLevel is the level a rafthttp line is logged at.
func transportLevel(e zapcore.Entry, fields []zapcore.Field) zapcore.Level {
	switch e.Message {
	case "peer became active",
		"sending database snapshot", "sent database snapshot",
		"receiving database snapshot", "received and saved database snapshot":
		return e.Level
	case "peer became inactive (message send to peer failed)":
		if closedHere(fields) || peerStarting(fields) {
			return zapcore.DebugLevel
		}
		return e.Level
	case "lost TCP streaming connection with remote peer",
		"closed TCP streaming connection with remote peer",
		"prober detected unhealthy status":
		// The peer's state, once, is in "peer became inactive".
		return zapcore.DebugLevel
	}
	if e.Level == zapcore.InfoLevel {
		return zapcore.DebugLevel
	}
	return e.Level
}

// closedHere reports whether a "peer became inactive" line is about a
// stream this member closed itself: rafthttp cancels a stream's context
// only when it stops the transport (the member is stopping) or the peer (it
// was removed), and the line then says nothing about the peer.
func closedHere(fields []zapcore.Field) bool {
	for _, f := range fields {
		if err, ok := f.Interface.(error); ok && f.Type == zapcore.ErrorType &&
			strings.HasSuffix(err.Error(), "("+context.Canceled.Error()+")") {
			return true
		}
	}
	return false
}

// peerStarting reports whether a "peer became inactive" line is about a
// peer that answered 503: a member answers every rafthttp request so until
// its raft runs (see bootstrap.PeerHandler), which is a peer starting, not trouble.
func peerStarting(fields []zapcore.Field) bool {
	for _, f := range fields {
		if err, ok := f.Interface.(error); ok && f.Type == zapcore.ErrorType &&
			strings.Contains(err.Error(), "unhandled http status 503") {
			return true
		}
	}
	return false
}

// NewPurgeLogger is the logger etcd's fileutil.PurgeFile logs through: that
// it started, and each old file it deletes, is housekeeping, at debug. Its
// warnings stay warnings.
func NewPurgeLogger(lg *zap.Logger) *zap.Logger {
	return lg.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return relevelCore{Core: c, level: infoAsDebug}
	}))
}

// infoAsDebug logs info lines at debug and the rest as they are.
func infoAsDebug(e zapcore.Entry, _ []zapcore.Field) zapcore.Level {
	if e.Level == zapcore.InfoLevel {
		return zapcore.DebugLevel
	}
	return e.Level
}

// relevelCore logs a library's lines at the level its level function
// gives, which may be lower than the library chose, never higher. Errors
// and worse keep their level: they may end the process (see New).
// Lines are checked at the library's level and decided on in Write, where
// their fields are known.
type relevelCore struct {
	zapcore.Core
	level      func(zapcore.Entry, []zapcore.Field) zapcore.Level
	decimalIDs bool // rewrite hex member-id fields (see isTransportIDField) in decimal
}

// With keeps the relevelling for a logger with added fields.
func (c relevelCore) With(fields []zapcore.Field) zapcore.Core {
	return relevelCore{Core: c.Core.With(fields), level: c.level, decimalIDs: c.decimalIDs}
}

// Check lets Write decide on every line the wrapped core would log.
func (c relevelCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

// Write logs e at its new level, if that level is enabled.
func (c relevelCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	if e.Level <= zapcore.WarnLevel {
		e.Level = min(e.Level, c.level(e, fields))
	}
	if !c.Enabled(e.Level) {
		return nil
	}
	if c.decimalIDs {
		fields = decimalIDFields(fields)
	}
	return c.Core.Write(e, fields)
}

// isTransportIDField reports whether rafthttp logs a member id in the
// field named key.
func isTransportIDField(key string) bool {
	switch key {
	case "peer-id", "local-member-id", "remote-peer-id", "remote-peer-id-stream-handler",
		"remote-peer-id-from", "remote-peer-id-header", "remote-snapshot-sender-id",
		"removed-remote-peer-id", "updated-remote-peer-id", "unknown-target-peer-id",
		"from", "to":
		return true
	}
	return false
}

// decimalIDFields is fields with each hex member id rewritten as a number,
// as raftkv logs them. The caller's slice is left as it is.
func decimalIDFields(fields []zapcore.Field) []zapcore.Field {
	var out []zapcore.Field
	for i, f := range fields {
		if f.Type != zapcore.StringType || !isTransportIDField(f.Key) {
			continue
		}
		id, err := strconv.ParseUint(f.String, 16, 64)
		if err != nil {
			continue
		}
		if out == nil {
			out = append([]zapcore.Field(nil), fields...)
		}
		out[i] = zap.Uint64(f.Key, id)
	}
	if out == nil {
		return fields
	}
	return out
}

// answersPerSecond bounds how many lines a second NewAnswerLogger writes
// for each status code.
const answersPerSecond = 5

// NewAnswerLogger is the logger the HTTP API reports its 5xx answers
// through. Every 5xx is worth a warning, but while there is no leader every
// request gets one: the first answersPerSecond lines each second for each
// status say what is happening, and the rest are dropped.
func NewAnswerLogger(lg *zap.Logger) *zap.Logger {
	return lg.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Second, answersPerSecond, 0)
	}))
}
