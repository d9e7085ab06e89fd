package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The lease benchmarks, on raftkv and, beside it in the same run, on etcd
// (etcd_test.go): what keeping leases alive costs (BenchmarkLeaseCost), and
// how long a key outlives its lease once its holder stops renewing, with a
// stable leader and across leader changes (BenchmarkLeaseLateness). They
// take minutes and build etcd, so they run only with RAFTKV_BENCH_LEASES=1:
//
//	RAFTKV_BENCH_LEASES=1 go test -run '^$' -bench 'Lease' -benchtime 1x -timeout 30m -v ./e2e
//
// Each measures once, in the benchmark's own body, and reports its figures
// in sub-benchmarks, one per system (and case), with ns/op 0: the time per
// b.N means nothing here. With -v every line is logged as it is measured;
// without it each sub-benchmark shows its lines at the end, of which go
// test keeps ten. RAFTKV_BENCH_LEASES_ETCD=0 leaves etcd out;
// RAFTKV_BENCH_LEASES_ROUNDS and RAFTKV_BENCH_LEASES_REPS change how often
// each measures.

// benchLeasesEnv, set to 1, lets the lease benchmarks (and TestEtcdHarness)
// run.
const benchLeasesEnv = "RAFTKV_BENCH_LEASES"

// benchLeasesEtcdEnv, set to 0, leaves etcd out of the lease benchmarks.
const benchLeasesEtcdEnv = "RAFTKV_BENCH_LEASES_ETCD"

// benchLeasesRoundsEnv overrides how many rounds BenchmarkLeaseCost
// measures each system in (5).
const benchLeasesRoundsEnv = "RAFTKV_BENCH_LEASES_ROUNDS"

// benchLeasesRepsEnv overrides how often BenchmarkLeaseLateness runs each
// case on each system (5).
const benchLeasesRepsEnv = "RAFTKV_BENCH_LEASES_REPS"

// benchLeasesGate skips b unless benchLeasesEnv is 1.
func benchLeasesGate(b *testing.B) {
	if os.Getenv(benchLeasesEnv) != "1" {
		b.Skipf("takes minutes and builds etcd; set %s=1 and -timeout 30m to run it", benchLeasesEnv)
	}
}

// benchLeasesWithEtcd reports whether the lease benchmarks run etcd too.
func benchLeasesWithEtcd() bool { return os.Getenv(benchLeasesEtcdEnv) != "0" }

// leaseEnvInt is the positive number the environment variable env holds,
// or def if it is unset.
func leaseEnvInt(b *testing.B, env string, def int) int {
	b.Helper()
	s := os.Getenv(env)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive number", env, s)
	}
	return n
}

// leaseLog holds a lease benchmark's log lines by sub-benchmark: a
// benchmark that runs sub-benchmarks has its own log shown only with -v,
// so without it each sub-benchmark shows its lines instead, once.
type leaseLog struct {
	b     *testing.B
	mu    sync.Mutex
	lines map[string][]string
	shown map[string]bool
}

func newLeaseLog(b *testing.B) *leaseLog {
	return &leaseLog{b: b, lines: map[string][]string{}, shown: map[string]bool{}}
}

