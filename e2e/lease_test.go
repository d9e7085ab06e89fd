package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"raftkv/api"
	"raftkv/keyspace"
)

// Lease timing under faults (issue 24). TestLeaseTiming holds leases on
// real raftkv processes under TestLinearizable's nemesis and checks, on
// the test's own clock, what the issue promises:
//
//   - never early: a lease does not end before its TTL has passed since
//     the last keepalive its holder got a 200 for, whoever leads, through
//     elections, restarts of every member and snapshot installs; a holder
//     that renews every TTL/3, and whose 200s never came a TTL or more
//     apart, never loses its key;
//   - bounded late: once its holder stops, a lease ends within TTL + 1 s of
//     the last renewal's answer under a stable leader, and within 2 TTL +
//     an election timeout across leader changes, however many; the time
//     in which no leader could commit is added to either bound;
//   - only the leader decides, through the log: every member that saw a
//     lease's keys deleted saw them all deleted in one entry, at the same
//     index, naming the lease, with reason "expired".
//
// Holders on every member grant leases of 2 to 5 s, attach two keys to
// each, and renew every TTL/3, following 307s to the leader and moving to
// another member on errors; half of them renew for the whole run, the
// others stop after a random time, wait until their key is gone (polling
// it with level=consistent) and take a new lease. Every keepalive is
// recorded with the times it was sent and answered. A watcher per member
// streams /watch/lease/, resuming with Last-Event-ID across faults (and
// after the oldest index the member keeps, once a snapshot replaced its
// history), and records when each delete arrived, from which member, at
// which index. A sampler per member reads /status every 100 ms, so the
// check knows when a new term began; a prober per member writes a key
// every 100 ms, so it knows when no leader could commit: the gaps between
// committed probes longer than ltCommitGap, which the check adds to the
// lateness bounds. The nemesis is faultCluster's, with the leader paused
// and cut off besides (ltFaultKinds), after a warm-up.
//
// What the client sees is all the check trusts. A lease ended when a
// watcher got its delete, a consistent read found its key gone, or a
// keepalive got 404, whichever came first. Its last renewal is the last
// 200's answer, or a later keepalive without an answer, which the leader
// may have taken: until its client gave up, or, if its member was paused,
// until it resumed. It is late only when a consistent read sent after its
// deadline still found its key, or it never ended.

// TestLeaseTiming runs the lease holders, watchers, samplers and probers
// against a 3-member cluster with frequent snapshots (so partitions and
// kills end in snapshot installs) under the nemesis, then stops every
// holder under a leader that has led for a while, waits for every lease
// to end, and checks the rules above. RAFTKV_SOAK=10m runs the faults for
// ten minutes; RAFTKV_SEED replays a seed's faults.
func TestLeaseTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	soak, seed := linearizableFlags(t)
	t.Logf("seed %d (replay the faults with RAFTKV_SEED=%d)", seed, seed)
	faultTime := ltShortFaults
	if soak > 0 {
		faultTime = soak
	}
	if deadline, ok := t.Deadline(); ok {
		if fit := time.Until(deadline) - ltCheckTime; fit < faultTime {
			t.Logf("faults cut to %s to fit go test's -timeout", fit.Round(time.Second))
			faultTime = max(fit, 0)
		}
	}
	bin := e2eBuild(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	c := newFaultCluster(t, bin, 3, ltSnapshotCount)
	r := ltStart(c, seed)
	var s faultSummary
	r.nemesis(rng, faultTime, &s)
	r.finish()
	f := r.check()
	t.Logf("summary: %s", f.summary(s))
	for _, note := range f.notes {
		t.Log(note)
	}
	for _, v := range f.violations {
		t.Errorf("seed %d: %s", seed, v)
	}
}

const (
	// ltShortFaults is how long a default run injects faults; it goes on
	// until every fault kind has been injected once.
	ltShortFaults = 10 * time.Second
	// ltCheckTime is what the run needs after its faults: every holder
	// stopped, every lease ended (2 TTL and more at worst), the checks.
	ltCheckTime = 45 * time.Second
	// ltSnapshotCount makes snapshots frequent, so that a member cut off
	// or killed for a while catches up by a snapshot install.
	ltSnapshotCount = 20
	// ltHolders hold leases at once; the even ones renew for the whole
	// run, the odd ones stop at random times.
	ltHolders = 12
	// ltKeys keys are attached to each lease.
	ltKeys = 2
	// ltPrefix is where the leased keys are, and what the watchers watch.
	ltPrefix = "lease/"
	// ltMinTTL and ltMaxTTL bound the TTLs, in seconds: the shortest a
	// cluster at the default tick grants is 2 s.
	ltMinTTL, ltMaxTTL = 2, 5
	// ltWarmUp is how long the holders run before the first fault, so that
	// the first leases have outlived their grants (which hold them a TTL
	// on every member) by then.
	ltWarmUp = 2500 * time.Millisecond
	// ltStopAfter bounds how long a stopping holder renews, after 0.3 s.
	ltStopAfter = 6 * time.Second
	// ltElectionTimeout is the members' election timeout (10 ticks of
	// 100 ms).
	ltElectionTimeout = time.Second
	// ltStableSlack is how late after its TTL a lease may end under a
	// stable leader.
	ltStableSlack = time.Second
	// ltAttemptTimeout bounds each request of a holder.
	ltAttemptTimeout = time.Second
	// ltRetryPause is a holder's pause before trying again elsewhere.
	ltRetryPause = 100 * time.Millisecond
	// ltSampleEvery is how often the samplers and probers ask each member.
	ltSampleEvery = 100 * time.Millisecond
	// ltCommitGap: a gap between committed probes longer than this is
	// time no leader could commit (three probers write every 100 ms).
	ltCommitGap = 300 * time.Millisecond
	// ltChangeMargin is how late a sampler may see a new term.
	ltChangeMargin = 500 * time.Millisecond
	// ltWatchCatchUp is how long the watchers have to reach the sentinel.
	ltWatchCatchUp = 15 * time.Second
	// ltSettle is how long finish waits at most for a leader that has led
	// long enough for the stable bound to hold before stopping the holders.
	ltSettle = 15 * time.Second
)

// ltAttempt is one keepalive request that reached a member that could
// renew (a 307 is not one): when it was sent and answered on the test's
// clock, who answered, and how.
type ltAttempt struct {
	sent, recv time.Time
	member     uint64 // the member it went to, after redirects
	code       int    // 0: no answer (a timeout, a broken connection)
	err        string
}

// ltLease is one lease and what its holder saw. Its fields are guarded by
// ltRun.mu.
type ltLease struct {
	holder, gen int
	id          uint64
	ttl         time.Duration
	renewing    bool // its holder means to renew it for the whole run
	granted     time.Time
	keys        []string // attached (a PUT with its Lease answered 2xx)
	attempts    []ltAttempt
	stopped     time.Time // when its holder stopped renewing it
	lost404     time.Time // a keepalive answered 404: its answer's time
	lastPresent time.Time // the latest send of a consistent read that found its first key
	gone        time.Time // the answer of the first consistent read that found it gone
}

// ltDelete is a delete of a leased key, as one member's watch stream
// delivered it.
type ltDelete struct {
	member uint64
	key    string
	lease  uint64
	index  uint64
	reason string
	at     time.Time
}

// ltTerm is a term the samplers saw first at a time, with its leader if
// one was known then.
type ltTerm struct {
	term, leader uint64
	at           time.Time
}

