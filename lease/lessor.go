package lease

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"raftkv/api"
	"raftkv/idempotency"
	"raftkv/metrics"
)

// ErrExpiring is a keepalive of a lease the leader has already decided to
// expire: it is as good as gone.
var ErrExpiring = fmt.Errorf("%w: it has expired", ErrNotFound)

const (
	// expirySlack is how much later than its TTL the leader ends a lease:
	// a keepalive or a grant is answered a moment after the leader records
	// it (by another member, for a grant), and its answer takes a moment
	// to reach the client.
	expirySlack = 250 * time.Millisecond

	// maxExpiriesPerScan bounds the expiries one scan proposes, so that
	// many leases ending at once do not hold up writes (etcd revokes 1000
	// a second at most).
	maxExpiriesPerScan = 500
)

// Server is what the lessor needs of the member it runs in.
type Server interface {
	// Leading is the term in which this member leads, if it does and has
	// applied every entry of the terms before (its first entry of the
	// term): the state it then reads holds every expiry and window an
	// earlier leader committed.
	Leading() (term uint64, ok bool)
	// LeaderReady waits, until ctx is done at most, for Leading to hold.
	LeaderReady(ctx context.Context) (term uint64, err error)
	// ConfirmLeadership returns once a heartbeat round has shown that this
	// member still leads (a ReadIndex round).
	ConfirmLeadership(ctx context.Context) error
	// Lease and Leases read the applied lease table.
	Lease(id uint64) (Info, bool)
	Leases() []Info
	// ProposeLease proposes cmd and waits for this member to apply it: its
	// answer, and whether that is a replay of an earlier attempt's (an
	// Idempotency-Key recorded).
	ProposeLease(ctx context.Context, cmd Command) (a idempotency.Answer, replayed bool, err error)
	// Done is closed once the member stops applying entries.
	Done() <-chan struct{}
}

// renewal is what the leader's process knows of a lease beyond the log.
type renewal struct {
	renewedAt    time.Time // the last keepalive this process answered
	coveredUntil time.Time // until when its committed windows let it answer from memory
	windowAt     time.Time // when it last proposed a window for the lease
	pending      bool      // renewed since windowAt: the next window is due
	expiring     bool      // an expiry is proposed in the current term
}

// Lessor is the leader's side of leases: it answers keepalives, proposes
// the windows under which it answers them from memory, and proposes the
// expiry of the leases whose time is up. It runs on every member and acts
// only while its member leads.
type Lessor struct {
	srv     Server
	origin  Origin
	now     func() time.Time
	tick    time.Duration
	lg      *zap.Logger
	metrics *metrics.Metrics

	mu       sync.Mutex
	renewals map[uint64]*renewal
	term     uint64 // the term the expiring flags are for
}

// NewLessor returns the lessor of the process origin, which checks its
// leases every tick.
func NewLessor(srv Server, origin Origin, now func() time.Time, tick time.Duration, lg *zap.Logger, m *metrics.Metrics) *Lessor {
	return &Lessor{srv: srv, origin: origin, now: now, tick: tick, lg: lg, metrics: m, renewals: make(map[uint64]*renewal)}
}

// renewalOf returns the process's record of lease id in term, resetting
// every expiring flag in a new term: an expiry proposed in an earlier term
// has applied, or never will, by the time a new leader reads the state.
// The caller must have checked that term is not older than l.term (stale):
// a keepalive or a scan that began in an earlier term, before this member
// lost and regained leadership, must not clear the flags of this one.
// l.mu must be held.
func (l *Lessor) renewalOf(id, term uint64) *renewal {
	if term > l.term {
		for _, r := range l.renewals {
			r.expiring = false
		}
		l.term = term
	}
	r := l.renewals[id]
	if r == nil {
		r = &renewal{}
		l.renewals[id] = r
	}
	return r
}

// KeepAlive renews lease id, on the leader, and returns it. It answers
// from memory while a window this process committed covers the moment;
// otherwise it first commits one.
func (l *Lessor) KeepAlive(ctx context.Context, id uint64) (Info, error) {
	term, err := l.srv.LeaderReady(ctx)
	if err != nil {
		return Info{}, err
	}
	info, ok := l.srv.Lease(id)
	if !ok {
		return Info{}, ErrNotFound
	}
	for attempt := 0; ; attempt++ {
		l.mu.Lock()
		if l.stale(term) {
			l.mu.Unlock()
			return Info{}, fmt.Errorf("%w: this member stopped leading in term %d", api.ErrNoLeader, term)
		}
		r := l.renewalOf(id, term)
		now := l.now()
		switch {
		case r.expiring:
			l.mu.Unlock()
			return Info{}, ErrExpiring
		case !now.After(r.coveredUntil):
			r.renewedAt, r.pending = now, true
			l.mu.Unlock()
			l.metrics.LeaseKeptAlive()
			return info, nil
		}
		l.mu.Unlock()
		if attempt == 2 {
			return Info{}, fmt.Errorf("lease %d: no window could be committed in time: %w", id, context.DeadlineExceeded)
		}
		if err := l.proposeWindow(ctx, []uint64{id}); err != nil {
			return Info{}, err
		}
	}
}