// logf logs a line of sub-benchmark sub: at once with -v, else later.
func (l *leaseLog) logf(sub, format string, args ...any) {
	l.b.Helper()
	if testing.Verbose() {
		l.b.Logf(format, args...)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines[sub] = append(l.lines[sub], fmt.Sprintf(format, args...))
}

// show logs sub's lines in b, the sub-benchmark, the first time only.
func (l *leaseLog) show(b *testing.B, sub string) {
	b.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.shown[sub] {
		return
	}
	l.shown[sub] = true
	for _, line := range l.lines[sub] {
		b.Log(line)
	}
}

// ---------------------------------------------------------------------
// BenchmarkLeaseCost

const (
	leaseCostLeases  = 10_000           // leases, each with one key
	leaseCostTTL     = 10 * time.Second // their TTL
	leaseCostPeriod  = leaseCostTTL / 3 // each renewed this often: 3 000 keepalives a second
	leaseCostWorkers = 64               // the client goroutines that renew them
	leaseCostPutC    = 64               // the PUT workload's clients, as BenchmarkPut's c=64
	// leaseCostPhase is how long each phase of a round measures. Renewals
	// pause for the two phases without them, and a lease whose last
	// keepalive came just before the pause is next renewed a period plus
	// the pause later: that must stay well inside the TTL.
	leaseCostPhase = 2500 * time.Millisecond
	// leaseCostSettle is how long renewals run after a pause before the
	// next round measures: every lease renewed once more, and raftkv's
	// windows, lapsed during the pause, committed again.
	leaseCostSettle = leaseCostPeriod + 3*time.Second
)

// leaseCostTarget is one system BenchmarkLeaseCost measures.
type leaseCostTarget struct {
	name string
	// pids is the members' process ids, by member number - 1.
	pids func() []int
	// leader is the member that leads.
	leader func() uint64
	// put is one operation of the PUT c=64 workload.
	put benchOp
	// entries is the leader's raft index: log entries so far.
	entries func() uint64
	// check is how many leases and leased keys there are, for the log.
	check func() string
	// started is when its cluster started.
	started time.Time
}

// leasePhaseResult is one measured phase of a round.
type leasePhaseResult struct {
	elapsed  time.Duration
	cpu      []time.Duration // each member's CPU in the phase, by member number - 1
	client   time.Duration   // this process's CPU (the clients)
	puts     benchResult     // the PUTs, if the phase ran them
	ka       leaseKAStats    // the keepalives sent in the phase
	entries  uint64          // log entries the leader appended
	leaderID uint64
}

// cpuPerSec is member m's CPU, in ms per second of the phase.
func (p leasePhaseResult) cpuPerSec(m uint64) float64 {
	return benchMillis(p.cpu[m-1]) / p.elapsed.Seconds()
}

// totalCPUPerSec is every member's CPU together, in ms per second.
func (p leasePhaseResult) totalCPUPerSec() float64 {
	var t float64
	for m := range p.cpu {
		t += p.cpuPerSec(uint64(m + 1))
	}
	return t
}

// followersCPUPerSec is the mean CPU of the members that do not lead, in
// ms per second.
func (p leasePhaseResult) followersCPUPerSec() float64 {
	var t float64
	n := 0
	for m := range p.cpu {
		if uint64(m+1) != p.leaderID {
			t += p.cpuPerSec(uint64(m + 1))
			n++
		}
	}
	return t / float64(max(n, 1))
}

// cpuString is each member's CPU in ms/s, the leader starred.
func (p leasePhaseResult) cpuString() string {
	var parts []string
	for m := range p.cpu {
		star := ""
		if uint64(m+1) == p.leaderID {
			star = "*"
		}
		parts = append(parts, fmt.Sprintf("m%d%s %.0f", m+1, star, p.cpuPerSec(uint64(m+1))))
	}
	return strings.Join(parts, ", ")
}

// leaseCostRound is one round: renewals alone, PUTs with renewals, PUTs
// without, idle without.
type leaseCostRound struct {
	renewals, putWith, putWithout, idle leasePhaseResult
	resume                              leaseKAStats // the keepalives of the settling after the pause
}

// BenchmarkLeaseCost measures what keeping 10 000 leases alive costs: each
// lease has one key and a TTL of 10 s and is renewed every third of it
// (3 000 keepalives a second, from 64 client goroutines, each following a
// redirect to the leader and keeping to it), on a three-member raftkv
// cluster and then on etcd (the same leases renewed through its JSON
// gateway, sent to its leader). The leases are granted by the renewing
// goroutines, which renew those granted first, so that none expires however
// long granting them all takes. In each of several rounds it measures, for
// 2.5 s each: renewals alone; renewals beside BenchmarkPut's PUT c=64;
// then, renewals paused, PUT c=64 alone; and the cluster idle, with its
// leases but no renewals. Renewals resume after the pause with their
// schedule moved on by its length, so no lease comes near its TTL, and run
// a period and 3 s more before the next round. Per round it logs every
// figure; the sub-benchmarks report the medians over rounds: PUT ops/s
// without and with renewals and their ratio, the members' CPU (the
// leader's, the followers' mean, all) in ms per second with renewals alone
// and without, keepalive latency and keepalives answered per second, the
// CPU one keepalive costs the servers, and the log entries the leader
// appends per second with renewals alone.
func BenchmarkLeaseCost(b *testing.B) {
	benchLeasesGate(b)
	rounds := leaseEnvInt(b, benchLeasesRoundsEnv, 5)
	lg := newLeaseLog(b)
	results := map[string][]leaseCostRound{}
	var names []string
	run := func(tgt *leaseCostTarget, r *leaseRenewer) {
		names = append(names, tgt.name)
		results[tgt.name] = measureLeaseCost(b, lg, tgt, r, rounds)
	}
	{
		tgt, r := raftkvLeaseCostTarget(b, lg)
		run(tgt, r)
		r.close()
	}
	if benchLeasesWithEtcd() {
		tgt, r := etcdLeaseCostTarget(b, lg)
		run(tgt, r)
		r.close()
	}
	for _, name := range names {
		rs := results[name]
		b.Run(name, func(b *testing.B) {
			lg.show(b, name)
			med := func(f func(leaseCostRound) float64) float64 {
				var v []float64
				for _, r := range rs {
					v = append(v, f(r))
				}
				return leaseMedian(v)
			}
			b.ReportMetric(med(func(r leaseCostRound) float64 { return r.putWithout.puts.opsPerSec() }), "put-ops/s-without")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return r.putWith.puts.opsPerSec() }), "put-ops/s-with")
			b.ReportMetric(med(func(r leaseCostRound) float64 {
				return r.putWith.puts.opsPerSec() / r.putWithout.puts.opsPerSec()
			}), "put-ratio")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return r.renewals.cpuPerSec(r.renewals.leaderID) }), "leader-cpu-ms/s-renewals")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return r.idle.cpuPerSec(r.idle.leaderID) }), "leader-cpu-ms/s-idle")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return r.renewals.followersCPUPerSec() }), "follower-cpu-ms/s-renewals")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return r.idle.followersCPUPerSec() }), "follower-cpu-ms/s-idle")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return r.renewals.totalCPUPerSec() }), "servers-cpu-ms/s-renewals")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return r.idle.totalCPUPerSec() }), "servers-cpu-ms/s-idle")
			b.ReportMetric(med(func(r leaseCostRound) float64 {
				return 1000 * (r.renewals.totalCPUPerSec() - r.idle.totalCPUPerSec()) / r.renewals.ka.perSec()
			}), "servers-cpu-us/keepalive")
			b.ReportMetric(med(func(r leaseCostRound) float64 {
				return benchMillis(r.renewals.client) / r.renewals.elapsed.Seconds()
			}), "client-cpu-ms/s-renewals")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return r.renewals.ka.perSec() }), "keepalives/s")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return benchMillis(r.renewals.ka.percentile(0.5)) }), "ka-p50-ms")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return benchMillis(r.renewals.ka.percentile(0.99)) }), "ka-p99-ms")
			b.ReportMetric(med(func(r leaseCostRound) float64 { return benchMillis(r.putWith.ka.percentile(0.99)) }), "ka-p99-ms-with-puts")
			b.ReportMetric(med(func(r leaseCostRound) float64 {
				return float64(r.renewals.entries) / r.renewals.elapsed.Seconds()
			}), "entries/s-renewals")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// measureLeaseCost measures rounds rounds of tgt, whose leases r renews.