// ltFault is one fault the nemesis injected, for the check's messages and
// for keepalives sent to a paused member (which it may answer when it
// resumes).
type ltFault struct {
	what     string
	paused   uint64 // the member paused, for a pause
	from, to time.Time
}

// ltRun is the holders, watchers, samplers and probers of one run, and
// everything they saw.
type ltRun struct {
	c     *faultCluster
	seed  uint64
	start time.Time
	stopC chan struct{} // closed: holders stop renewing and take no new lease
	pollC chan struct{} // closed: holders give up waiting and return

	obsCtx    context.Context // cancelled: watchers, samplers and probers stop
	obsCancel context.CancelFunc
	holdersWG sync.WaitGroup
	obsWG     sync.WaitGroup
	stopOnce  sync.Once
	pollOnce  sync.Once
	obsOnce   sync.Once
	watchers  []*ltWatcher

	mu       sync.Mutex
	leases   []*ltLease
	deletes  []ltDelete
	terms    []ltTerm
	commits  []time.Time // answers to the probes' writes
	faults   []ltFault
	obsEnd   time.Time // when the probers stopped
	problems []string  // answers a correct member never gives
	final    []string  // what the end state shows wrong
}

// ltStart starts the samplers, probers and watchers against c, waits
// until every watcher streams, then starts the holders.
func ltStart(c *faultCluster, seed uint64) *ltRun {
	r := &ltRun{c: c, seed: seed, start: time.Now(), stopC: make(chan struct{}), pollC: make(chan struct{})}
	r.obsCtx, r.obsCancel = context.WithCancel(context.Background())
	c.t.Cleanup(r.halt)
	for _, m := range c.active() {
		r.obsWG.Go(func() { r.sample(m) })
		r.obsWG.Go(func() { r.probe(m) })
		w := &ltWatcher{r: r, m: m, hc: &http.Client{Transport: &http.Transport{
			DisableKeepAlives:     true,
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			ResponseHeaderTimeout: clientTimeout, // a paused member accepts, but does not answer
			TLSClientConfig:       e2eClientTLS(),
		}}}
		r.watchers = append(r.watchers, w)
		r.obsWG.Go(w.run)
	}
	eventually(c.t, faultMemberTimeout, "every lease watcher to open its first stream", func() bool {
		for _, w := range r.watchers {
			if w.seen.Load() == 0 {
				return false
			}
		}
		return true
	})
	for n := range ltHolders {
		r.holdersWG.Go(func() { r.holder(n) })
	}
	return r
}

// halt stops everything that runs and waits for it; finish does it in
// order, this is for a test that ends early.
func (r *ltRun) halt() {
	r.stopOnce.Do(func() { close(r.stopC) })
	r.pollOnce.Do(func() { close(r.pollC) })
	r.holdersWG.Wait()
	r.stopObservers()
}

// stopObservers stops the watchers, samplers and probers.
func (r *ltRun) stopObservers() {
	r.obsOnce.Do(func() {
		r.obsCancel()
		r.obsWG.Wait()
		r.mu.Lock()
		r.obsEnd = time.Now()
		r.mu.Unlock()
	})
}

// stopped reports whether the holders are to stop renewing.
func (r *ltRun) stopped() bool {
	select {
	case <-r.stopC:
		return true
	default:
		return false
	}
}

// giveUp reports whether the holders are to give up waiting.
func (r *ltRun) giveUp() bool {
	select {
	case <-r.pollC:
		return true
	default:
		return false
	}
}

// at is t on the run's clock, for messages.
func (r *ltRun) at(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return fmt.Sprintf("%.3fs", t.Sub(r.start).Seconds())
}

