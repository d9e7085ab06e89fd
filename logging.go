package main

import (
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

// raftLogger lets raft log through zap. etcd has the same adapter in its
// etcdserver package, but importing that pulls in the whole etcd server;
// zap's SugaredLogger already has every method raft wants but these two.
type raftLogger struct{ *zap.SugaredLogger }

func (l raftLogger) Warning(args ...any)                 { l.Warn(args...) }
func (l raftLogger) Warningf(format string, args ...any) { l.Warnf(format, args...) }