func measureLeaseCost(b *testing.B, lg *leaseLog, tgt *leaseCostTarget, r *leaseRenewer, rounds int) []leaseCostRound {
	b.Helper()
	// Renewals run two periods before the first round: every lease renewed
	// twice, and raftkv's windows in their steady state.
	time.Sleep(2 * leaseCostPeriod)
	warm := r.stats(time.Time{}, time.Now())
	lg.logf(tgt.name, "%s: warm-up: %s", tgt.name, warm)
	var out []leaseCostRound
	for i := range rounds {
		var rd leaseCostRound
		rd.renewals = measureLeasePhase(b, lg, tgt, r, false)
		rd.putWith = measureLeasePhase(b, lg, tgt, r, true)
		r.pause()
		rd.putWithout = measureLeasePhase(b, lg, tgt, r, true)
		rd.idle = measureLeasePhase(b, lg, tgt, r, false)
		r.resume()
		from := time.Now()
		time.Sleep(leaseCostSettle)
		rd.resume = r.stats(from, time.Now())
		out = append(out, rd)
		lg.logf(tgt.name, "%s round %d: PUT c=%d %.0f ops/s without renewals, %.0f with (%.3f x), p99 %.1f -> %.1f ms, server CPU/PUT %.0f -> %.0f us"+
			" | server CPU ms/s, renewals alone: %s (all %.0f), idle: %s (all %.0f); client %.0f ms/s with renewals alone"+
			" | keepalives alone: %s; beside PUTs: %s; after the pause: %s | log entries/s: %.0f alone, %.0f idle",
			tgt.name, i+1, leaseCostPutC, rd.putWithout.puts.opsPerSec(), rd.putWith.puts.opsPerSec(),
			rd.putWith.puts.opsPerSec()/rd.putWithout.puts.opsPerSec(),
			benchMillis(rd.putWithout.puts.percentile(0.99)), benchMillis(rd.putWith.puts.percentile(0.99)),
			1000*rd.putWithout.totalCPUPerSec()*rd.putWithout.elapsed.Seconds()/float64(rd.putWithout.puts.ops),
			1000*rd.putWith.totalCPUPerSec()*rd.putWith.elapsed.Seconds()/float64(rd.putWith.puts.ops),
			rd.renewals.cpuString(), rd.renewals.totalCPUPerSec(), rd.idle.cpuString(), rd.idle.totalCPUPerSec(),
			benchMillis(rd.renewals.client)/rd.renewals.elapsed.Seconds(),
			rd.renewals.ka, rd.putWith.ka, rd.resume,
			float64(rd.renewals.entries)/rd.renewals.elapsed.Seconds(), float64(rd.idle.entries)/rd.idle.elapsed.Seconds())
	}
	lg.logf(tgt.name, "%s: after %d rounds, %s after its cluster started: %s; keepalives over the whole run: %s",
		tgt.name, rounds, time.Since(tgt.started).Round(time.Second), tgt.check(), r.stats(time.Time{}, time.Now()))
	return out
}

// measureLeasePhase measures one phase of leaseCostPhase: with the PUT
// workload if put, else with nothing but what runs already.
func measureLeasePhase(b *testing.B, lg *leaseLog, tgt *leaseCostTarget, r *leaseRenewer, put bool) leasePhaseResult {
	b.Helper()
	res := leasePhaseResult{leaderID: tgt.leader()}
	pids := tgt.pids()
	cpu0 := make([]time.Duration, len(pids))
	for i, pid := range pids {
		cpu0[i] = benchCPU(b, pid)
	}
	client0 := benchCPU(b, os.Getpid())
	entries0 := tgt.entries()
	start := time.Now()
	if put {
		var err error
		if res.puts, err = leaseRunFor(leaseCostPhase, leaseCostPutC, tgt.put); err != nil {
			b.Fatalf("%s: PUT c=%d: %v", tgt.name, leaseCostPutC, err)
		}
	} else {
		time.Sleep(leaseCostPhase)
	}
	end := time.Now()
	res.elapsed = end.Sub(start)
	res.client = benchCPU(b, os.Getpid()) - client0
	for i, pid := range pids {
		res.cpu = append(res.cpu, benchCPU(b, pid)-cpu0[i])
	}
	res.entries = tgt.entries() - entries0
	res.ka = r.stats(start, end)
	if now := tgt.leader(); now != res.leaderID {
		lg.logf(tgt.name, "%s: the leader moved from member %d to %d during a phase", tgt.name, res.leaderID, now)
	}
	return res
}

// leaseRunFor runs op over c workers, each one operation after another, for
// d, and returns what it measured; it stops at the first error.
func leaseRunFor(d time.Duration, c int, op benchOp) (benchResult, error) {
	lats := make([][]time.Duration, c)
	errs := make([]error, c)
	var failed atomic.Bool
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range c {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			for i := 0; !failed.Load(); i++ {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				if err := op(w, i, rng); err != nil {
					errs[w] = err
					failed.Store(true)
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return benchResult{}, err
	}
	all := slices.Concat(lats...)
	slices.Sort(all)
	return benchResult{ops: len(all), elapsed: elapsed, lat: all}, nil
}

// leaseMedian is the median of v (the lower of the middle two).
func leaseMedian(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[(len(v)-1)/2]
}

// leaseRenewer grants n leases and keeps them alive on a fixed schedule,
// spread over workers goroutines: worker w owns the leases j with
// j%workers == w and does one thing at a time. It grants lease j at phase
// j/n of the first period (or as soon as it can, if it is behind), and
// renews each lease a period after its grant and every period after that.
// Renewals come before grants: however long granting them all takes, a
// lease granted is renewed on time (the cluster allowing), so none expires
// while the others are still being granted. A worker that falls behind
// renews at once until it has caught up, and never more than a period
// after the last answer. pause stops it; resume moves the schedule on by
// the length of the pause.
type leaseRenewer struct {
	n         int
	period    time.Duration
	workers   int
	grant     func(w, j int) (int64, error)
	keepAlive func(w int, id int64) (redirected bool, err error)

	mu       sync.Mutex
	idle     *sync.Cond // signalled when inflight drops to 0
	start    time.Time
	shift    time.Duration // how long the pauses so far lasted
	pausedAt time.Time
	gate     chan struct{} // while paused: closed at resume
	inflight int
	failed   error // a grant that failed for good

	granted    atomic.Int64
	grantedAll chan struct{} // closed once every lease is granted, or a grant failed
	doneOnce   sync.Once

	logs []*leaseKALog // by worker
	stop chan struct{}
	wg   sync.WaitGroup
}

// leaseDue is a granted lease and when it is next due, in schedule time:
// since the renewer started, less the pauses.
type leaseDue struct {
	due time.Duration
	id  int64
}

// startLeaseRenewer starts granting n leases and renewing them.
func startLeaseRenewer(n int, period time.Duration, workers int, grant func(w, j int) (int64, error), keepAlive func(w int, id int64) (bool, error)) *leaseRenewer {
	r := &leaseRenewer{n: n, period: period, workers: workers, grant: grant, keepAlive: keepAlive,
		start: time.Now(), grantedAll: make(chan struct{}), stop: make(chan struct{})}
	r.idle = sync.NewCond(&r.mu)
	for w := range workers {
		r.logs = append(r.logs, &leaseKALog{})
		r.wg.Go(func() { r.work(w) })
	}
	return r
}

// leaseGrantAttempts bounds how often the renewer tries to grant a lease.
const leaseGrantAttempts = 10

// work is worker w's loop.
func (r *leaseRenewer) work(w int) {
	var mine []int // the leases to grant, in order
	for j := w; j < r.n; j += r.workers {
		mine = append(mine, j)
	}
	var due []leaseDue // the granted leases, earliest due first
	log := r.logs[w]
	for {
		const (
			none = iota
			renew
			grant
		)
		act, wait := none, time.Duration(-1)
		r.mu.Lock()
		gate := r.gate
		now := time.Since(r.start) - r.shift
		if gate == nil {
			switch {
			case len(due) > 0 && due[0].due <= now:
				act = renew
			case len(mine) > 0 && time.Duration(mine[0])*r.period/time.Duration(r.n) <= now:
				act = grant
			default:
				if len(due) > 0 {
					wait = due[0].due - now
				}
				if len(mine) > 0 {
					if g := time.Duration(mine[0])*r.period/time.Duration(r.n) - now; wait < 0 || g < wait {
						wait = g
					}
				}
			}
			if act != none {
				r.inflight++
			}
		}
		r.mu.Unlock()
		switch {
		case gate != nil:
			select {
			case <-gate:
			case <-r.stop:
				return
			}
			continue
		case act == none && wait < 0:
			return // nothing to grant or renew
		case act == none:
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-r.stop:
				t.Stop()
				return
			}
			continue
		}

		var next leaseDue
		if act == renew {
			next = due[0]
			due = due[1:]
			sent := time.Now()
			redirected, err := r.keepAlive(w, next.id)
			ka := leaseKA{sent: sent, lat: time.Since(sent), redirected: redirected, err: err}
			log.mu.Lock()
			log.kas = append(log.kas, ka)
			log.mu.Unlock()
			next.due += r.period
		} else {
			var err error
			for attempt := 1; ; attempt++ {
				if next.id, err = r.grant(w, mine[0]); err == nil || attempt == leaseGrantAttempts {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				r.mu.Lock()
				r.failed = cmp.Or(r.failed, fmt.Errorf("grant lease %d: %w", mine[0], err))
				r.inflight--
				r.idle.Broadcast()
				r.mu.Unlock()
				r.doneOnce.Do(func() { close(r.grantedAll) })
				return
			}
			mine = mine[1:]
			if r.granted.Add(1) == int64(r.n) {
				r.doneOnce.Do(func() { close(r.grantedAll) })
			}
			next.due = time.Duration(math.MaxInt64)
		}
		r.mu.Lock()
		// Never more than a period after this answer.
		next.due = min(next.due, time.Since(r.start)-r.shift+r.period)
		if r.inflight--; r.inflight == 0 {
			r.idle.Broadcast()
		}
		r.mu.Unlock()
		i, _ := slices.BinarySearchFunc(due, next.due, func(d leaseDue, t time.Duration) int { return cmp.Compare(d.due, t) })
		due = slices.Insert(due, i, next)
		select {
		case <-r.stop:
			return
		default:
		}
	}
}

// waitGranted waits until every lease is granted and returns how long that
// took, or the error of a grant that failed.
func (r *leaseRenewer) waitGranted() (time.Duration, error) {
	<-r.grantedAll
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Since(r.start), r.failed
}

// pause stops the keepalives, and returns once none is in flight.
func (r *leaseRenewer) pause() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gate, r.pausedAt = make(chan struct{}), time.Now()
	for r.inflight > 0 {
		r.idle.Wait()
	}
}

// resume starts the keepalives again, each lease's next one as much later
// as the pause lasted.
func (r *leaseRenewer) resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.shift += time.Since(r.pausedAt)
	close(r.gate)
	r.gate = nil
}

