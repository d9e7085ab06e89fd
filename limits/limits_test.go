package limits

import (
	"testing"
	"time"
)

// TestConnLimitsDefaults proves zero connection bounds take their defaults, and set ones are kept.
func TestConnLimitsDefaults(t *testing.T) {
	var l Conn
	if got, want := l.Client(), (Conn{Header: 10 * time.Second, Body: 30 * time.Second, Idle: time.Minute}); got != want {
		t.Errorf("default client limits %+v, want %+v", got, want)
	}
	if got, want := l.Peer(), (Conn{Header: 5 * time.Second, Body: 5 * time.Minute, Idle: 5 * time.Second}); got != want {
		t.Errorf("default peer limits %+v, want %+v", got, want)
	}
	l = Conn{Body: time.Second}
	if got := l.Client(); got.Body != time.Second || got.Header != 10*time.Second {
		t.Errorf("client limits with body set to 1s: %+v", got)
	}
	if got := (Conn{Header: time.Millisecond, Idle: time.Hour}).Peer(); got != (Conn{Header: time.Millisecond, Body: 5 * time.Minute, Idle: time.Hour}) {
		t.Errorf("peer limits with header and idle set: %+v", got)
	}
	set := Conn{Header: time.Millisecond, Body: 2 * time.Millisecond, Idle: 3 * time.Millisecond}
	if got := set.Client(); got != set {
		t.Errorf("client limits with every bound set: %+v, want %+v", got, set)
	}
	if got := set.Peer(); got != set {
		t.Errorf("peer limits with every bound set: %+v, want %+v", got, set)
	}
}