// problem notes an answer a correct member never gives.
func (r *ltRun) problem(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// memberOf is the member whose client URL u starts with, 0 if none.
func (r *ltRun) memberOf(u string) uint64 {
	for _, m := range r.c.active() {
		if strings.HasPrefix(u, m.client+"/") || u == m.client {
			return m.id
		}
	}
	return 0
}

// ltHTTPClient is a holder's own keep-alive connections; it shows
// redirects rather than following them, so that the holder knows which
// member answered.
func ltHTTPClient() *http.Client {
	return &http.Client{
		Timeout:       ltAttemptTimeout,
		Transport:     &http.Transport{MaxIdleConnsPerHost: 2, TLSClientConfig: e2eClientTLS()},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// each tries members, home first and then others at random, every
// ltRetryPause, until try reports done; false if the holders give up
// first.
func (r *ltRun) each(rng *rand.Rand, home int, quit func() bool, try func(target string) bool) bool {
	for i := 0; ; i++ {
		targets := r.c.targets()
		target := targets[home%len(targets)]
		if i > 0 {
			target = targets[rng.IntN(len(targets))]
		}
		if try(target) {
			return true
		}
		if quit() {
			return false
		}
		time.Sleep(ltRetryPause)
	}
}

// holder n holds one lease after another until the holders stop: grant,
// attach, renew, and once it stops renewing, wait until the lease's key
// is gone.
func (r *ltRun) holder(n int) {
	rng := rand.New(rand.NewPCG(r.seed, uint64(2000+n)))
	hc := ltHTTPClient()
	defer hc.CloseIdleConnections()
	for gen := 0; !r.stopped(); gen++ {
		l := r.grant(hc, rng, n, gen)
		if l == nil {
			continue
		}
		if r.attach(hc, rng, l) {
			r.hold(hc, rng, l)
		}
		r.mu.Lock()
		if l.stopped.IsZero() {
			l.stopped = time.Now()
		}
		r.mu.Unlock()
		r.waitGone(hc, rng, l)
	}
}

// grant grants holder n's lease of generation gen, with an
// Idempotency-Key retried until a definite answer; nil if the holders
// gave up first.
func (r *ltRun) grant(hc *http.Client, rng *rand.Rand, n, gen int) *ltLease {
	ttl := time.Duration(ltMinTTL+rng.IntN(ltMaxTTL-ltMinTTL+1)) * time.Second
	header := http.Header{"Idempotency-Key": {fmt.Sprintf("lease-timing-%d-%d", n, gen)}}
	body := fmt.Sprintf(`{"ttl": %d}`, ttl/time.Second)
	var l *ltLease
	r.each(rng, n, r.giveUp, func(target string) bool {
		resp, err := tryWithHeader(hc, "POST", target+"/leases", body, header)
		switch {
		case err != nil || resp.code >= 500:
			return false // unknown, or not applied: the same key again
		case resp.code != http.StatusCreated:
			r.problem("POST %s/leases %s: %d %q", target, body, resp.code, resp.body)
			return false
		}
		var v struct {
			ID  uint64 `json:"id"`
			TTL int64  `json:"ttl"`
		}
		if err := json.Unmarshal([]byte(resp.body), &v); err != nil || v.ID == 0 || time.Duration(v.TTL)*time.Second != ttl {
			r.problem("POST %s/leases %s: 201 %q", target, body, resp.body)
			return false
		}
		l = &ltLease{holder: n, gen: gen, id: v.ID, ttl: ttl, renewing: n%2 == 0, granted: time.Now()}
		return true
	})
	if l != nil {
		r.mu.Lock()
		r.leases = append(r.leases, l)
		r.mu.Unlock()
	}
	return l
}

// attach attaches l's keys; false if the lease ended first (a 404) or
// the holders gave up.
func (r *ltRun) attach(hc *http.Client, rng *rand.Rand, l *ltLease) bool {
	for k := range ltKeys {
		key := fmt.Sprintf("%sh%d-g%d-k%d", ltPrefix, l.holder, l.gen, k)
		header := http.Header{"Lease": {strconv.FormatUint(l.id, 10)}, "Idempotency-Key": {fmt.Sprintf("lease-timing-%d-%d-%d", l.holder, l.gen, k)}}
		gone := false
		ok := r.each(rng, l.holder, r.giveUp, func(target string) bool {
			resp, err := tryWithHeader(hc, "PUT", target+"/keys/"+key, "held", header)
			switch {
			case err != nil || resp.code >= 500:
				return false
			case resp.code == http.StatusNotFound:
				gone = true
				return true
			case resp.code != http.StatusCreated && resp.code != http.StatusNoContent:
				r.problem("PUT %s/keys/%s with Lease %d: %d %q", target, key, l.id, resp.code, resp.body)
				return false
			}
			r.mu.Lock()
			l.keys = append(l.keys, key)
			r.mu.Unlock()
			return true
		})
		if !ok || gone {
			return false
		}
	}
	return true
}

// hold renews l every TTL/3 until the holders stop, or, for a holder that
// does not renew for the whole run, until a random time after its first
// renewal; or until a keepalive answers 404.
func (r *ltRun) hold(hc *http.Client, rng *rand.Rand, l *ltLease) {
	var stopAt time.Time // zero: until the holders stop
	over := func() bool { return r.stopped() || (!stopAt.IsZero() && !time.Now().Before(stopAt)) }
	next := time.Now()
	for !over() {
		wait := time.Until(next)
		if !stopAt.IsZero() {
			wait = min(wait, time.Until(stopAt))
		}
		if wait > 0 {
			select {
			case <-time.After(wait):
			case <-r.stopC:
			}
		}
		if over() {
			break
		}
		start := time.Now()
		switch r.keepAlive(hc, rng, l, over) {
		case http.StatusOK:
			if stopAt.IsZero() && !l.renewing {
				stopAt = time.Now().Add(300*time.Millisecond + time.Duration(rng.Int64N(int64(ltStopAfter))))
			}
			next = start.Add(l.ttl / 3)
		case http.StatusNotFound:
			r.mu.Lock()
			l.stopped = time.Now()
			r.mu.Unlock()
			return
		}
	}
	r.mu.Lock()
	l.stopped = time.Now()
	r.mu.Unlock()
}

// keepAlive renews l once: it tries members until one answers 200 or 404,
// or until over; the code, or 0.
func (r *ltRun) keepAlive(hc *http.Client, rng *rand.Rand, l *ltLease, over func() bool) int {
	code := 0
	r.each(rng, l.holder, over, func(target string) bool {
		code = r.keepAliveAt(hc, target, l)
		return code == http.StatusOK || code == http.StatusNotFound
	})
	return code
}

// keepAliveAt sends one keepalive of l to target, following redirects to
// the leader, and records the attempt.
func (r *ltRun) keepAliveAt(hc *http.Client, target string, l *ltLease) int {
	u := fmt.Sprintf("%s/leases/%d/keepalive", target, l.id)
	for range 3 {
		sent := time.Now()
		resp, err := tryWithHeader(hc, "POST", u, "", nil)
		recv := time.Now()
		if err == nil && resp.code == http.StatusTemporaryRedirect {
			if u = resp.header.Get("Location"); u == "" {
				r.problem("POST %s: 307 without a Location", target)
				return 0
			}
			continue
		}
		a := ltAttempt{sent: sent, recv: recv, member: r.memberOf(u), code: resp.code}
		if err != nil {
			a.code, a.err = 0, api.OneLine(err)
		} else if a.code != http.StatusOK {
			a.err = strings.TrimSpace(resp.body)
		}
		switch {
		case a.code == http.StatusOK:
			var v struct {
				ID  uint64 `json:"id"`
				TTL int64  `json:"ttl"`
			}
			if err := json.Unmarshal([]byte(resp.body), &v); err != nil || v.ID != l.id || time.Duration(v.TTL)*time.Second != l.ttl {
				r.problem("POST %s: 200 %q", u, resp.body)
			}
		case a.code == http.StatusNotFound, a.code == 0, a.code >= 500:
		default:
			r.problem("POST %s: %d %q", u, a.code, resp.body)
		}
		r.mu.Lock()
		l.attempts = append(l.attempts, a)
		if a.code == http.StatusNotFound && l.lost404.IsZero() {
			l.lost404 = recv
		}
		r.mu.Unlock()
		return a.code
	}
	return 0
}

// waitGone polls l's first key with level=consistent every ltRetryPause
// until a read finds it gone, or the holders give up.
func (r *ltRun) waitGone(hc *http.Client, rng *rand.Rand, l *ltLease) {
	r.mu.Lock()
	keys := slices.Clone(l.keys)
	r.mu.Unlock()
	if len(keys) == 0 {
		return
	}
	r.each(rng, l.holder, r.giveUp, func(target string) bool {
		sent := time.Now()
		resp, err := e2eTry(hc, "GET", target+"/keys/"+keys[0]+"?level=consistent", "")
		recv := time.Now()
		r.mu.Lock()
		defer r.mu.Unlock()
		switch {
		case err != nil || resp.code >= 500:
		case resp.code == http.StatusOK:
			l.lastPresent = ltLater(l.lastPresent, sent)
		case resp.code == http.StatusNotFound:
			l.gone = recv
			return true
		default:
			r.problems = append(r.problems, fmt.Sprintf("GET %s/keys/%s?level=consistent: %d %q", target, keys[0], resp.code, resp.body))
		}
		return false
	})
}

// sample reads m's /status every ltSampleEvery and notes every new term.
func (r *ltRun) sample(m *faultMember) {
	hc := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{MaxIdleConnsPerHost: 1, TLSClientConfig: e2eClientTLS()}}
	defer hc.CloseIdleConnections()
	for r.obsCtx.Err() == nil {
		start := time.Now()
		if resp, err := e2eTry(hc, "GET", m.client+"/status", ""); err == nil && resp.code == http.StatusOK {
			var st statusView
			if json.Unmarshal([]byte(resp.body), &st) == nil && st.Term > 0 {
				r.noteTerm(st.Term, st.Leader, time.Now())
			}
		}
		r.sleepObs(start.Add(ltSampleEvery))
	}
}

// noteTerm records term if it is new, and its leader once known.
func (r *ltRun) noteTerm(term, leader uint64, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.terms)
	switch {
	case n == 0 || term > r.terms[n-1].term:
		r.terms = append(r.terms, ltTerm{term: term, leader: leader, at: at})
	case term == r.terms[n-1].term && r.terms[n-1].leader == 0:
		r.terms[n-1].leader = leader
	}
}

// lastTerm is the newest term seen; zero if none yet.
func (r *ltRun) lastTerm() ltTerm {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.terms) == 0 {
		return ltTerm{}
	}
	return r.terms[len(r.terms)-1]
}

// probe writes a key through m every ltSampleEvery and notes when each
// write was answered as committed.
func (r *ltRun) probe(m *faultMember) {
	hc := &http.Client{Timeout: ltAttemptTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 1, TLSClientConfig: e2eClientTLS()}}
	defer hc.CloseIdleConnections()
	for r.obsCtx.Err() == nil {
		start := time.Now()
		resp, err := e2eTry(hc, "PUT", fmt.Sprintf("%s/keys/lease-probe/%d", m.client, m.id), "alive")
		if err == nil && (resp.code == http.StatusCreated || resp.code == http.StatusNoContent) {
			r.mu.Lock()
			r.commits = append(r.commits, time.Now())
			r.mu.Unlock()
		}
		r.sleepObs(start.Add(ltSampleEvery))
	}
}