// close stops the workers and waits for them.
func (r *leaseRenewer) close() {
	close(r.stop)
	r.mu.Lock()
	if r.gate != nil {
		close(r.gate)
		r.gate = nil
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// leaseKA is one keepalive sent.
type leaseKA struct {
	sent       time.Time
	lat        time.Duration
	redirected bool
	err        error
}

// leaseKALog is what one worker sent.
type leaseKALog struct {
	mu  sync.Mutex
	kas []leaseKA
}

// leaseKAStats sums up the keepalives sent in a span of time.
type leaseKAStats struct {
	span       time.Duration
	ok         int
	redirected int
	errs       int
	firstErr   error
	lat        []time.Duration // of those answered, sorted
}

// perSec is the keepalives answered per second.
func (s leaseKAStats) perSec() float64 { return float64(s.ok) / s.span.Seconds() }

// percentile is the latency that a fraction p of the keepalives answered
// did not exceed.
func (s leaseKAStats) percentile(p float64) time.Duration { return benchPercentile(s.lat, p) }

// String is the figures for the log.
func (s leaseKAStats) String() string {
	str := fmt.Sprintf("%d answered (%.0f/s), p50 %.2f ms, p99 %.2f ms, max %.1f ms",
		s.ok, s.perSec(), benchMillis(s.percentile(0.5)), benchMillis(s.percentile(0.99)), benchMillis(s.percentile(1)))
	if s.redirected > 0 {
		str += fmt.Sprintf(", %d redirected", s.redirected)
	}
	if s.errs > 0 {
		str += fmt.Sprintf(", %d FAILED (first: %v)", s.errs, s.firstErr)
	}
	return str
}

// stats sums up the keepalives sent in [from, to); from zero is the start.
func (r *leaseRenewer) stats(from, to time.Time) leaseKAStats {
	if from.IsZero() {
		from = r.start
	}
	s := leaseKAStats{span: to.Sub(from)}
	for _, log := range r.logs {
		log.mu.Lock()
		for _, ka := range log.kas {
			if ka.sent.Before(from) || !ka.sent.Before(to) {
				continue
			}
			if ka.redirected {
				s.redirected++
			}
			if ka.err != nil {
				s.errs++
				if s.firstErr == nil {
					s.firstErr = ka.err
				}
				continue
			}
			s.ok++
			s.lat = append(s.lat, ka.lat)
		}
		log.mu.Unlock()
	}
	slices.Sort(s.lat)
	return s
}

// leaseWaitGranted waits until r has granted every lease, and logs how
// long that took.
func leaseWaitGranted(b *testing.B, lg *leaseLog, name string, r *leaseRenewer) {
	b.Helper()
	took, err := r.waitGranted()
	if err != nil {
		r.close()
		b.Fatalf("%s: %v", name, err)
	}
	lg.logf(name, "%s: granted %d leases of %s, each with a key, in %s, renewing them meanwhile: %s",
		name, r.n, leaseCostTTL, took.Round(time.Millisecond), r.stats(time.Time{}, time.Now()))
}

// leaseKeyPath is the request path of lease j's key in raftkv.
func leaseKeyPath(j int) string { return "/keys/lease/" + strconv.Itoa(j) }

// raftkvLeaseCostTarget starts a raftkv cluster with leaseCostLeases
// leases and a renewer that keeps them alive.
func raftkvLeaseCostTarget(b *testing.B, lg *leaseLog) (*leaseCostTarget, *leaseRenewer) {
	b.Helper()
	started := time.Now()
	c := startBenchCluster(b)
	urls := c.urls()
	// The empty cluster, idle, for the log: what the leases cost idle.
	leader := c.waitLeader()
	empty := leaseIdleCPU(b, c.procs.pids())
	putOp := benchHTTPOp(newBenchClient(b, leaseCostPutC), urls, http.MethodPut, "")
	leaseEmptyPut(b, lg, "raftkv", putOp)
	lg.logf("raftkv", "raftkv: idle CPU of all members before the leases: %.0f ms/s (leader: member %d)", empty, leader)

	// Each lease is granted on one member and its key written through
	// the next; keepalives go where their worker was last redirected.
	hc := newBenchClient(b, leaseCostWorkers)
	bases := make([]string, leaseCostWorkers) // where each worker sends keepalives: the leader once redirected
	for w := range bases {
		bases[w] = urls[w%len(urls)]
	}
	r := startLeaseRenewer(leaseCostLeases, leaseCostPeriod, leaseCostWorkers,
		func(w, j int) (int64, error) {
			id, err := raftkvGrant(hc, urls[j%len(urls)], leaseCostTTL)
			if err == nil {
				_, err = raftkvPutLeased(hc, urls[(j+1)%len(urls)]+leaseKeyPath(j), benchValue, id)
			}
			return id, err
		},
		func(w int, id int64) (bool, error) {
			redirected, base, err := raftkvKeepAlive(hc, bases[w], id)
			bases[w] = base
			return redirected, err
		})
	leaseWaitGranted(b, lg, "raftkv", r)
	pids := func() []int {
		var ps []int
		for id := uint64(1); id <= benchMembers; id++ {
			ps = append(ps, c.procs.running[id].cmd.Process.Pid)
		}
		return ps
	}
	return &leaseCostTarget{
		name:    "raftkv",
		started: started,
		pids:    pids,
		leader:  c.waitLeader,
		put:     putOp,
		entries: func() uint64 {
			st, _ := c.status(c.waitLeader())
			return st.AppliedIndex
		},
		check: func() string {
			leader := c.waitLeader()
			m := raftkvMetrics(c.procs.url(leader, ""), "raftkv_leases", "raftkv_leases_expired_total", "raftkv_lease_keepalives_total")
			return fmt.Sprintf("the leader's (member %d) metrics: %s", leader, m)
		},
	}, r
}

// leaseEmptyPut measures PUT c=64 once on the cluster before it has
// leases, for the log: a reference, not alternated with the rounds.
func leaseEmptyPut(b *testing.B, lg *leaseLog, name string, op benchOp) {
	b.Helper()
	benchWarm(b, leaseCostPutC, op)
	res, err := leaseRunFor(leaseCostPhase, leaseCostPutC, op)
	if err != nil {
		b.Fatalf("%s: PUT c=%d: %v", name, leaseCostPutC, err)
	}
	lg.logf(name, "%s: PUT c=%d before any lease exists: %.0f ops/s, p99 %.1f ms", name, leaseCostPutC, res.opsPerSec(), benchMillis(res.percentile(0.99)))
}

// leaseIdleCPU is the CPU of the processes pids together, in ms per
// second, over leaseCostPhase of nothing.
func leaseIdleCPU(b *testing.B, pids []int) float64 {
	b.Helper()
	cpu0, start := benchCPU(b, pids...), time.Now()
	time.Sleep(leaseCostPhase)
	return benchMillis(benchCPU(b, pids...)-cpu0) / time.Since(start).Seconds()
}

// raftkvMetrics is the named series of the /metrics of the member at base,
// as "name value" pairs, for the log.
func raftkvMetrics(base string, names ...string) string {
	r, err := e2eTry(e2eClient, http.MethodGet, base+"/metrics", "")
	if err != nil {
		return err.Error()
	}
	var out []string
	sc := bufio.NewScanner(strings.NewReader(r.body))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && slices.Contains(names, fields[0]) {
			out = append(out, fields[0]+" "+fields[1])
		}
	}
	return strings.Join(out, ", ")
}

// raftkvGrant grants a lease of ttl at the member at base.
func raftkvGrant(hc *http.Client, base string, ttl time.Duration) (int64, error) {
	resp, err := hc.Post(base+"/leases", "application/json", strings.NewReader(fmt.Sprintf(`{"ttl": %d}`, int64(ttl/time.Second))))
	if err != nil {
		return 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	var v struct {
		ID  int64 `json:"id"`
		TTL int64 `json:"ttl"`
	}
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &v) != nil || v.ID == 0 {
		return 0, fmt.Errorf("POST %s/leases: %d %q, want 201 with a lease", base, resp.StatusCode, body)
	}
	return v.ID, nil
}

// raftkvPutLeased PUTs value at url attached to lease id, and returns the
// write's index.
func raftkvPutLeased(hc *http.Client, url string, value []byte, id int64) (uint64, error) {
	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(value))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Lease", strconv.FormatInt(id, 10))
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusNoContent {
		return 0, fmt.Errorf("PUT %s with lease %d: %d %q", url, id, resp.StatusCode, body)
	}
	return strconv.ParseUint(resp.Header.Get("X-Raft-Index"), 10, 64)
}

