package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestExactlyOnceCounter is Jepsen's exactly-once counter: a few clients
// increment one key under the nemesis of TestLinearizable. Each reads the
// counter (level=consistent), then PUTs the next number with If-Match of
// the read's ETag and a fresh Idempotency-Key; on 412 it reads again and
// tries again with a new key; without a definite answer (a timeout, a
// broken or refused connection, a 5xx) it sends the same request with the
// same key to other members until there is one. Some first attempts have
// a deadline of a few milliseconds, to make more of those. At the end the
// counter must equal the number of acknowledged increments exactly,
// before and after every member is killed and restarted: no increment
// lost, none applied twice, none applied without being acknowledged.
// Compare-and-set alone does not give that: a retry with a new key of an
// increment that was applied gets 412, and the client increments again.
// RAFTKV_SOAK=10m runs the faults for ten minutes; RAFTKV_SEED replays a seed.
func TestExactlyOnceCounter(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	soak, seed := linearizableFlags(t)
	t.Logf("seed %d (replay the faults with RAFTKV_SEED=%d)", seed, seed)
	faultTime := counterShortFaults
	if soak > 0 {
		faultTime = soak
	}
	if deadline, ok := t.Deadline(); ok {
		if fit := time.Until(deadline) - linearizableCheckTime; fit < faultTime {
			t.Logf("faults cut to %s to fit go test's -timeout", fit.Round(time.Second))
			faultTime = max(fit, 0)
		}
	}
	bin := e2eBuild(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	c := newFaultCluster(t, bin, 3, counterSnapshotCount)
	k := startCounter(c, seed)
	defer k.halt()
	var s faultSummary
	c.nemesis(rng, faultTime, false, k.elapsed, &s)
	k.halt()

	afterFaults := k.read()
	recovery := c.restartAll()
	t.Logf("%s: killed and restarted every member; every member took a write %s later", k.elapsed(), recovery.Round(time.Millisecond))
	s.fault(faultRestartAll, recovery)
	afterRestart := k.read()

	t.Logf("summary: %s", k.summary(afterFaults, afterRestart, s))
	for _, bad := range k.check(afterFaults, afterRestart) {
		t.Errorf("seed %d: %s", seed, bad)
	}
}

const (
	// counterShortFaults is how long a default run of the counter injects
	// faults; it goes on until every fault kind has been injected.
	counterShortFaults = 10 * time.Second
	// counterClients increment the counter at once, so most compare-and-
	// sets collide.
	counterClients = 4
	// counterSnapshotCount makes snapshots frequent, so the idempotency
	// records go through snapshots and restarts from them too.
	counterSnapshotCount = 100
	// counterHastyEvery: one increment in counterHastyEvery is first sent
	// with a deadline of a few milliseconds (see hastyClient), so that
	// many increments apply with their outcome unknown to their client,
	// faults or not.
	counterHastyEvery = 4
	// counterKey is the counter.
	counterKey = "counter"
)

// counter is the clients of TestExactlyOnceCounter and what they learned.
type counter struct {
	c     *faultCluster
	seed  uint64
	start time.Time
	stopC chan struct{}
	wg    sync.WaitGroup
	once  sync.Once

	mu           sync.Mutex
	acked        map[int]uint64   // acknowledged increments: the value written -> its ETag
	ackedTwice   []string         // values two increments were acknowledged for
	versions     versionLog       // the ETag each value was seen with
	refused      int              // increments answered 412
	firstUnknown int              // increments whose first attempt got no definite answer
	replayed     int              // answers carrying Idempotent-Replayed: true
	unresolved   int              // increments still without one after retrying
	unexpected   []string         // answers a correct server never gives
	trails       map[int][]string // number -> the attempts of each increment to it not acknowledged at once
}

// startCounter starts counterClients incrementing against c.
func startCounter(c *faultCluster, seed uint64) *counter {
	k := &counter{c: c, seed: seed, start: time.Now(), stopC: make(chan struct{}), acked: make(map[int]uint64), trails: make(map[int][]string)}
	for i := range counterClients {
		k.wg.Go(func() { k.client(i) })
	}
	return k
}

// halt stops the clients and waits for their last increments, resolved.
func (k *counter) halt() {
	k.once.Do(func() {
		close(k.stopC)
		k.wg.Wait()
	})
}

// stopped reports whether halt has been called.
func (k *counter) stopped() bool {
	select {
	case <-k.stopC:
		return true
	default:
		return false
	}
}

// elapsed is the time since the clients started, for logs.
func (k *counter) elapsed() time.Duration { return time.Since(k.start).Round(time.Millisecond) }

// unexpect notes an answer a correct server never gives.
func (k *counter) unexpect(bad string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.unexpected = append(k.unexpected, bad)
}

// client increments the counter until halted: read, compare-and-set with
// a fresh Idempotency-Key, and without a definite answer the same request
// again until there is one.
func (k *counter) client(index int) {
	rng := rand.New(rand.NewPCG(k.seed, uint64(index)+1))
	hc := workloadHTTPClient()
	defer hc.CloseIdleConnections()
	for seq := 0; !k.stopped(); seq++ {
		n, cond, ok := k.readAt(hc, k.c.targets()[rng.IntN(len(k.c.targets()))])
		if !ok {
			time.Sleep(50 * time.Millisecond) // a client's pause before trying again
			continue
		}
		in := kvInput{op: "put", key: counterKey, value: strconv.Itoa(n + 1), cond: cond}
		idemKey := fmt.Sprintf("inc-%d-%d", index, seq)
		targets := k.c.targets()
		target := targets[rng.IntN(len(targets))]
		first := hc
		if rng.IntN(counterHastyEvery) == 0 {
			first = hastyClient(hc, rng)
		}
		a := attemptKV(first, target, in, idemKey)
		trail := []string{a.String(target)}
		if a.knows == outcomeUnknown && a.bad == "" {
			k.mu.Lock()
			k.firstUnknown++
			k.mu.Unlock()
			var retries []string
			a, retries = resolveKV(hc, k.c.targets, target, in, idemKey, rng)
			trail = append(trail, retries...)
		}
		k.mu.Lock()
		if len(trail) > 1 || a.knows != outcomeKnown || a.out.failed {
			// Not acknowledged, or after retries: what to show if the
			// number it tried to write is missing.
			k.trails[n+1] = append(k.trails[n+1], fmt.Sprintf("%s (If-Match %s): %s", idemKey, in.cond.tagString(), strings.Join(trail, "; ")))
		}
		switch {
		case a.bad != "":
			k.unexpected = append(k.unexpected, a.bad)
		case a.knows == outcomeUnknown:
			k.unresolved++
		case a.knows == outcomeKnown && a.out.failed:
			k.refused++ // another client's increment came first: read again
		case a.knows == outcomeKnown:
			if _, ok := k.acked[n+1]; ok {
				k.ackedTwice = append(k.ackedTwice, fmt.Sprintf("two increments to %d were acknowledged, the second with ETag %d", n+1, a.out.etag))
			}
			k.acked[n+1] = a.out.etag
			k.versions.saw(in.value, a.out.etag, describeKV(in, a.out))
		}
		if a.replayed {
			k.replayed++
		}
		k.mu.Unlock()
	}
}

// readAt reads the counter with level=consistent at target: its value,
// 0 if absent, and the precondition for the next increment.
func (k *counter) readAt(hc *http.Client, target string) (int, kvCond, bool) {
	in := kvInput{op: "get", key: counterKey}
	a := attemptKV(hc, target, in, "")
	switch {
	case a.bad != "":
		k.unexpect(a.bad)
		return 0, kvCond{}, false
	case a.knows != outcomeKnown:
		return 0, kvCond{}, false
	case !a.out.found:
		return 0, kvCond{kind: precondCreateOnly}, true
	}
	n, err := strconv.Atoi(a.out.value)
	if err != nil || n <= 0 {
		k.unexpect(fmt.Sprintf("GET %s/keys/%s: %q, not a count", target, counterKey, a.out.value))
		return 0, kvCond{}, false
	}
	k.mu.Lock()
	k.versions.saw(a.out.value, a.out.etag, describeKV(in, a.out))
	k.mu.Unlock()
	return n, kvCond{kind: precondIfMatch, tag: a.out.etag}, true
}

// read reads the counter through members in turn until a read succeeds.
func (k *counter) read() int {
	targets := k.c.targets()
	n, i := 0, 0
	k.c.procs.eventually(recoveryLimit, "a consistent read of the counter", func() bool {
		var ok bool
		n, _, ok = k.readAt(faultProbeClient, targets[i%len(targets)])
		i++
		return ok
	})
	return n
}

// summary is the counter's summary line.
func (k *counter) summary(afterFaults, afterRestart int, s faultSummary) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return fmt.Sprintf("%d increments acknowledged; the counter reads %d after the faults and %d after restarting every member; %d increments of unknown outcome, %d without a definite answer before retrying with the same Idempotency-Key; %d answers replayed; %d refused with 412; %s, worst recovery %s",
		len(k.acked), afterFaults, afterRestart, k.unresolved, k.firstUnknown, k.replayed, k.refused, s.faultsString(), s.worstRecovery.Round(time.Millisecond))
}