// sleepObs waits until t, or less if the observers stop.
func (r *ltRun) sleepObs(t time.Time) {
	select {
	case <-time.After(time.Until(t)):
	case <-r.obsCtx.Done():
	}
}

// ltWatcher streams /watch/lease/ from one member, resuming after the
// last whole entry it took, and records every delete.
type ltWatcher struct {
	r  *ltRun
	m  *faultMember
	hc *http.Client

	seen atomic.Uint64 // the highest index taken

	// The watcher goroutine's until it ends.
	started                bool
	pos                    uint64 // every entry through pos was taken whole
	conns, cuts, gone      int
	snapshots, errorEvents int
}

// ltEventView is the data of a watch event: a delete that ended a lease
// names it and why.
type ltEventView struct {
	keyspace.View
	Reason string `json:"reason"`
}

// run streams until the observers stop.
func (w *ltWatcher) run() {
	for w.r.obsCtx.Err() == nil {
		if !w.stream() {
			select {
			case <-time.After(50 * time.Millisecond): // a client's pause before trying again
			case <-w.r.obsCtx.Done():
			}
		}
	}
}

// stream reads one stream from the watcher's member; false if none
// opened.
func (w *ltWatcher) stream() bool {
	u := w.m.client + "/watch/" + ltPrefix
	req, err := http.NewRequestWithContext(w.r.obsCtx, "GET", u, nil)
	if err != nil {
		w.r.problem("GET %s: %v", u, err)
		return false
	}
	if w.started {
		req.Header.Set("Last-Event-ID", strconv.FormatUint(w.pos, 10))
	}
	resp, err := w.hc.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusGone:
		// A snapshot replaced the member's history: what it no longer
		// keeps, the other members' watchers saw.
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 500))
		m := oldestRE.FindSubmatch(body)
		var n uint64
		if m != nil {
			n, _ = strconv.ParseUint(string(m[1]), 10, 64)
		}
		if n <= w.pos {
			w.r.problem("member %d: GET %s after %d: 410 %q", w.m.id, u, w.pos, body)
			return false
		}
		w.gone++
		w.pos = n
		return true
	case resp.StatusCode >= 500:
		return false
	case resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream":
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		w.r.problem("member %d: GET %s after %d: %d %q", w.m.id, u, w.pos, resp.StatusCode, body)
		return false
	}
	start, err := headerIndex(resp.Header, "X-Raft-Index", true)
	switch {
	case err != nil:
		w.r.problem("member %d: GET %s: %v", w.m.id, u, err)
		return false
	case !w.started:
		w.started, w.pos = true, start
		w.seen.Store(start)
	}
	w.conns++
	br := bufio.NewReader(resp.Body)
	var id, kind, data string
	var pending uint64 // the entry being taken, whole once a later one comes
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && line == "" && id+kind+data == "" {
				w.pos = max(w.pos, pending) // a member ends a stream between entries
			} else {
				w.cuts++ // the pending entry may go on: take it again
			}
			return true
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "" && id+kind+data == "":
		case line == "":
			w.take(id, kind, data, &pending)
			id, kind, data = "", "", ""
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			id = line[len("id: "):]
		case strings.HasPrefix(line, "event: "):
			kind = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		default:
			w.r.problem("member %d: a line an event stream does not have: %q", w.m.id, line)
		}
	}
}

// take handles one event.
func (w *ltWatcher) take(id, kind, data string, pending *uint64) {
	at := time.Now()
	if kind == "error" {
		var v watchErrorView
		if err := json.Unmarshal([]byte(data), &v); err != nil || v.Error == "" {
			w.r.problem("member %d: error event %q: %v", w.m.id, data, err)
		}
		if strings.Contains(v.Error, "snapshot") {
			w.snapshots++
		} else {
			w.errorEvents++
		}
		w.pos = max(w.pos, *pending) // the stream ends between entries
		*pending = 0
		return
	}
	index, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		w.r.problem("member %d: event id %q event %q data %s", w.m.id, id, kind, data)
		return
	}
	if kind == "" && data == "" { // a position only: every entry through it is whole
		w.pos = max(w.pos, *pending, index)
		*pending = 0
		return
	}
	if *pending != 0 && *pending != index {
		w.pos = max(w.pos, *pending) // a later entry: the pending one is whole
	}
	*pending = index
	if index > w.seen.Load() {
		w.seen.Store(index)
	}
	if kind != "delete" {
		return
	}
	var v ltEventView
	if err := json.Unmarshal([]byte(data), &v); err != nil || v.ModIndex != index {
		w.r.problem("member %d: delete event %s: %s: %v", w.m.id, id, data, err)
		return
	}
	w.r.mu.Lock()
	w.r.deletes = append(w.r.deletes, ltDelete{member: w.m.id, key: v.Key, lease: v.Lease, index: index, reason: v.Reason, at: at})
	w.r.mu.Unlock()
}

// The lease test's own fault kinds, beside faultKinds: a lease is at risk
// when leadership moves while it is renewed, so the leader is paused and
// cut off too, not only killed. A pause shorter than an election timeout
// leaves it leading when it resumes; a leader cut off is cut off for three
// to four seconds, so that the others may elect another while it still
// answers keepalives from memory. (They do not always: peerProxy tells a
// connection's caller by its first request, and rafthttp's prober, which
// sends no X-Server-From, shares its keep-alive connections with the
// pipeline, whose raft messages then pass through a cut.)
const (
	ltPauseLeader faultKind = "pause-leader" // SIGSTOP whoever leads, then SIGCONT
	ltCutLeader   faultKind = "cut-leader"   // cut whoever leads off from the rest, then heal
)

// ltFaultKinds is every kind the lease nemesis injects.
var ltFaultKinds = append(slices.Clone(faultKinds), ltPauseLeader, ltCutLeader)

// nemesis is faultCluster.nemesis without membership changes and with
// ltFaultKinds, recording when each fault began and healed, and which
// member a pause stopped.
func (r *ltRun) nemesis(rng *rand.Rand, faultTime time.Duration, s *faultSummary) {
	c := r.c
	c.t.Helper()
	kinds := slices.Clone(ltFaultKinds)
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	time.Sleep(ltWarmUp)
	end := time.Now().Add(faultTime)
	for i := 0; i < len(kinds) || time.Now().Before(end); i++ {
		kind := ltFaultKinds[rng.IntN(len(ltFaultKinds))]
		if i < len(kinds) {
			kind = kinds[i]
		}
		from := time.Now()
		what, heal := r.inject(kind, rng)
		var paused uint64
		for _, m := range c.active() {
			if m.paused {
				paused = m.id
			}
		}
		hold := time.Duration(500+rng.IntN(2500)) * time.Millisecond
		if kind == ltCutLeader {
			hold = time.Duration(3000+rng.IntN(1000)) * time.Millisecond // past an election
		}
		time.Sleep(hold) // the fault lasts this long
		heal()
		r.mu.Lock()
		r.faults = append(r.faults, ltFault{what: what, paused: paused, from: from, to: time.Now()})
		r.mu.Unlock()
		recovery := c.waitWritable(recoveryLimit)
		term := r.lastTerm()
		c.t.Logf("%s: %s for %s; every member took a write %s after it healed; term %d (leader %d) since %s", r.at(time.Now()), what, hold, recovery.Round(time.Millisecond), term.term, term.leader, r.at(term.at))
		s.fault(kind, recovery)
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond) // a spell without faults
	}
}