// errRaftkvLeaseGone is a keepalive answered 404: the lease has ended.
var errRaftkvLeaseGone = errors.New("raftkv lease not found")

// raftkvKeepAlive renews lease id at the member at base, following one
// redirect to the leader, and returns whether it did and the base URL to
// send the next keepalive to (the leader's, once redirected).
func raftkvKeepAlive(hc *http.Client, base string, id int64) (redirected bool, next string, err error) {
	path := "/leases/" + strconv.FormatInt(id, 10) + "/keepalive"
	url := base + path
	for attempt := 0; ; attempt++ {
		resp, err := hc.Post(url, "", nil)
		if err != nil {
			return redirected, base, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return redirected, base, err
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			return redirected, base, nil
		case resp.StatusCode == http.StatusNotFound:
			return redirected, base, fmt.Errorf("POST %s: %w: %s", url, errRaftkvLeaseGone, bytes.TrimSpace(body))
		case resp.StatusCode == http.StatusTemporaryRedirect && attempt == 0:
			url = resp.Header.Get("Location")
			b, ok := strings.CutSuffix(url, path)
			if !ok {
				return redirected, base, fmt.Errorf("POST %s: redirected to %q", base+path, url)
			}
			base, redirected = b, true
		default:
			return redirected, base, fmt.Errorf("POST %s: %d %q", url, resp.StatusCode, bytes.TrimSpace(body))
		}
	}
}

