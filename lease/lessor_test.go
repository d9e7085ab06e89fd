package lease

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"

	"raftkv/idempotency"
)

// fakeServer is a member for a Lessor: its table, applied at once, and
// whether it leads.
type fakeServer struct {
	t       *testing.T
	table   *Table
	term    uint64
	leading bool
	nextID  uint64
	windows int      // window entries applied
	expired []uint64 // leases expired
	done    chan struct{}
}

func newFakeServer(t *testing.T, self Origin, clock *fakeClock) *fakeServer {
	return &fakeServer{t: t, table: NewTable(self, clock.now), term: 1, leading: true, done: make(chan struct{})}
}

func (s *fakeServer) Leading() (uint64, bool) { return s.term, s.leading }
func (s *fakeServer) LeaderReady(context.Context) (uint64, error) {
	if !s.leading {
		return 0, errors.New("not leading")
	}
	return s.term, nil
}
func (s *fakeServer) ConfirmLeadership(context.Context) error { return nil }
func (s *fakeServer) Lease(id uint64) (Info, bool)            { return s.table.Get(id) }
func (s *fakeServer) Leases() []Info                          { return s.table.List() }
func (s *fakeServer) Done() <-chan struct{}                   { return s.done }

// ProposeLease applies the command at once, as a one-member cluster would.
func (s *fakeServer) ProposeLease(_ context.Context, cmd Command) (idempotency.Answer, bool, error) {
	s.nextID++
	switch cmd.Kind {
	case Window:
		s.table.Window(cmd.Origin, cmd.IDs)
		s.windows++
	case Revoke:
		if !cmd.Expired {
			s.t.Fatalf("the lessor revoked lease %d, not expired", cmd.ID)
		}
		if _, err := s.table.Revoke(cmd.ID); err != nil {
			return idempotency.Answer{}, false, err
		}
		s.expired = append(s.expired, cmd.ID)
	default:
		s.t.Fatalf("the lessor proposed %+v", cmd)
	}
	return idempotency.Answer{Index: s.nextID}, false, nil
}

// expiries runs one scan as the lessor's loop does and proposes what it
// finds, synchronously; it returns the leases it expired.
func expiries(l *Lessor, s *fakeServer) []uint64 {
	before := len(s.expired)
	windows, expire := l.scan(s.term, s.Leases())
	if len(windows) > 0 {
		l.proposeWindows(windows)
	}
	if len(expire) > 0 {
		l.expire(s.term, expire)
	}
	return s.expired[before:]
}

// TestLessorKeepAlive: the first keepalive commits a window, the next ones
// within it are answered from memory, and a keepalive after the window
// commits another.
func TestLessorKeepAlive(t *testing.T) {
	clock := newFakeClock()
	self := Origin{Member: 1, Nonce: 1}
	s := newFakeServer(t, self, clock)
	l := NewLessor(s, self, clock.now, 100*time.Millisecond, zap.NewNop(), nil)
	s.table.Grant(5, 8*time.Second)
	ctx := context.Background()
	if _, err := l.KeepAlive(ctx, 5); err != nil || s.windows != 1 {
		t.Fatalf("first keepalive: %v, %d windows; want a window committed", err, s.windows)
	}
	clock.advance(3 * time.Second) // inside the window (half the TTL: 4s)
	if _, err := l.KeepAlive(ctx, 5); err != nil || s.windows != 1 {
		t.Fatalf("keepalive inside the window: %v, %d windows; want none proposed", err, s.windows)
	}
	clock.advance(2 * time.Second) // 5s: past the window
	if _, err := l.KeepAlive(ctx, 5); err != nil || s.windows != 2 {
		t.Fatalf("keepalive after the window: %v, %d windows; want a second one", err, s.windows)
	}
	if _, err := l.KeepAlive(ctx, 6); !errors.Is(err, ErrNotFound) {
		t.Fatalf("keepalive of no lease: %v, want ErrNotFound", err)
	}
	s.leading = false
	if _, err := l.KeepAlive(ctx, 5); err == nil {
		t.Fatal("a member that does not lead answered a keepalive")
	}
}

// TestLessorExpiresOnTime: on a stable leader, a lease ends after its TTL
// since its last keepalive, plus the slack, and not a scan before; a lease
// marked expiring refuses keepalives.
func TestLessorExpiresOnTime(t *testing.T) {
	clock := newFakeClock()
	self := Origin{Member: 1, Nonce: 1}
	s := newFakeServer(t, self, clock)
	l := NewLessor(s, self, clock.now, 100*time.Millisecond, zap.NewNop(), nil)
	ttl := 4 * time.Second
	s.table.Grant(5, ttl)
	ctx := context.Background()
	var last time.Time
	for range 6 { // a keepalive every TTL/3, with the scans between
		if _, err := l.KeepAlive(ctx, 5); err != nil {
			t.Fatal(err)
		}
		last = clock.now()
		for range 13 {
			clock.advance(100 * time.Millisecond)
			if got := expiries(l, s); len(got) > 0 {
				t.Fatalf("expired %v while renewed every TTL/3", got)
			}
		}
	}
	for {
		clock.advance(100 * time.Millisecond)
		got := expiries(l, s)
		since := clock.now().Sub(last)
		if len(got) == 0 {
			if since > ttl+time.Second {
				t.Fatalf("not expired %v after the last keepalive (TTL %v)", since, ttl)
			}
			continue
		}
		if since < ttl {
			t.Fatalf("expired %v after the last keepalive, before its TTL %v", since, ttl)
		}
		break
	}
	// Windows the lessor proposed after the last keepalive did not hold
	// the lease on its own member: it knows every keepalive it answered.
}

