package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// benchJoinEnv, set to 1, lets BenchmarkJoin run; it takes minutes.
const benchJoinEnv = "RAFTKV_BENCH_JOIN"

// benchJoinKeysEnv overrides how many keys BenchmarkJoin pre-loads.
const benchJoinKeysEnv = "RAFTKV_BENCH_JOIN_KEYS"

// benchJoinQuiet is how long the writer runs before the join, for a
// baseline of its gaps, and after the promotion.
const benchJoinQuiet = 5 * time.Second

// BenchmarkJoin measures a safe --join into a loaded cluster: it pre-loads
// 1 000 000 keys of 64 bytes into three members, then, while one client
// writes without pause (through the three members in turn), starts a
// fourth with --join and waits until it is promoted. It logs the longest
// gap between two acknowledged writes before the join and during it, every
// write that failed, and when the new member was added as a learner, caught
// up and was promoted. Like BenchmarkMemory it is one long measurement,
// made at b.N == 1, and runs only with RAFTKV_BENCH_JOIN=1:
//
//	RAFTKV_BENCH_JOIN=1 go test -run '^$' -bench Join -timeout 30m -v .
func BenchmarkJoin(b *testing.B) {
	if os.Getenv(benchJoinEnv) != "1" {
		b.Skipf("takes minutes; set %s=1 and -timeout 30m to run it", benchJoinEnv)
	}
	keys := benchKeysFromEnv(b, benchJoinKeysEnv)
	var last []benchMetric
	b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
		if b.N == 1 {
			last = measureJoin(b, keys)
		}
		for _, m := range last {
			b.ReportMetric(m.value, m.unit)
		}
		b.ReportMetric(0, "ns/op")
	})
}

// benchWriter is one client writing without pause, and what it saw.
type benchWriter struct {
	mu      sync.Mutex
	acks    []time.Time     // when each acknowledged write was answered
	lats    []time.Duration // how long each took
	errs    []string        // each failed write, with when
	stopC   chan struct{}
	stopped chan struct{}
}

// runBenchWriter starts writing key join-<n> through urls in turn.
func runBenchWriter(hc *http.Client, urls []string) *benchWriter {
	w := &benchWriter{stopC: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(w.stopped)
		for i := 0; ; i++ {
			select {
			case <-w.stopC:
				return
			default:
			}
			start := time.Now()
			err := benchRequest(hc, http.MethodPut, urls[i%len(urls)]+"/keys/join-"+strconv.Itoa(i))
			end := time.Now()
			w.mu.Lock()
			if err != nil {
				w.errs = append(w.errs, fmt.Sprintf("%s: %v", end.Format("15:04:05.000"), err))
			} else {
				w.acks = append(w.acks, end)
				w.lats = append(w.lats, end.Sub(start))
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// stop stops the writer and waits for its last write.
func (w *benchWriter) stop() {
	close(w.stopC)
	<-w.stopped
}

// longestGap is the longest time between two acknowledgements (or from
// from to the first) in [from, to), and when it ended.
func (w *benchWriter) longestGap(from, to time.Time) (time.Duration, time.Time, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	prev, gap, at, n := from, time.Duration(0), time.Time{}, 0
	for _, t := range w.acks {
		if t.Before(from) || !t.Before(to) {
			continue
		}
		n++
		if d := t.Sub(prev); d > gap {
			gap, at = d, t
		}
		prev = t
	}
	if d := to.Sub(prev); d > gap {
		gap, at = d, to
	}
	return gap, at, n
}

// measureJoin is one BenchmarkJoin measurement on a new cluster.
func measureJoin(b *testing.B, keys int) []benchMetric {
	c := startBenchCluster(b)
	loadStart := time.Now()
	benchPreload(b, c.urls(), keys)
	c.waitApplied()
	b.Logf("pre-loaded %d keys in %s", keys, time.Since(loadStart).Round(time.Millisecond))

	w := runBenchWriter(newBenchClient(b, 1), c.urls())
	defer func() {
		select {
		case <-w.stopC:
		default:
			w.stop()
		}
	}()
	quietStart := time.Now()
	time.Sleep(benchJoinQuiet) // the writer's baseline: nothing to wait for but time
	joinStart := time.Now()

	id := c.procs.allocate()
	args := append(c.procs.args(id, benchMembers+1), "--join", c.procs.clients[0], "--log-level", "info")
	joiner := c.procs.start(id, fmt.Sprintf("raftkv%d-joined", id), args...)
	var added, promoted time.Time
	c.procs.eventually(10*time.Minute, fmt.Sprintf("member %d to be promoted", id), func() bool {
		r, err := e2eTry(e2eClient, "GET", c.procs.url(1, "/members"), "")
		var ms []memberView
		if err != nil || r.code != http.StatusOK || json.Unmarshal([]byte(r.body), &ms) != nil {
			return false
		}
		i := slices.IndexFunc(ms, func(m memberView) bool { return m.ID == id })
		if i >= 0 && added.IsZero() {
			added = time.Now()
		}
		if i >= 0 && !ms[i].IsLearner {
			promoted = time.Now()
			return true
		}
		return false
	})
	time.Sleep(benchJoinQuiet) // writes after the promotion, with four voters
	w.stop()
	end := time.Now()

	baseGap, _, baseN := w.longestGap(quietStart, joinStart)
	joinGap, joinGapAt, joinN := w.longestGap(joinStart, promoted)
	afterGap, _, afterN := w.longestGap(promoted, end)
	w.mu.Lock()
	lats := slices.Clone(w.lats)
	errs := slices.Clone(w.errs)
	w.mu.Unlock()
	slices.Sort(lats)
	p := func(q float64) time.Duration { return lats[min(len(lats)-1, int(q*float64(len(lats))))] }

	b.Logf("writer: %d writes acknowledged, %d failed; latency p50 %.1f ms, p99 %.1f ms, max %.1f ms", len(lats), len(errs),
		benchMillis(p(0.5)), benchMillis(p(0.99)), benchMillis(lats[len(lats)-1]))
	b.Logf("longest gap between acknowledged writes: %s before the join (%d writes in %s), %s during it (%d writes, the gap ending %s after the start), %s after the promotion (%d writes)",
		baseGap.Round(time.Millisecond), baseN, benchJoinQuiet, joinGap.Round(time.Millisecond), joinN, joinGapAt.Sub(joinStart).Round(time.Millisecond),
		afterGap.Round(time.Millisecond), afterN)
	for _, e := range errs {
		b.Logf("failed write: %s", e)
	}
	b.Logf("member %d: in the member table %s after its process started, promoted %s after it started",
		id, added.Sub(joinStart).Round(time.Millisecond), promoted.Sub(joinStart).Round(time.Millisecond))
	logged, _ := os.ReadFile(joiner.log)
	for line := range strings.Lines(string(logged)) {
		for _, step := range append(slices.Clone(e2eJoinSteps), "installed snapshot", "promotion refused") {
			if strings.Contains(line, step) {
				b.Logf("member %d logged: %s", id, strings.TrimSpace(line))
			}
		}
	}
	c.procs.eventuallyGet(id, benchKeyPath(keys-1)+"?level=consistent", string(benchValue), time.Minute)
	b.Logf("member %d: RSS %.0f MiB", id, c.rssMiB(id))

	return []benchMetric{
		{benchMillis(baseGap), "ms-gap-before"},
		{benchMillis(joinGap), "ms-gap-join"},
		{float64(len(errs)), "failed-writes"},
		{promoted.Sub(joinStart).Seconds(), "s-to-promoted"},
		{benchMillis(p(0.99)), "p99-ms"},
	}
}