// etcdLeaseCostTarget starts an etcd cluster with leaseCostLeases leases
// and a renewer that keeps them alive, through its leader's gateway.
func etcdLeaseCostTarget(b *testing.B, lg *leaseLog) (*leaseCostTarget, *leaseRenewer) {
	b.Helper()
	started := time.Now()
	c := startEtcdCluster(b)
	urls := c.urls()
	leader := c.waitLeader(time.Minute)
	empty := leaseIdleCPU(b, c.procs.pids())
	putClient := newBenchClient(b, leaseCostPutC)
	putOp := func(w, i int, rng *rand.Rand) error {
		return etcdPut(putClient, urls[(w+i)%len(urls)], "bench-"+strconv.Itoa(rng.IntN(benchKeys)), benchValue, 0)
	}
	leaseEmptyPut(b, lg, "etcd", putOp)
	lg.logf("etcd", "etcd: idle CPU of all members before the leases: %.0f ms/s (leader: member %d)", empty, leader)

	// Each lease is granted on one member and its key written through the
	// next; keepalives go to the leader (etcd's followers would forward
	// them to it).
	hc := newBenchClient(b, leaseCostWorkers)
	leaderURL := c.url(leader)
	r := startLeaseRenewer(leaseCostLeases, leaseCostPeriod, leaseCostWorkers,
		func(w, j int) (int64, error) {
			id, err := etcdGrant(hc, urls[j%len(urls)], leaseCostTTL)
			if err == nil {
				err = etcdPut(hc, urls[(j+1)%len(urls)], "lease/"+strconv.Itoa(j), benchValue, id)
			}
			return id, err
		},
		func(w int, id int64) (bool, error) {
			_, err := etcdKeepAlive(hc, leaderURL, id)
			return false, err
		})
	leaseWaitGranted(b, lg, "etcd", r)
	return &leaseCostTarget{
		name:    "etcd",
		started: started,
		pids: func() []int {
			var ps []int
			for n := uint64(1); n <= etcdMembers; n++ {
				ps = append(ps, c.pid(n))
			}
			return ps
		},
		leader: func() uint64 { return c.waitLeader(30 * time.Second) },
		put:    putOp,
		entries: func() uint64 {
			st, _ := c.status(c.waitLeader(30 * time.Second))
			return uint64(st.RaftIndex)
		},
		check: func() string {
			var r struct {
				Count etcdInt `json:"count"`
			}
			err := etcdCall(c.hc, c.url(1), "/v3/kv/range", map[string]any{
				"key": etcdB64("lease/"), "range_end": etcdB64("lease0"), "count_only": true,
			}, &r)
			var leases struct {
				Leases []struct{} `json:"leases"`
			}
			err2 := etcdCall(c.hc, c.url(1), "/v3/lease/leases", struct{}{}, &leases)
			return fmt.Sprintf("%d leased keys (%v), %d leases (%v)", r.Count, err, len(leases.Leases), err2)
		},
	}, r
}

// ---------------------------------------------------------------------
// BenchmarkLeaseLateness

const (
	latenessTTL      = 5 * time.Second // the lease's TTL
	latenessRenewals = 3               // keepalives before the holder stops, a third of a TTL apart
	latenessPoll     = 15 * time.Millisecond
	latenessKillLag  = 300 * time.Millisecond // from the last keepalive to the first SIGKILL
)

// The cases of BenchmarkLeaseLateness.
const (
	latenessStable  = "stable"
	latenessChanges = "leader-changes"
)

// latenessSystem is a cluster BenchmarkLeaseLateness measures, members
// numbered 1 to 3.
type latenessSystem interface {
	name() string
	grant(ttl time.Duration) (int64, error)
	// attach puts key attached to lease id, and returns the write's index
	// (raftkv) or revision (etcd).
	attach(id int64, key string) (uint64, error)
	// keepAlive renews lease id at the leader.
	keepAlive(id int64) error
	// has reads key on member n, linearizably; hc has a short timeout.
	has(hc *http.Client, n uint64, key string) (bool, error)
	// leader is the running member every running member names leader, and
	// its term.
	leader() (n, term uint64, ok bool)
	// knows reports whether member n runs and names leader as leader.
	knows(n, leader uint64) bool
	// up reports whether member n runs; safe from any goroutine.
	up(n uint64) bool
	kill(n uint64)
	start(n uint64)
	// remaining is how long leader n says lease id has left, for the log.
	remaining(n uint64, id int64) string
	// verify checks, after the key is gone, that its lease ended it.
	verify(key string, index uint64) error
	cluster() *e2eCluster
}

// latenessTrial is one measurement.
type latenessTrial struct {
	lateness time.Duration // key gone - (last keepalive + TTL)
	bracket  time.Duration // between the last read that found it and the first that did not
	notes    string
}