// TestLessorNewLeader: a member that becomes leader after another answered
// keepalives from memory never ends the lease before the TTL since the
// last of them, and ends it within 2 TTLs of it.
func TestLessorNewLeader(t *testing.T) {
	clock := newFakeClock()
	one, two := Origin{Member: 1, Nonce: 1}, Origin{Member: 2, Nonce: 2}
	s1 := newFakeServer(t, one, clock)
	l1 := NewLessor(s1, one, clock.now, 100*time.Millisecond, zap.NewNop(), nil)
	// Member 2 applies what member 1 commits, at the same moments.
	s2 := newFakeServer(t, two, clock)
	s2.leading = false
	ttl := 6 * time.Second
	s1.table.Grant(5, ttl)
	s2.table.Grant(5, ttl)
	mirror := func() {
		// Every window member 1 committed so far reaches member 2 now,
		// the latest a follower could apply it.
		for ; s2.windows < s1.windows; s2.windows++ {
			s2.table.Window(one, []uint64{5})
		}
	}
	var last time.Time
	for range 4 {
		if _, err := l1.KeepAlive(context.Background(), 5); err != nil {
			t.Fatal(err)
		}
		last = clock.now()
		mirror()
		for range 20 {
			clock.advance(100 * time.Millisecond)
			expiries(l1, s1)
			mirror()
		}
	}
	// Member 1 is gone; member 2 leads in a new term.
	s2.leading, s2.term = true, 2
	l2 := NewLessor(s2, two, clock.now, 100*time.Millisecond, zap.NewNop(), nil)
	for {
		clock.advance(100 * time.Millisecond)
		got := expiries(l2, s2)
		since := clock.now().Sub(last)
		if len(got) == 0 {
			if since > 2*ttl {
				t.Fatalf("the new leader had not expired the lease %v after its last keepalive (TTL %v)", since, ttl)
			}
			continue
		}
		if since < ttl {
			t.Fatalf("the new leader expired the lease %v after its last keepalive, before its TTL %v", since, ttl)
		}
		t.Logf("expired %v after the last keepalive (TTL %v)", since, ttl)
		return
	}
}

// TestLessorExpiringRefused: once the leader has proposed a lease's
// expiry in a term, it answers no keepalive for it in that term; a new
// term starts afresh.
func TestLessorExpiringRefused(t *testing.T) {
	clock := newFakeClock()
	self := Origin{Member: 1, Nonce: 1}
	s := newFakeServer(t, self, clock)
	l := NewLessor(s, self, clock.now, 100*time.Millisecond, zap.NewNop(), nil)
	s.table.Grant(5, 2*time.Second)
	clock.advance(3 * time.Second)
	_, expire := l.scan(s.term, s.Leases())
	if len(expire) != 1 {
		t.Fatalf("scan found %v expired, want [5]", expire)
	}
	if _, err := l.KeepAlive(context.Background(), 5); !errors.Is(err, ErrExpiring) {
		t.Fatalf("keepalive of an expiring lease: %v, want ErrExpiring", err)
	}
	s.term = 2 // the expiry was never committed; a new term
	if _, err := l.KeepAlive(context.Background(), 5); err != nil {
		t.Fatalf("keepalive in a new term: %v", err)
	}
}

// TestLessorStaleTerm: a keepalive or a scan that began in an earlier term,
// before this member lost and regained leadership, neither answers nor
// clears the expiring marks of the current term.
func TestLessorStaleTerm(t *testing.T) {
	clock := newFakeClock()
	self := Origin{Member: 1, Nonce: 1}
	s := newFakeServer(t, self, clock)
	l := NewLessor(s, self, clock.now, 100*time.Millisecond, zap.NewNop(), nil)
	s.table.Grant(5, 2*time.Second)
	clock.advance(3 * time.Second)
	s.term = 3
	if _, expire := l.scan(s.term, s.Leases()); len(expire) != 1 {
		t.Fatalf("scan in term 3 found %v expired, want [5]", expire)
	}
	s.term = 2 // a keepalive that read its term before leadership moved on
	if _, err := l.KeepAlive(context.Background(), 5); err == nil {
		t.Fatal("a keepalive in an earlier term was answered")
	}
	if windows, expire := l.scan(2, s.Leases()); len(windows)+len(expire) != 0 {
		t.Fatalf("a scan in an earlier term proposed windows %v, expiries %v", windows, expire)
	}
	s.term = 3
	if _, err := l.KeepAlive(context.Background(), 5); !errors.Is(err, ErrExpiring) {
		t.Fatalf("keepalive in term 3 after the stale ones: %v, want ErrExpiring (the mark kept)", err)
	}
}