// check lists what the run shows wrong. Each acknowledged increment
// wrote the number after the one it read, under If-Match of its ETag, so
// the acknowledged numbers must be 1 to the final count, each once, with
// ETags rising in that order: a number missing is an increment applied
// without being acknowledged (a retry that was not deduplicated), one
// acknowledged twice is a lost update.
func (k *counter) check(afterFaults, afterRestart int) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var bad []string
	if k.unresolved > 0 {
		bad = append(bad, fmt.Sprintf("%d increments still of unknown outcome after retrying for %s", k.unresolved, resolveLimit))
	}
	if afterRestart != afterFaults {
		bad = append(bad, fmt.Sprintf("the counter read %d after the faults, and %d after restarting every member", afterFaults, afterRestart))
	}
	if afterFaults != len(k.acked) {
		bad = append(bad, fmt.Sprintf("the counter reads %d, but %d increments were acknowledged", afterFaults, len(k.acked)))
	}
	var missing []int
	var prev uint64
	for n := 1; n <= max(afterFaults, len(k.acked)); n++ {
		etag, ok := k.acked[n]
		switch {
		case !ok:
			missing = append(missing, n)
		case etag <= prev:
			bad = append(bad, fmt.Sprintf("the increment to %d has ETag %d, not above the one before it (%d)", n, etag, prev))
		}
		prev = max(prev, etag)
	}
	if len(missing) > 0 {
		bad = append(bad, fmt.Sprintf("no increment to %s was acknowledged", listInts(missing, 10)))
	}
	for _, n := range missing[:min(len(missing), 3)] {
		for _, trail := range k.trails[n] {
			bad = append(bad, fmt.Sprintf("an increment to %d: %s", n, trail))
		}
	}
	bad = append(bad, k.ackedTwice...)
	bad = append(bad, k.versions.twice...)
	for _, u := range k.unexpected {
		bad = append(bad, "unexpected answer "+u)
	}
	return bad
}