// inject is faultCluster.inject, and the lease test's own kinds; those
// act on a member picked with rng when no leader is known.
func (r *ltRun) inject(kind faultKind, rng *rand.Rand) (string, func()) {
	c := r.c
	if kind != ltPauseLeader && kind != ltCutLeader {
		return c.inject(kind, rng)
	}
	ms := c.active()
	m, what := ms[rng.IntN(len(ms))], "member"
	if id := c.leader(); id != 0 {
		m, what = c.member(id), "leader"
	}
	if kind == ltPauseLeader {
		c.signal(m, syscall.SIGSTOP)
		return fmt.Sprintf("pause %s %d", what, m.id), func() { c.signal(m, syscall.SIGCONT) }
	}
	c.setPartition(ms, []*faultMember{m}, true)
	return fmt.Sprintf("cut %s %d off", what, m.id), func() { c.setPartition(ms, []*faultMember{m}, false) }
}

// ltFaultsString lists the faults s counted, by kind, and their total.
func ltFaultsString(s faultSummary) string {
	var faults []string
	total := 0
	for _, kind := range ltFaultKinds {
		faults = append(faults, fmt.Sprintf("%s %d", kind, s.faults[kind]))
		total += s.faults[kind]
	}
	return fmt.Sprintf("%d faults injected (%s)", total, strings.Join(faults, ", "))
}