// proposeWindow commits a window for the leases ids and records, for each,
// until when this process may answer its keepalives from memory: half its
// TTL after the proposal, by this process's clock, since every member
// applies it later than that.
func (l *Lessor) proposeWindow(ctx context.Context, ids []uint64) error {
	proposed := l.now()
	_, _, err := l.srv.ProposeLease(ctx, Command{Kind: Window, Origin: l.origin, IDs: ids})
	if err != nil {
		return err
	}
	ttls := make(map[uint64]time.Duration, len(ids))
	for _, id := range ids {
		if info, ok := l.srv.Lease(id); ok {
			ttls[id] = info.TTL
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, ttl := range ttls {
		if r := l.renewals[id]; r != nil {
			r.coveredUntil = later(r.coveredUntil, proposed.Add(window(ttl)))
		}
	}
	return nil
}

// Run checks the leases every tick until the member stops: on the leader,
// it proposes the windows that are due and the expiries of the leases
// whose time is up.
func (l *Lessor) Run() {
	ticker := time.NewTicker(l.tick)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
		case <-l.srv.Done():
			return
		}
		term, leading := l.srv.Leading()
		if !leading {
			continue
		}
		windows, expiries := l.scan(term, l.srv.Leases())
		if len(windows) > 0 {
			go l.proposeWindows(windows)
		}
		if len(expiries) > 0 {
			go l.expire(term, expiries)
		}
	}
}

// scan returns the leases whose next window is due, and those whose time
// is up, which it marks expiring. A lease ends once the later of what the
// log holds it for (its grant and the windows of other leaders) and its
// last keepalive here plus its TTL has passed, and expirySlack more.
func (l *Lessor) scan(term uint64, leases []Info) (windows, expiries []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stale(term) {
		return nil, nil
	}
	now := l.now()
	for _, info := range leases {
		r := l.renewalOf(info.ID, term)
		if r.expiring {
			continue
		}
		end := later(info.HoldUntil, r.renewedAt.Add(info.TTL)).Add(expirySlack)
		switch {
		case !now.Before(end) && len(expiries) < maxExpiriesPerScan:
			r.expiring = true
			expiries = append(expiries, info.ID)
		case r.pending && !now.Before(r.windowAt.Add(info.TTL/4)):
			// A window is proposed at most every quarter TTL, and only for
			// a lease renewed since the last: with windows half a TTL
			// long, keepalives every third of a TTL are answered from
			// memory, and the last window after the last keepalive holds
			// the lease at most three quarters of a TTL more.
			r.windowAt, r.pending = now, false
			windows = append(windows, info.ID)
		}
	}
	if len(l.renewals) > len(leases) { // some leases have ended
		live := make(map[uint64]bool, len(leases))
		for _, info := range leases {
			live[info.ID] = true
		}
		for id := range l.renewals {
			if !live[id] {
				delete(l.renewals, id)
			}
		}
	}
	return windows, expiries
}

// stale reports whether term is older than the newest term this process
// has led in. l.mu must be held.
func (l *Lessor) stale(term uint64) bool { return term < l.term }

// proposeWindows commits one window for ids; if it fails, they are due
// again.
func (l *Lessor) proposeWindows(ids []uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*l.tick+time.Second)
	defer cancel()
	if err := l.proposeWindow(ctx, ids); err != nil {
		l.lg.Debug("proposing a lease window failed; it is due again", zap.Int("leases", len(ids)), zap.Error(err))
		l.mu.Lock()
		for _, id := range ids {
			if r := l.renewals[id]; r != nil {
				r.pending = true
			}
		}
		l.mu.Unlock()
	}
}

// expire proposes the expiry of ids, after a heartbeat round has shown
// that this member still leads (etcd-io/etcd#15247): a deposed leader's
// proposals cannot commit, but there is no point asking. The leases stay
// marked expiring for the rest of the term, and the next scans skip them:
// one whose expiry did not apply is proposed again in the next term.
func (l *Lessor) expire(term uint64, ids []uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*l.tick+time.Second)
	defer cancel()
	if err := l.srv.ConfirmLeadership(ctx); err != nil {
		l.unmark(term, ids)
		return
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			_, _, err := l.srv.ProposeLease(ctx, Command{Kind: Revoke, ID: id, Expired: true})
			switch {
			case err == nil:
				l.lg.Info("lease expired", zap.Uint64("lease", id))
			case errors.Is(err, ErrNotFound):
			default:
				l.lg.Debug("proposing a lease's expiry failed", zap.Uint64("lease", id), zap.Error(err))
			}
		})
	}
	wg.Wait()
}

// unmark clears the expiring flag of ids, whose expiry was not proposed.
func (l *Lessor) unmark(term uint64, ids []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if term > l.term {
		return
	}
	for _, id := range ids {
		if r := l.renewals[id]; r != nil {
			r.expiring = false
		}
	}
}

// Remaining is how long lease info has before this member, as leader,
// expires it.
func (l *Lessor) Remaining(info Info) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	end := info.HoldUntil
	if r := l.renewals[info.ID]; r != nil {
		end = later(end, r.renewedAt.Add(info.TTL))
	}
	return max(end.Add(expirySlack).Sub(l.now()), 0)
}