// listInts shows the first few of ns.
func listInts(ns []int, few int) string {
	s := fmt.Sprint(ns[:min(few, len(ns))])
	if len(ns) > few {
		s += fmt.Sprintf(" and %d more", len(ns)-few)
	}
	return s
}

// TestCounterCheck proves the counter's final check catches what it is
// for, on hand-made outcomes: an increment applied without being
// acknowledged, one acknowledged twice, and an unresolved one.
func TestCounterCheck(t *testing.T) {
	for _, tc := range []struct {
		name        string
		acked       map[int]uint64
		unresolved  int
		final, want int // the counter read; how many problems
	}{
		{"exact", map[int]uint64{1: 5, 2: 8, 3: 9}, 0, 3, 0},
		{"applied without acknowledgement", map[int]uint64{1: 5, 3: 9}, 0, 3, 2},
		{"ETags out of order", map[int]uint64{1: 5, 2: 4}, 0, 2, 1},
		{"unresolved", map[int]uint64{1: 5}, 1, 2, 3},
	} {
		k := &counter{acked: tc.acked, unresolved: tc.unresolved}
		if got := k.check(tc.final, tc.final); len(got) != tc.want {
			t.Errorf("%s: %d problems %q, want %d", tc.name, len(got), got, tc.want)
		}
	}
	k := &counter{acked: map[int]uint64{1: 5}}
	if got := k.check(1, 2); !slices.ContainsFunc(got, func(s string) bool {
		return s == "the counter read 1 after the faults, and 2 after restarting every member"
	}) {
		t.Errorf("a count changed by a restart: %q", got)
	}
}

// tagString is the tag an If-Match condition names, or *.
func (c kvCond) tagString() string {
	_, value := c.header()
	return value
}