// finish stops the holders on the cluster as the faults left it, waits
// until every lease has ended or is past any deadline it could have,
// writes a sentinel and waits for the watchers to reach it, stops them,
// and reads the end state: no leased key and no lease may be left.
func (r *ltRun) finish() {
	t := r.c.t
	t.Helper()
	// Let the last leader lead for half a TTL and an election timeout
	// first, so that the holders that renewed for the whole run stop under
	// a stable leader (see check).
	settle := time.Now().Add(ltSettle)
	for time.Now().Before(settle) {
		if time.Since(r.lastTerm().at) > ltMaxTTL*time.Second/2+ltElectionTimeout+ltChangeMargin {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.stopOnce.Do(func() { close(r.stopC) })
	finishing := time.Now()
	done := make(chan struct{})
	go func() {
		r.holdersWG.Wait()
		close(done)
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-tick.C:
			if time.Now().After(r.finalDeadline(finishing)) {
				t.Logf("%s: leases still open past every deadline they could have; giving up on them", r.at(time.Now()))
				break wait
			}
		}
	}
	r.pollOnce.Do(func() { close(r.pollC) })
	<-done
	t.Logf("%s: every holder stopped and saw its lease end", r.at(time.Now()))

	// A sentinel: a watcher that has seen it has seen every delete before.
	var sentinel uint64
	r.c.procs.eventually(recoveryLimit, "a write of the sentinel", func() bool {
		targets := r.c.targets()
		resp, err := e2eTry(faultProbeClient, "PUT", targets[rand.IntN(len(targets))]+"/keys/"+ltPrefix+"end", "end")
		if err != nil || (resp.code != http.StatusCreated && resp.code != http.StatusNoContent) {
			return false
		}
		sentinel, err = headerIndex(resp.header, "X-Raft-Index", true)
		return err == nil
	})
	deadline := time.Now().Add(ltWatchCatchUp)
	for _, w := range r.watchers {
		for w.seen.Load() < sentinel && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if w.seen.Load() < sentinel {
			t.Logf("member %d's watcher did not reach the sentinel at %d within %s (it is at %d)", w.m.id, sentinel, ltWatchCatchUp, w.seen.Load())
		}
	}
	r.stopObservers()

	// The end state: the sentinel alone under the prefix, and no lease.
	var listing listingView
	r.c.procs.eventually(recoveryLimit, "a consistent listing of "+ltPrefix, func() bool {
		targets := r.c.targets()
		resp, err := e2eTry(faultProbeClient, "GET", targets[rand.IntN(len(targets))]+"/keys/"+ltPrefix+"?level=consistent", "")
		return err == nil && resp.code == http.StatusOK && json.Unmarshal([]byte(resp.body), &listing) == nil
	})
	var leases []struct {
		ID        uint64 `json:"id"`
		TTL       int64  `json:"ttl"`
		Remaining int64  `json:"remaining"`
	}
	r.c.procs.eventually(recoveryLimit, "GET /leases from the leader", func() bool {
		targets := r.c.targets()
		resp, err := e2eTry(e2eFollowClient, "GET", targets[rand.IntN(len(targets))]+"/leases", "")
		return err == nil && resp.code == http.StatusOK && json.Unmarshal([]byte(resp.body), &leases) == nil
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range listing.Entries {
		if e.Key != ltPrefix+"end" {
			r.final = append(r.final, fmt.Sprintf("key %s (lease %d, written at %d) is still there at the end", e.Key, e.Lease, e.ModIndex))
		}
	}
	for _, l := range leases {
		r.final = append(r.final, fmt.Sprintf("lease %d (TTL %ds) still exists at the end, with %ds remaining", l.ID, l.TTL, l.Remaining))
	}
}

// finalDeadline is when finish, which began at start, stops waiting for
// the leases still open: a second past the latest deadline any of them
// has across leader changes, counting from its holder's stop (now, for
// one that has not stopped yet).
func (r *ltRun) finalDeadline(start time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	commits := slices.Clone(r.commits)
	slices.SortFunc(commits, time.Time.Compare)
	latest := start.Add(2 * time.Second)
	for _, l := range r.leases {
		if !l.gone.IsZero() || len(l.keys) == 0 {
			continue
		}
		ref := ltLater(l.granted, l.stopped)
		if l.stopped.IsZero() {
			ref = time.Now()
		}
		for _, a := range l.attempts {
			if a.code == 0 || a.code == http.StatusOK {
				ref = ltLater(ref, a.recv)
			}
		}
		dl, _ := ltDeadline(commits, time.Time{}, ref, 2*l.ttl+ltElectionTimeout)
		latest = ltLater(latest, dl.Add(time.Second))
	}
	return latest
}

// ltLater is the later of a and b.
func ltLater(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// ltEarlier is the earlier of a and b, ignoring a zero time.
func ltEarlier(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero() || a.Before(b):
		return a
	}
	return b
}

// ltNoCommit is how much of [from, to] fell in gaps between committed
// probes (commits, in order) longer than ltCommitGap: time in which no
// leader could commit. After the last commit, the gap runs until end (the
// probers' end; now, if zero).
func ltNoCommit(commits []time.Time, end, from, to time.Time) time.Duration {
	var d time.Duration
	add := func(a, b time.Time) {
		a, b = ltLater(a, from), ltEarlier(b, to)
		if b.After(a) {
			d += b.Sub(a)
		}
	}
	for i := 1; i < len(commits); i++ {
		if commits[i].Sub(commits[i-1]) > ltCommitGap {
			add(commits[i-1], commits[i])
		}
	}
	if end.IsZero() {
		end = time.Now()
	}
	if n := len(commits); n > 0 && end.Sub(commits[n-1]) > ltCommitGap {
		add(commits[n-1], end)
	}
	return d
}

// ltDeadline is ref + bound + the time in which no leader could commit
// between ref and that deadline, and that time.
func ltDeadline(commits []time.Time, end, ref time.Time, bound time.Duration) (time.Time, time.Duration) {
	dl := ref.Add(bound)
	for range 1000 {
		credit := ltNoCommit(commits, end, ref, dl)
		next := ref.Add(bound + credit)
		if !next.After(dl) {
			return dl, credit
		}
		dl = next
	}
	return dl, dl.Sub(ref) - bound
}

// ltFindings is what the check found.
type ltFindings struct {
	violations []string
	notes      []string

	leases, renewing, stopping  int
	lostUnderFaults             int            // leases that ended while renewed, with 200s a TTL or more apart
	ok, refused, other, unknown int            // keepalive answers: 200, 404, others, none
	refusedFirst                int            // leases whose first keepalive answered was a 404
	otherWhy                    map[string]int // the others, by code and reason
	deletes, deleteMembers      int            // deletes seen (member, key, index); leases seen deleted on every member
	snapshots, gone, cuts       int            // the watchers' snapshot error events, 410s and cut streams
	termChanges                 int
	noCommit                    time.Duration
	lateChecked                 int
	stable, changed             ltLate // the worst lateness under a stable leader, and across leader changes
	literal                     int    // see notes
}

// ltLate is a lateness and whose it is.
type ltLate struct {
	n      int
	late   time.Duration // from the last renewal to the key seen gone
	ttl    time.Duration
	credit time.Duration // time no leader could commit in between
	lease  uint64
}

// String shows w in the summary.
func (w ltLate) String() string {
	if w.n == 0 {
		return "none"
	}
	return fmt.Sprintf("%s for a TTL of %s (lease %d, %s without a leader able to commit; %d leases)", w.late.Round(time.Millisecond), w.ttl, w.lease, w.credit.Round(time.Millisecond), w.n)
}

// add takes a lateness into w, keeping the worst past its TTL.
func (w *ltLate) add(late, ttl, credit time.Duration, lease uint64) {
	w.n++
	if w.n == 1 || late-ttl-credit > w.late-w.ttl-w.credit {
		w.late, w.ttl, w.credit, w.lease = late, ttl, credit, lease
	}
}

// summary is the summary line.
func (f ltFindings) summary(s faultSummary) string {
	return fmt.Sprintf("%d leases (%d renewed for the whole run, %d stopped at random; %d lost under faults with 200s a TTL or more apart), %d keepalives answered 200, %d 404 (%d leases refused before any 200), %d other answers %v, %d without an answer; %d deletes seen by the watchers (%d leases seen ended on every member; %d snapshot installs, %d 410s, %d streams cut); %s, %d new terms, %s without a leader able to commit; %d leases checked for lateness, worst stable %s, worst across leader changes %s (%d ended more than TTL + 1s after a renewal that came within TTL/2 + 1s after a leader change, with none after it); %d violations",
		f.leases, f.renewing, f.stopping, f.lostUnderFaults, f.ok, f.refused, f.refusedFirst, f.other, f.otherWhy, f.unknown, f.deletes, f.deleteMembers, f.snapshots, f.gone, f.cuts, ltFaultsString(s), f.termChanges, f.noCommit.Round(time.Millisecond), f.lateChecked, f.stable, f.changed, f.literal, len(f.violations))
}

// context shows the faults and new terms between from and to, for a
// violation's message.
func (r *ltRun) context(from, to time.Time) string {
	var what []string
	for _, f := range r.faults {
		if f.to.After(from) && f.from.Before(to) {
			what = append(what, fmt.Sprintf("%s from %s to %s", f.what, r.at(f.from), r.at(f.to)))
		}
	}
	for _, tm := range r.terms[min(1, len(r.terms)):] {
		if !tm.at.Before(from) && !tm.at.After(to) {
			what = append(what, fmt.Sprintf("term %d (leader %d) seen at %s", tm.term, tm.leader, r.at(tm.at)))
		}
	}
	if len(what) == 0 {
		return "no fault, no new term"
	}
	return strings.Join(what, "; ")
}

// changeIn reports whether the samplers saw a new term between from and
// to.
func (r *ltRun) changeIn(from, to time.Time) bool {
	for _, tm := range r.terms[min(1, len(r.terms)):] {
		if !tm.at.Before(from) && !tm.at.After(to) {
			return true
		}
	}
	return false
}

// check checks what the run saw against the rules; the run is over.
func (r *ltRun) check() ltFindings {
	r.mu.Lock()
	defer r.mu.Unlock()
	var f ltFindings
	violate := func(format string, args ...any) { f.violations = append(f.violations, fmt.Sprintf(format, args...)) }
	commits := slices.Clone(r.commits)
	slices.SortFunc(commits, time.Time.Compare)
	if len(commits) > 0 {
		f.noCommit = ltNoCommit(commits, r.obsEnd, commits[0], r.obsEnd)
	}
	f.termChanges = max(len(r.terms)-1, 0)
	for _, w := range r.watchers {
		f.snapshots += w.snapshots
		f.gone += w.gone
		f.cuts += w.cuts
	}
	for _, p := range r.problems {
		violate("unexpected answer: %s", p)
	}
	for _, p := range r.final {
		violate("bounded late: %s", p)
	}

	// The deletes, each (member, key, index) once, at the first time it
	// arrived: a stream cut inside an entry delivers it again.
	type seenKey struct {
		member, index uint64
		key           string
	}
	first := make(map[seenKey]int)
	var deletes []ltDelete
	for _, d := range r.deletes {
		k := seenKey{d.member, d.index, d.key}
		if i, ok := first[k]; ok {
			deletes[i].at = ltEarlier(deletes[i].at, d.at)
			continue
		}
		first[k] = len(deletes)
		deletes = append(deletes, d)
	}
	f.deletes = len(deletes)
	owner := make(map[string]*ltLease)
	for _, l := range r.leases {
		for _, k := range l.keys {
			owner[k] = l
		}
	}
	byLease := make(map[uint64][]ltDelete)
	for _, d := range deletes {
		switch l := owner[d.key]; {
		case d.lease == 0 || d.reason == "":
			violate("only the leader decides: member %d deleted %s at %d without naming a lease and why (lease %d, reason %q)", d.member, d.key, d.index, d.lease, d.reason)
		case l != nil && l.id != d.lease:
			violate("only the leader decides: member %d's delete of %s at %d names lease %d; the key was attached to lease %d", d.member, d.key, d.index, d.lease, l.id)
		}
		byLease[d.lease] = append(byLease[d.lease], d)
	}

	for _, l := range r.leases {
		f.leases++
		if l.renewing {
			f.renewing++
		} else {
			f.stopping++
		}
		var oks []ltAttempt
		for _, a := range l.attempts {
			switch {
			case a.code == http.StatusOK:
				f.ok++
				oks = append(oks, a)
			case a.code == http.StatusNotFound:
				f.refused++
			case a.code == 0:
				f.unknown++
			default:
				f.other++
				why := a.err
				if i := strings.Index(why, ": "); i >= 0 && strings.HasPrefix(why, "lease ") {
					why = why[i+2:] // the reason, without the lease's id
				}
				if f.otherWhy == nil {
					f.otherWhy = make(map[string]int)
				}
				f.otherWhy[fmt.Sprintf("%d %s", a.code, why)]++
			}
		}
		name := fmt.Sprintf("lease %d (TTL %s, holder %d's %s lease, granted at %s)", l.id, l.ttl, l.holder, ltOrdinal(l.gen+1), r.at(l.granted))

		// Only the leader decides, through the log: one entry, the same
		// index on every member, reason expired.
		ds := byLease[l.id]
		indexes := make(map[uint64][]string)
		members := make(map[uint64]bool)
		for _, d := range ds {
			indexes[d.index] = append(indexes[d.index], fmt.Sprintf("member %d: %s", d.member, d.key))
			members[d.member] = true
			if d.reason != "expired" {
				violate("only the leader decides: %s: member %d saw %s deleted at %d with reason %q, want \"expired\"", name, d.member, d.key, d.index, d.reason)
			}
		}
		if len(indexes) > 1 {
			violate("only the leader decides: %s: its keys were deleted at different indexes: %v", name, indexes)
		}
		for index, seen := range indexes {
			for _, k := range l.keys {
				if !slices.ContainsFunc(seen, func(s string) bool { return strings.HasSuffix(s, ": "+k) }) {
					violate("only the leader decides: %s: its keys were not deleted in one entry: %s is not among the deletes at %d (%v)", name, k, index, seen)
				}
			}
		}
		if len(members) == len(r.watchers) {
			f.deleteMembers++
		}

		// When it ended, at the earliest anyone saw: a watcher's delete, a
		// consistent read finding the key gone, a keepalive's 404.
		end, endWhat := time.Time{}, ""
		for _, d := range ds {
			if end.IsZero() || d.at.Before(end) {
				end, endWhat = d.at, fmt.Sprintf("member %d's watcher got the delete of %s at index %d", d.member, d.key, d.index)
			}
		}
		gone := end // when the keys were seen gone
		if !l.gone.IsZero() && (gone.IsZero() || l.gone.Before(gone)) {
			gone = l.gone
			if end.IsZero() || l.gone.Before(end) {
				end, endWhat = l.gone, "a consistent read found its key gone"
			}
		}
		if !l.lost404.IsZero() && (end.IsZero() || l.lost404.Before(end)) {
			end, endWhat = l.lost404, "a keepalive was answered 404"
		}

		if len(oks) == 0 && !l.lost404.IsZero() {
			// Not a rule of the (a keepalive's 200 is), but a
			// lease refused before it was ever renewed is worth seeing.
			f.refusedFirst++
			f.notes = append(f.notes, fmt.Sprintf("note: %s: its first keepalive answered was a 404, at %s, %s after its grant was answered",
				name, r.at(l.lost404), l.lost404.Sub(l.granted).Round(time.Millisecond)))
		}

		// Never early: it ends no sooner than a TTL after the last 200
		// answered before; a 200 in flight when it ended counts from when
		// it was sent, and a 200 to a keepalive sent after it ended is a
		// lease renewed when gone.
		if !end.IsZero() {
			var from time.Time // the last 200's answer, or the send of one in flight
			var last ltAttempt
			for _, a := range oks {
				t := a.recv
				switch {
				case !a.sent.Before(end):
					violate("never early: %s ended by %s (%s), but a keepalive sent at %s was answered 200 by member %d at %s; %s", name, r.at(end), endWhat, r.at(a.sent), a.member, r.at(a.recv), r.context(end.Add(-l.ttl), a.recv))
					continue
				case a.recv.After(end):
					t = a.sent
				}
				if t.After(from) {
					from, last = t, a
				}
			}
			if !from.IsZero() && end.Before(from.Add(l.ttl)) {
				violate("never early: %s ended by %s (%s), %s after its last keepalive answered 200 (by member %d, sent at %s, answered at %s), before its TTL; %s",
					name, r.at(end), endWhat, end.Sub(from).Round(time.Millisecond), last.member, r.at(last.sent), r.at(last.recv), r.context(from.Add(-l.ttl), end))
			}
		}

		// A holder that renews every TTL/3 and gets its 200s less than a
		// TTL apart never loses its key.
		if l.renewing && len(oks) > 0 {
			gap := l.stopped.Sub(oks[len(oks)-1].recv)
			for i := 1; i < len(oks); i++ {
				gap = max(gap, oks[i].recv.Sub(oks[i-1].recv))
			}
			switch {
			case gap >= l.ttl:
				f.lostUnderFaults += ltBool(!end.IsZero() && end.Before(l.stopped))
			case !end.IsZero() && end.Before(l.stopped):
				violate("renewing holder lost its key: %s ended by %s (%s) while its holder renewed it, its 200s never more than %s apart; %s",
					name, r.at(end), endWhat, gap.Round(time.Millisecond), r.context(end.Add(-l.ttl), end))
			}
		}

		// Bounded late: once its holder stopped, it ends within TTL + 1 s
		// of the last renewal under a stable leader, within 2 TTL + an
		// election timeout across leader changes, plus the time in which
		// no leader could commit. The last renewal is the last 200, or a
		// keepalive without an answer after it, which the leader may have
		// renewed when it got it: by the time its client gave up, or, if
		// its member was paused then, when it resumed.
		if len(oks) == 0 || (!end.IsZero() && end.Before(l.stopped)) {
			continue
		}
		ref := oks[len(oks)-1].recv
		for _, a := range l.attempts {
			if a.code != 0 || a.recv.Before(ref) {
				continue
			}
			t := a.recv
			for _, ft := range r.faults {
				if ft.paused == a.member && ft.from.Before(a.recv) && ft.to.After(a.sent) {
					t = ltLater(t, ft.to)
				}
			}
			ref = ltLater(ref, t)
		}
		f.lateChecked++
		// A new leader holds a lease by the windows of the one before for
		// 1.5 TTL after it applies them, as it cannot know what keepalives
		// that leader answered under them: so a renewal less than half a
		// TTL (and an election) after a leader change may end 1.5 TTL after
		// the change. Only a leader that led from then on is stable.
		stableDL, _ := ltDeadline(commits, r.obsEnd, ref, l.ttl+ltStableSlack)
		changed := r.changeIn(ref.Add(-l.ttl/2-ltElectionTimeout), stableDL.Add(ltChangeMargin))
		bound, what := l.ttl+ltStableSlack, "TTL + 1s under a stable leader"
		if changed {
			bound, what = 2*l.ttl+ltElectionTimeout, "2 TTL + an election timeout across leader changes"
		}
		dl, credit := ltDeadline(commits, r.obsEnd, ref, bound)
		switch {
		case gone.IsZero():
			violate("bounded late: %s: its holder last renewed it at %s, and it had not ended by the end of the run (%s), past %s (%s with %s without a leader able to commit); %s",
				name, r.at(ref), r.at(r.obsEnd), r.at(dl), what, credit.Round(time.Millisecond), r.context(ref, r.obsEnd))
			continue
		case l.lastPresent.After(dl):
			violate("bounded late: %s: its holder last renewed it at %s, and a consistent read sent at %s still found its key, past %s (%s with %s without a leader able to commit); it was seen gone at %s; %s",
				name, r.at(ref), r.at(l.lastPresent), r.at(dl), what, credit.Round(time.Millisecond), r.at(gone), r.context(ref, gone))
		}
		late := gone.Sub(ref)
		if changed {
			f.changed.add(late, l.ttl, credit, l.id)
		} else {
			f.stable.add(late, l.ttl, credit, l.id)
		}
		// The words, "while the leader stays", read as no leader
		// change between the renewal and the end: noted, not failed.
		if changed && !r.changeIn(ref, gone.Add(ltChangeMargin)) {
			if literal, lc := ltDeadline(commits, r.obsEnd, ref, l.ttl+ltStableSlack); gone.After(literal) {
				f.literal++
				f.notes = append(f.notes, fmt.Sprintf("note: %s ended %s after its last renewal at %s with no leader change in between, more than TTL + 1s (%s without a leader able to commit), as its renewal came within TTL/2 + 1s of one: %s",
					name, late.Round(time.Millisecond), r.at(ref), lc.Round(time.Millisecond), r.context(ref.Add(-l.ttl/2-ltElectionTimeout), gone)))
			}
		}
	}
	return f
}

// ltOrdinal is 1st, 2nd, 3rd...
func ltOrdinal(n int) string {
	switch {
	case n%100 >= 11 && n%100 <= 13:
		return fmt.Sprintf("%dth", n)
	case n%10 == 1:
		return fmt.Sprintf("%dst", n)
	case n%10 == 2:
		return fmt.Sprintf("%dnd", n)
	case n%10 == 3:
		return fmt.Sprintf("%drd", n)
	}
	return fmt.Sprintf("%dth", n)
}

// ltBool is 1 for true.
func ltBool(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestLeaseTimingCheck proves that TestLeaseTiming's check catches what
// it is for, on hand-made runs: a lease that ends early, a renewing holder
// losing its key, a lease that ends late or never, members deleting a
// lease's keys at different indexes or for another reason; and that it
// takes faults into account: a leader change, time without commits, a
// keepalive held up by a paused member. Without this, a check that passes
// everything would let TestLeaseTiming pass whatever the server does.
func TestLeaseTimingCheck(t *testing.T) {
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	ok := func(s float64) ltAttempt {
		return ltAttempt{sent: at(s), recv: at(s + 0.002), member: 1, code: http.StatusOK}
	}
	const ttl = 2 * time.Second
	type lease struct {
		renewing    bool
		oks         []float64 // keepalives answered 200, when sent
		unknown     []float64 // keepalives without an answer to member 2, sent then and given up a second later
		lost404     float64   // a keepalive answered 404 then, if not 0
		stopped     float64
		deletedAt   float64 // on every member, at index 100; 0: never
		lastPresent float64
	}
	for _, tc := range []struct {
		name    string
		lease   lease
		change  float64    // a new term seen then, if not 0
		gap     [2]float64 // no commit between these, if not zero
		paused  [2]float64 // member 2 paused between these, if not zero
		index3  uint64     // member 3 saw the delete at this index instead, if not 0
		reason3 string     // and with this reason, if not ""
		want    []string   // the rules broken
	}{
		{name: "on time", lease: lease{oks: []float64{1, 1.6, 2.2}, stopped: 3, deletedAt: 4.5, lastPresent: 4.4}},
		{name: "early", lease: lease{oks: []float64{1, 1.6, 2.2}, stopped: 3, deletedAt: 4.1}, want: []string{"never early"}},
		{name: "renewing holder lost its key", lease: lease{renewing: true, oks: []float64{1, 1.6, 2.2, 2.8, 3.4}, lost404: 3.9, stopped: 3.95, deletedAt: 5.3}, want: []string{"never early", "renewing holder lost its key"}},
		{name: "renewing holder with a gap", lease: lease{renewing: true, oks: []float64{1, 3.1}, stopped: 9, deletedAt: 5.3}},
		{name: "late", lease: lease{oks: []float64{1, 2.2}, stopped: 3, deletedAt: 5.4, lastPresent: 5.3}, want: []string{"bounded late"}},
		{name: "late across a leader change", lease: lease{oks: []float64{1, 2.2}, stopped: 3, deletedAt: 7.4, lastPresent: 7.3}, change: 3, want: []string{"bounded late"}},
		{name: "on time across a leader change", lease: lease{oks: []float64{1, 2.2}, stopped: 3, deletedAt: 7.1, lastPresent: 7.1}, change: 3},
		{name: "a leader change before the renewal", lease: lease{oks: []float64{1, 2.2}, stopped: 3, deletedAt: 7.1, lastPresent: 7.1}, change: 1.5},
		{name: "on time, counting time without commits", lease: lease{oks: []float64{1, 2.2}, stopped: 3, deletedAt: 7.1, lastPresent: 7.1}, gap: [2]float64{3, 5}},
		{name: "never", lease: lease{oks: []float64{1, 2.2}, stopped: 3, lastPresent: 29}, want: []string{"bounded late"}},
		{name: "renewed by a keepalive without an answer", lease: lease{oks: []float64{1, 2.2}, unknown: []float64{2.6}, stopped: 3.6, deletedAt: 6.5, lastPresent: 6.5}},
		{name: "renewed by a keepalive a paused member got", lease: lease{oks: []float64{1, 2.2}, unknown: []float64{2.6}, stopped: 3.6, deletedAt: 7.9, lastPresent: 7.8}, paused: [2]float64{2.5, 5}},
		{name: "not renewed by a keepalive a member got before its pause", lease: lease{oks: []float64{1, 2.2}, unknown: []float64{2.6}, stopped: 3.6, deletedAt: 7.9, lastPresent: 7.8}, paused: [2]float64{3.7, 5}, want: []string{"bounded late"}},
		{name: "different indexes", lease: lease{oks: []float64{1, 2.2}, stopped: 3, deletedAt: 4.5}, index3: 101, want: []string{"only the leader decides"}},
		{name: "revoked", lease: lease{oks: []float64{1, 2.2}, stopped: 3, deletedAt: 4.5}, reason3: "revoked", want: []string{"only the leader decides", "only the leader decides"}},
		{name: "renewed when gone", lease: lease{oks: []float64{1, 2.2, 4.7}, stopped: 5, deletedAt: 4.5}, want: []string{"never early"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &ltRun{start: t0, watchers: make([]*ltWatcher, 3), terms: []ltTerm{{term: 2, leader: 1, at: at(0)}}, obsEnd: at(30)}
			for i := range r.watchers {
				r.watchers[i] = &ltWatcher{}
			}
			if tc.change != 0 {
				r.terms = append(r.terms, ltTerm{term: 3, leader: 2, at: at(tc.change)})
			}
			for s := 0.0; s < 30; s += 0.1 {
				if tc.gap[1] == 0 || s <= tc.gap[0] || s >= tc.gap[1] {
					r.commits = append(r.commits, at(s))
				}
			}
			if tc.paused[1] != 0 {
				r.faults = append(r.faults, ltFault{what: "pause member 2", paused: 2, from: at(tc.paused[0]), to: at(tc.paused[1])})
			}
			l := &ltLease{id: 7, ttl: ttl, renewing: tc.lease.renewing, granted: at(0.5), keys: []string{"lease/a", "lease/b"}, stopped: at(tc.lease.stopped)}
			for _, s := range tc.lease.oks {
				l.attempts = append(l.attempts, ok(s))
			}
			for _, s := range tc.lease.unknown {
				l.attempts = append(l.attempts, ltAttempt{sent: at(s), recv: at(s + 1), member: 2})
			}
			slices.SortFunc(l.attempts, func(a, b ltAttempt) int { return a.sent.Compare(b.sent) })
			if tc.lease.lost404 != 0 {
				l.lost404 = at(tc.lease.lost404)
			}
			if tc.lease.lastPresent != 0 {
				l.lastPresent = at(tc.lease.lastPresent)
			}
			if tc.lease.deletedAt != 0 {
				l.gone = at(tc.lease.deletedAt + 0.05)
				for m := uint64(1); m <= 3; m++ {
					index, reason := uint64(100), "expired"
					if m == 3 && tc.index3 != 0 {
						index = tc.index3
					}
					if m == 3 && tc.reason3 != "" {
						reason = tc.reason3
					}
					for _, k := range l.keys {
						r.deletes = append(r.deletes, ltDelete{member: m, key: k, lease: 7, index: index, reason: reason, at: at(tc.lease.deletedAt)})
					}
				}
			}
			r.leases = []*ltLease{l}
			f := r.check()
			var got []string
			for _, v := range f.violations {
				rule, _, _ := strings.Cut(v, ":")
				got = append(got, rule)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("rules broken: %q, want %q; the violations: %q", got, tc.want, f.violations)
			}
		})
	}
}