// BenchmarkLeaseLateness measures how long a key outlives its lease once
// its holder stops renewing, on raftkv and etcd alternately, on one
// three-member cluster of each: grant a lease of 5 s, attach a key, renew it
// three times a third of a TTL apart, and stop at a, the moment the last
// keepalive is answered; from then one goroutine per member reads the key
// linearizably every 15 ms, and the first answer that it is gone is when it
// was seen gone: lateness = seen - (a + TTL). Case stable leaves the
// leader alone; case leader-changes kills it with SIGKILL 0.3 s after a,
// restarts it once the others have elected a leader and it names that
// leader, then kills the new leader too and restarts it once a third is
// elected, so that a majority always runs. A negative lateness would be a
// lease ended before its TTL. Each sub-benchmark reports min, median and
// max lateness in seconds; each trial is logged.
func BenchmarkLeaseLateness(b *testing.B) {
	benchLeasesGate(b)
	reps := leaseEnvInt(b, benchLeasesRepsEnv, 5)
	lg := newLeaseLog(b)
	systems := []latenessSystem{newRaftkvLateness(b)}
	if benchLeasesWithEtcd() {
		systems = append(systems, newEtcdLateness(b))
	}
	results := map[string][]latenessTrial{}
	start := time.Now()
	for rep := range reps {
		for _, cs := range []string{latenessStable, latenessChanges} {
			for _, sys := range systems {
				tr := latenessRun(b, sys, cs, rep)
				results[sys.name()+"/"+cs] = append(results[sys.name()+"/"+cs], tr)
				lg.logf(sys.name()+"/"+cs, "%s %s #%d: lateness %+.3f s (seen within %d ms); %s [%s]",
					sys.name(), cs, rep+1, tr.lateness.Seconds(), tr.bracket.Milliseconds(), tr.notes, time.Since(start).Round(time.Second))
			}
		}
	}
	for _, cs := range []string{latenessStable, latenessChanges} {
		for _, sys := range systems {
			trs := results[sys.name()+"/"+cs]
			var v []float64
			early := 0
			for _, tr := range trs {
				v = append(v, tr.lateness.Seconds())
				if tr.lateness < 0 {
					early++
				}
			}
			slices.Sort(v)
			lg.logf(sys.name()+"/"+cs, "%s %s: lateness min %.3f s, median %.3f s, max %.3f s over %d trials (%d before the TTL)",
				sys.name(), cs, v[0], leaseMedian(v), v[len(v)-1], len(v), early)
			b.Run(sys.name()+"/"+cs, func(b *testing.B) {
				lg.show(b, sys.name()+"/"+cs)
				b.ReportMetric(v[0], "lateness-min-s")
				b.ReportMetric(leaseMedian(v), "lateness-median-s")
				b.ReportMetric(v[len(v)-1], "lateness-max-s")
				b.ReportMetric(float64(early), "ended-early")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// latenessRun is one trial of case cs on sys.
func latenessRun(b *testing.B, sys latenessSystem, cs string, rep int) latenessTrial {
	b.Helper()
	c := sys.cluster()
	// A settled cluster: every member runs and names the leader.
	var leader, term uint64
	c.eventually(time.Minute, sys.name()+": every member to run and name one leader", func() bool {
		var ok bool
		if leader, term, ok = sys.leader(); !ok {
			return false
		}
		for n := uint64(1); n <= 3; n++ {
			if !sys.knows(n, leader) {
				return false
			}
		}
		return true
	})
	key := fmt.Sprintf("lateness-%s-%d-%d", cs, rep, time.Now().UnixNano())
	id, err := sys.grant(latenessTTL)
	if err != nil {
		b.Fatalf("%s: grant: %v", sys.name(), err)
	}
	index, err := sys.attach(id, key)
	if err != nil {
		b.Fatalf("%s: attach %s to lease %d: %v", sys.name(), key, id, err)
	}
	var a time.Time
	for range latenessRenewals {
		time.Sleep(latenessTTL / 3)
		if err := sys.keepAlive(id); err != nil {
			b.Fatalf("%s: keepalive of lease %d: %v", sys.name(), id, err)
		}
		a = time.Now()
	}
	expiry := a.Add(latenessTTL)

	// The pollers, one per member, from a on.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var lastSeen, goneAt time.Time // the last read that found the key was sent at lastSeen
	var pollErrs int
	gone := make(chan struct{})
	var goneOnce sync.Once
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: e2eClientTLS()}, Timeout: time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for n := uint64(1); n <= 3; n++ {
		wg.Go(func() {
			for ctx.Err() == nil {
				if !sys.up(n) {
					time.Sleep(latenessPoll)
					continue
				}
				sent := time.Now()
				ok, err := sys.has(hc, n, key)
				answered := time.Now()
				mu.Lock()
				switch {
				case err != nil:
					pollErrs++
				case ok:
					lastSeen = leaseLater(lastSeen, sent)
				default:
					if goneAt.IsZero() || answered.Before(goneAt) {
						goneAt = answered
					}
					goneOnce.Do(func() { close(gone) })
				}
				mu.Unlock()
				time.Sleep(latenessPoll)
			}
		})
	}

	var notes []string
	since := func(t time.Time) string { return fmt.Sprintf("a%+.2fs", t.Sub(a).Seconds()) }
	if cs == latenessChanges {
		killAndReplace := func(victim uint64) uint64 {
			sys.kill(victim)
			killed := time.Now()
			var next uint64
			c.eventually(time.Minute, fmt.Sprintf("%s: a leader other than member %d", sys.name(), victim), func() bool {
				var ok bool
				next, _, ok = sys.leader()
				return ok && next != victim
			})
			elected := time.Now()
			rem := sys.remaining(next, id)
			sys.start(victim)
			c.eventually(time.Minute, fmt.Sprintf("%s: restarted member %d to name leader %d", sys.name(), victim, next), func() bool {
				return sys.knows(victim, next)
			})
			notes = append(notes, fmt.Sprintf("killed %d at %s, %d elected at %s (its lease: %s), %d back at %s",
				victim, since(killed), next, since(elected), rem, victim, since(time.Now())))
			return next
		}
		time.Sleep(time.Until(a.Add(latenessKillLag)))
		second := killAndReplace(leader)
		third := killAndReplace(second)
		notes = append(notes, fmt.Sprintf("leaders %d, %d, %d", leader, second, third))
	}

	select {
	case <-gone:
	case <-time.After(time.Until(expiry.Add(2*latenessTTL + 20*time.Second))):
		mu.Lock()
		defer mu.Unlock()
		b.Fatalf("%s %s: the key of lease %d still exists %s after its last keepalive (poll errors %d)", sys.name(), cs, id, time.Since(a).Round(time.Millisecond), pollErrs)
	}
	cancel()
	wg.Wait()
	mu.Lock()
	tr := latenessTrial{lateness: goneAt.Sub(expiry), bracket: goneAt.Sub(lastSeen)}
	notes = append(notes, fmt.Sprintf("gone at %s, %d poll errors", since(goneAt), pollErrs))
	mu.Unlock()
	if cs == latenessStable {
		if now, nowTerm, ok := sys.leader(); !ok || now != leader || nowTerm != term {
			notes = append(notes, fmt.Sprintf("LEADER CHANGED: member %d term %d before, %d term %d (ok %v) after", leader, term, now, nowTerm, ok))
		} else {
			notes = append(notes, fmt.Sprintf("leader %d throughout", leader))
		}
	}
	if err := sys.verify(key, index); err != nil {
		notes = append(notes, "VERIFY: "+err.Error())
	}
	tr.notes = strings.Join(notes, "; ")
	return tr
}

// later is the later of a and b.
func leaseLater(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// raftkvLateness is a raftkv cluster for BenchmarkLeaseLateness.
type raftkvLateness struct {
	c      *benchCluster
	upFlag [4]atomic.Bool
	starts map[uint64]int
}

func newRaftkvLateness(b *testing.B) *raftkvLateness {
	s := &raftkvLateness{c: startBenchCluster(b), starts: map[uint64]int{}}
	for n := 1; n <= benchMembers; n++ {
		s.upFlag[n].Store(true)
	}
	return s
}

func (s *raftkvLateness) name() string         { return "raftkv" }
func (s *raftkvLateness) cluster() *e2eCluster { return s.c.procs }
func (s *raftkvLateness) up(n uint64) bool     { return s.upFlag[n].Load() }
func (s *raftkvLateness) url(n uint64) string  { return s.c.procs.clients[n-1] }
func (s *raftkvLateness) knows(n, l uint64) bool {
	if !s.up(n) {
		return false
	}
	st, ok := s.c.status(n)
	return ok && st.Leader == l
}

func (s *raftkvLateness) leader() (uint64, uint64, bool) {
	var leader, term uint64
	for n := uint64(1); n <= benchMembers; n++ {
		if !s.up(n) {
			continue
		}
		st, ok := s.c.status(n)
		if !ok || st.Leader == 0 || (leader != 0 && st.Leader != leader) {
			return 0, 0, false
		}
		leader = st.Leader
		if st.ID == leader {
			term = st.Term
		}
	}
	return leader, term, leader != 0 && s.up(leader) && term != 0
}

func (s *raftkvLateness) grant(ttl time.Duration) (int64, error) {
	leader, _, _ := s.leader()
	return raftkvGrant(e2eClient, s.url(max(leader, 1)), ttl)
}

func (s *raftkvLateness) attach(id int64, key string) (uint64, error) {
	leader, _, _ := s.leader()
	return raftkvPutLeased(e2eClient, s.url(max(leader, 1))+"/keys/"+key, []byte("held"), id)
}

func (s *raftkvLateness) keepAlive(id int64) error {
	leader, _, _ := s.leader()
	_, _, err := raftkvKeepAlive(e2eClient, s.url(max(leader, 1)), id)
	return err
}

func (s *raftkvLateness) has(hc *http.Client, n uint64, key string) (bool, error) {
	r, err := e2eTry(hc, http.MethodGet, s.url(n)+"/keys/"+key+"?level="+levelConsistent, "")
	switch {
	case err != nil:
		return false, err
	case r.code == http.StatusOK:
		return true, nil
	case r.code == http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("member %d: %d %q", n, r.code, r.body)
}

func (s *raftkvLateness) kill(n uint64) {
	s.upFlag[n].Store(false)
	p := s.c.procs.expectExit(n)
	p.cmd.Process.Kill()
	<-p.done
}

func (s *raftkvLateness) start(n uint64) {
	s.starts[n]++
	s.c.procs.start(n, fmt.Sprintf("raftkv%d-start%d", n, s.starts[n]+1), s.c.args(n)...)
	s.upFlag[n].Store(true)
}

func (s *raftkvLateness) remaining(n uint64, id int64) string {
	r, err := e2eTry(e2eClient, http.MethodGet, s.url(n)+"/leases/"+strconv.FormatInt(id, 10), "")
	if err != nil {
		return err.Error()
	}
	var v struct {
		Remaining *int64 `json:"remaining"`
	}
	if r.code != http.StatusOK || json.Unmarshal([]byte(r.body), &v) != nil || v.Remaining == nil {
		return fmt.Sprintf("%d %q", r.code, strings.TrimSpace(r.body))
	}
	return fmt.Sprintf("%d s left", *v.Remaining)
}

// verify reads the key's next change after the PUT that attached it from
// the watch history of a member: it must be a delete that names the lease
// expired.
func (s *raftkvLateness) verify(key string, index uint64) error {
	url := fmt.Sprintf("%s/watch/%s?from=%d&limit=1", s.url(1), key, index)
	r, err := e2eTry(e2eClient, http.MethodGet, url, "")
	if err != nil {
		return err
	}
	if r.code != http.StatusOK || !strings.Contains(r.body, "event: delete") || !strings.Contains(r.body, `"reason":"expired"`) {
		return fmt.Errorf("GET %s: %d %q, want a delete event with reason expired", url, r.code, r.body)
	}
	return nil
}

// etcdLateness is an etcd cluster for BenchmarkLeaseLateness.
type etcdLateness struct {
	c      *etcdCluster
	upFlag [4]atomic.Bool
}

func newEtcdLateness(b *testing.B) *etcdLateness {
	s := &etcdLateness{c: startEtcdCluster(b)}
	for n := 1; n <= etcdMembers; n++ {
		s.upFlag[n].Store(true)
	}
	return s
}

func (s *etcdLateness) name() string         { return "etcd" }
func (s *etcdLateness) cluster() *e2eCluster { return s.c.procs }
func (s *etcdLateness) up(n uint64) bool     { return s.upFlag[n].Load() }
func (s *etcdLateness) knows(n, l uint64) bool {
	if !s.up(n) {
		return false
	}
	st, err := s.c.status(n)
	return err == nil && s.c.ids[uint64(st.Leader)] == l
}

func (s *etcdLateness) leader() (uint64, uint64, bool) {
	l, ok := s.c.leader()
	if !ok {
		return 0, 0, false
	}
	st, err := s.c.status(l)
	if err != nil {
		return 0, 0, false
	}
	return l, uint64(st.RaftTerm), true
}

// leaderURL is the leader's client URL, or member 1's while there is none.
func (s *etcdLateness) leaderURL() string {
	l, _, ok := s.leader()
	if !ok {
		l = 1
	}
	return s.c.url(l)
}

func (s *etcdLateness) grant(ttl time.Duration) (int64, error) {
	return etcdGrant(s.c.hc, s.leaderURL(), ttl)
}

func (s *etcdLateness) attach(id int64, key string) (uint64, error) {
	return 0, etcdPut(s.c.hc, s.leaderURL(), key, []byte("held"), id)
}

func (s *etcdLateness) keepAlive(id int64) error {
	_, err := etcdKeepAlive(s.c.hc, s.leaderURL(), id)
	return err
}

func (s *etcdLateness) has(hc *http.Client, n uint64, key string) (bool, error) {
	return etcdHas(hc, s.c.url(n), key)
}

func (s *etcdLateness) kill(n uint64) {
	s.upFlag[n].Store(false)
	s.c.kill(n)
}

func (s *etcdLateness) start(n uint64) {
	s.c.start(n)
	s.upFlag[n].Store(true)
}

func (s *etcdLateness) remaining(n uint64, id int64) string {
	ttl, err := etcdTimeToLive(s.c.hc, s.c.url(n), id)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d s left", ttl)
}

func (s *etcdLateness) verify(string, uint64) error { return nil }
