package e2e

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"raftkv/api"
)

// Linearizability and durability under faults, the way Jepsen and etcd's
// robustness tests prove them: real raftkv processes, clients that collide
// on a few keys, a nemesis injecting faults picked from a seed, and every
// operation checked afterwards with porcupine.

// TestLinearizable runs the workload under faults twice: with the default
// snapshot count, and with snapshots every 50 entries plus members joining
// and leaving under load, so that snapshots, compaction, WAL
// release and snapshot catch-up all happen under faults too.
// RAFTKV_SOAK=10m runs it for ten minutes; RAFTKV_SEED replays a seed.
func TestLinearizable(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	soak, seed := linearizableFlags(t)
	t.Logf("seed %d (replay the faults with RAFTKV_SEED=%d)", seed, seed)
	bin := e2eBuild(t)
	runs := []struct {
		name          string
		snapshotCount int
		membership    bool
		extraArgs     []string
	}{
		{"snapshot-count=10000", 10000, false, nil},
		{"snapshot-count=50", 50, true, []string{"--watch-history-bytes", strconv.Itoa(smallWatchHistory)}},
	}
	var total faultSummary
	for i, run := range runs {
		faultTime := linearizableShortFaults
		if soak > 0 {
			faultTime = soak / time.Duration(len(runs))
		}
		if deadline, ok := t.Deadline(); ok {
			// Leave each remaining run time to check its history after the faults.
			if fit := time.Until(deadline)/time.Duration(len(runs)-i) - linearizableCheckTime; fit < faultTime {
				t.Logf("%s: faults cut to %s to fit go test's -timeout", run.name, fit.Round(time.Second))
				faultTime = max(fit, 0)
			}
		}
		t.Run(run.name, func(t *testing.T) {
			s := runLinearizable(t, bin, seed+uint64(i), run.snapshotCount, run.membership, faultTime, run.extraArgs...)
			t.Logf("summary: %s", s)
			total.add(s)
		})
	}
	t.Logf("summary: %s", total)
}

const (
	// linearizableShortFaults is how long a default run injects faults;
	// it goes on past this until every fault kind has been injected.
	linearizableShortFaults = 15 * time.Second
	// linearizableCheckTime is what a run needs after its faults: final
	// reads, restarting every member, and porcupine.
	linearizableCheckTime = 60 * time.Second
	// recoveryLimit is how long after a fault heals every member must
	// accept writes again: a few election timeouts (1–2 s each at the
	// default tick) plus a process start.
	recoveryLimit = 15 * time.Second
	// clientTimeout is each client operation's deadline; past it the
	// outcome is unknown. The members answer 504 after 3 s themselves.
	clientTimeout = 4 * time.Second
	// keysPerEpoch keys are in play at a time, so operations collide; a
	// new set every keyEpoch keeps each key's history short enough for
	// porcupine however long the soak.
	keysPerEpoch = 4
	keyEpoch     = 5 * time.Second
	// membershipEvery faults, a run with membership changes adds a member
	// and removes another, so a soak goes through many configurations.
	membershipEvery = 8
	// linearizableClients do PUT, DELETE and consistent GET, checked
	// by porcupine; staleReaders do stale and default GETs beside them.
	linearizableClients = 8
	// hastyEvery: one write in hastyEvery is first sent with a deadline
	// of a few milliseconds (see hastyClient).
	hastyEvery = 10
)

// linearizableFlags reads RAFTKV_SOAK and RAFTKV_SEED.
func linearizableFlags(t *testing.T) (time.Duration, uint64) {
	var soak time.Duration
	if s := os.Getenv("RAFTKV_SOAK"); s != "" {
		var err error
		if soak, err = time.ParseDuration(s); err != nil || soak <= 0 {
			t.Fatalf("RAFTKV_SOAK=%q: want a positive duration such as 10m", s)
		}
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("RAFTKV_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("RAFTKV_SEED=%q: want a number", s)
		}
	}
	return soak, seed
}

// runLinearizable is one run: a 3-member cluster whose members also get
// extraArgs, the workload with its watchers and lister, faults for
// faultTime (and at least one of each kind), then the checks.
func runLinearizable(t *testing.T, bin string, seed uint64, snapshotCount int, membership bool, faultTime time.Duration, extraArgs ...string) faultSummary {
	rng := rand.New(rand.NewPCG(seed, 0))
	c := newFaultCluster(t, bin, 3, snapshotCount, extraArgs...)
	t.Logf("members on %s", e2eTLSDescription())
	w := startWorkload(c, seed)
	defer w.halt()
	var s faultSummary
	c.nemesis(rng, faultTime, membership, w.elapsed, &s)
	w.halt()

	// Durability: every key read back now, and again after every member
	// is killed at once and restarted on its data dir.
	w.finalReads()
	recovery := c.restartAll()
	t.Logf("%s: killed and restarted every member; every member took a write %s later", w.elapsed(), recovery.Round(time.Millisecond))
	s.fault(faultRestartAll, recovery)
	w.finalReads()

	through := w.finishWatchers()
	w.check(t, seed, &s)
	w.checkWatchAndListings(t, seed, through, &s)
	return s
}

// kvCond is a write's precondition, as its header states it.
type kvCond struct {
	kind precondKind
	tag  uint64 // for precondIfMatch: the ETag the write expects
}

// precondKind is which precondition a write carries.
type precondKind uint8

// The preconditions the workload sends.
const (
	precondNone       precondKind = iota
	precondIfMatch                // If-Match: "tag": the key exists at that version
	precondIfMatchAny             // If-Match: *: the key exists
	precondCreateOnly             // If-None-Match: *: the key does not exist (create only)
)

// header is the request header stating c, or "" for none.
func (c kvCond) header() (name, value string) {
	switch c.kind {
	case precondIfMatch:
		return "If-Match", fmt.Sprintf("%q", strconv.FormatUint(c.tag, 10))
	case precondIfMatchAny:
		return "If-Match", "*"
	case precondCreateOnly:
		return "If-None-Match", "*"
	}
	return "", ""
}

// kvInput is one client operation, as porcupine sees it.
type kvInput struct {
	op    string // "get" (level=consistent), "put" or "delete"
	key   string
	value string // for put; unique to the operation
	cond  kvCond // for put and delete
}

// kvOutput is what the client learned. Indexes are 0 where the answer
// carries none.
type kvOutput struct {
	found   bool   // get: 200, the key existed; delete: 204, it existed and is gone
	value   string // get: what it read
	unknown bool   // a write whose outcome the client never learned
	failed  bool   // a write answered 412: its precondition did not hold, nothing changed
	created bool   // put: 201, the key was absent
	etag    uint64 // get 200, put 2xx: the value's ETag; 412: the current ETag, if the key exists
	create  uint64 // X-Create-Index beside etag
	index   uint64 // X-Raft-Index: the entry a write was applied (or evaluated) in; what a read reflects
}

// kvState is one key's state in the model: the value and its version
// (ETag and creation index), and a floor below which no later write's
// index can be. A write of unknown outcome leaves the version unknown (0)
// until an answer shows it: the first ETag seen above the floor is then
// taken as the version, and every later answer must agree with it.
type kvState struct {
	exists bool
	value  string
	mod    uint64 // the value's ETag, 0 if unknown
	create uint64 // its X-Create-Index, 0 if unknown
	floor  uint64 // the highest index known to have touched the key
}

// observeMod checks that the value's ETag is etag, or takes it as the
// ETag if that is unknown (it must then be above the floor).
func (s kvState) observeMod(etag uint64) (bool, kvState) {
	if s.mod != 0 {
		return etag == s.mod, s
	}
	if etag <= s.floor {
		return false, s
	}
	s.mod, s.floor = etag, etag
	return true, s
}

// observe checks an answer's ETag and X-Create-Index against s, or takes
// them if unknown; the creation is never after the last write.
func (s kvState) observe(etag, create uint64) (bool, kvState) {
	ok, s := s.observeMod(etag)
	switch {
	case !ok:
		return false, s
	case s.create != 0:
		return create == s.create, s
	case create == 0 || create > s.mod:
		return false, s
	}
	s.create = create
	return true, s
}

// mayHold reports whether c holds in s, or may: an If-Match tag above the
// floor may be the unknown ETag a write of unknown outcome left. A tag at
// or below it cannot be: that write's index is above the floor.
func (s kvState) mayHold(c kvCond) bool {
	switch c.kind {
	case precondIfMatch:
		return s.exists && (c.tag == s.mod || (s.mod == 0 && c.tag > s.floor))
	case precondIfMatchAny:
		return s.exists
	case precondCreateOnly:
		return !s.exists
	}
	return true
}

// kvStep is the model's step: whether out is a right answer to in on a
// key in state s, and the state after it.
func kvStep(s kvState, in kvInput, out kvOutput) (bool, kvState) {
	switch in.op {
	case "get":
		switch {
		case out.found != s.exists || (out.found && out.value != s.value):
			return false, s
		case !out.found:
			return true, s
		case out.index < out.etag:
			return false, s // the answer reflects an index before its own value's
		}
		return s.observe(out.etag, out.create)
	case "put", "delete":
	default:
		return false, s
	}
	if out.unknown {
		// It took effect here, if its condition held; the other case,
		// no effect, is the same as taking effect after everything.
		if !s.mayHold(in.cond) {
			return true, s
		}
		if in.op == "delete" {
			return true, kvState{floor: s.floor}
		}
		next := kvState{exists: true, value: in.value, floor: s.floor}
		if s.exists {
			next.create = s.create
		}
		return true, next
	}
	ok := true
	if out.failed {
		// 412: the condition was evaluated in entry out.index and was
		// false; the answer shows the version it was evaluated against.
		switch {
		case s.exists && out.etag == 0, !s.exists && (out.etag != 0 || out.create != 0):
			return false, s
		case s.exists:
			ok, s = s.observe(out.etag, out.create)
		}
		if !ok || s.mayHold(in.cond) || out.index <= s.floor {
			return false, s
		}
		s.floor = out.index
		return true, s
	}
	if in.cond.kind == precondIfMatch {
		if !s.exists {
			return false, s
		}
		if ok, s = s.observeMod(in.cond.tag); !ok {
			return false, s
		}
	}
	if !s.mayHold(in.cond) {
		return false, s
	}
	if in.op == "delete" {
		if out.found != s.exists || out.index <= s.floor {
			return false, s
		}
		return true, kvState{floor: out.index}
	}
	// A PUT's ETag is its entry's index, above every earlier write's;
	// 201 if and only if the key was absent, which starts a new creation.
	if out.created == s.exists || out.etag <= s.floor || out.index != out.etag {
		return false, s
	}
	next := kvState{exists: true, value: in.value, mod: out.etag, create: out.etag, floor: out.etag}
	if s.exists {
		next.create = s.create
	}
	switch {
	case next.create == 0 && (out.create == 0 || out.create >= out.etag):
		return false, s // created by a write of unknown outcome, before this one
	case next.create == 0:
		next.create = out.create
	case out.create != next.create:
		return false, s
	}
	return true, next
}

// kvModel is a single key's specification; the history is split by key
// before checking, since operations on different keys never interact.
// A write of unknown outcome is given a return time after everything
// else, so the checker may place it anywhere after its call, including
// after every read: that is, it may or may not have happened.
func kvModel() porcupine.Model {
	return porcupine.Model{
		Init: func() any { return kvState{} },
		Step: func(state, input, output any) (bool, any) {
			return kvStep(state.(kvState), input.(kvInput), output.(kvOutput))
		},
		DescribeOperation: func(input, output any) string {
			return describeKV(input.(kvInput), output.(kvOutput))
		},
		DescribeState: func(state any) string {
			s := state.(kvState)
			if !s.exists {
				return fmt.Sprintf("(none) floor %d", s.floor)
			}
			return fmt.Sprintf("%s %s created %s", s.value, versionString(s.mod), versionString(s.create))
		},
	}
}

// versionString shows an index, or ? for an unknown one.
func versionString(index uint64) string {
	if index == 0 {
		return "?"
	}
	return strconv.FormatUint(index, 10)
}

// describeKV shows an operation and its answer for porcupine's
// visualization and for lostWrite.
func describeKV(in kvInput, out kvOutput) string {
	what := in.op + "(" + in.value + ")"
	if name, value := in.cond.header(); name != "" {
		what += " " + name + ": " + value
	}
	switch {
	case out.unknown:
		return what + " → unknown"
	case out.failed && out.etag != 0:
		return fmt.Sprintf("%s → 412, at %d, ETag %d", what, out.index, out.etag)
	case out.failed:
		return fmt.Sprintf("%s → 412, at %d, absent", what, out.index)
	case in.op == "put":
		code := 204
		if out.created {
			code = 201
		}
		return fmt.Sprintf("%s → %d, ETag %d created %d", what, code, out.etag, out.create)
	case in.op == "get" && out.found:
		return fmt.Sprintf("%s → %s, ETag %d created %d", what, out.value, out.etag, out.create)
	case in.op == "get":
		return what + " → 404"
	case out.found:
		return fmt.Sprintf("%s → 204, at %d", what, out.index)
	default:
		return fmt.Sprintf("%s → 404, at %d", what, out.index)
	}
}

// workload is the clients: linearizableClients doing colliding operations
// recorded for porcupine, a stale and a default reader checking that
// whatever they read was written by someone, a lister whose pages are
// checked against the history, and the watchers (watch_test.go).
type workload struct {
	c     *faultCluster
	seed  uint64
	start time.Time
	stopC chan struct{}
	wg    sync.WaitGroup
	once  sync.Once

	mu           sync.Mutex
	ops          []porcupine.Operation
	clients      int             // porcupine client ids handed out
	written      map[string]bool // every value a PUT has carried
	versions     versionLog      // the ETag each value was seen with
	lastEpoch    int
	staleReads   int
	staleBad     []string // reads of values nobody wrote
	unexpected   []string // answers a correct server never gives
	finalClient  int      // the client id of the final reads, -1 before
	firstUnknown int      // writes whose first attempt got no definite answer
	replayed     int      // of those, answered Idempotent-Replayed: true
	conditional  int      // conditional writes with a definite answer
	refused      int      // of those, 412
	answeredMax  uint64   // the highest index a write was answered at
	pages        []listedPage

	watchCtx    context.Context // cancelled to stop the watchers
	watchCancel context.CancelFunc
	watchWG     sync.WaitGroup
	watchers    []*linWatcher
}

// startWorkload starts the watchers, then the clients and the lister,
// against c.
func startWorkload(c *faultCluster, seed uint64) *workload {
	w := &workload{c: c, seed: seed, start: time.Now(), stopC: make(chan struct{}), written: make(map[string]bool), finalClient: -1}
	w.startWatchers()
	for i := range linearizableClients {
		w.wg.Go(func() { w.client(i) })
	}
	for i, level := range []string{"stale", "default"} {
		w.wg.Go(func() { w.staleReader(linearizableClients+i, level) })
	}
	w.wg.Go(func() { w.lister(linearizableClients + 2) })
	return w
}

// halt stops the clients and waits for their last operations, which
// includes retrying a write of unknown outcome until it is resolved.
func (w *workload) halt() {
	w.once.Do(func() {
		close(w.stopC)
		w.wg.Wait()
	})
}

// now is the time since the workload started, porcupine's clock.
func (w *workload) now() int64 { return int64(time.Since(w.start)) }

// elapsed is now, for logs.
func (w *workload) elapsed() time.Duration { return time.Since(w.start).Round(time.Millisecond) }

// newClient hands out a porcupine client id. A client whose operation's
// outcome is unknown takes a new one, as in Jepsen: the old one may still
// be in flight.
func (w *workload) newClient() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.clients++
	return w.clients - 1
}

// key picks one of the keys in play now.
func (w *workload) key(rng *rand.Rand) string {
	epoch := int(time.Since(w.start) / keyEpoch)
	w.mu.Lock()
	w.lastEpoch = max(w.lastEpoch, epoch)
	w.mu.Unlock()
	return linearizableKey(epoch, rng.IntN(keysPerEpoch))
}

// linearizableKey names key i of epoch: under the epoch's prefix, under
// the workload's, which the watchers watch.
func linearizableKey(epoch, i int) string {
	return fmt.Sprintf("%se%d/k%d", linearizablePrefix, epoch, i)
}

// record adds a finished operation to the history, the version its
// answer shows to the versions seen, and the index a write was answered
// at to what a consistent listing must reflect from now on.
func (w *workload) record(op porcupine.Operation) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ops = append(w.ops, op)
	in, out := op.Input.(kvInput), op.Output.(kvOutput)
	if in.op != "get" && !out.unknown {
		w.answeredMax = max(w.answeredMax, out.index)
	}
	switch {
	case out.unknown || out.failed:
	case in.op == "put":
		w.versions.saw(in.value, out.etag, describeKV(in, out))
	case in.op == "get" && out.found:
		w.versions.saw(out.value, out.etag, describeKV(in, out))
	}
}

// unexpect notes an answer a correct server never gives.
func (w *workload) unexpect(bad string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.unexpected = append(w.unexpected, bad)
}

// stopped reports whether halt has been called.
func (w *workload) stopped() bool {
	select {
	case <-w.stopC:
		return true
	default:
		return false
	}
}

// workloadHTTPClient is one client's own keep-alive connections.
func workloadHTTPClient() *http.Client {
	return &http.Client{Timeout: clientTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 2, TLSClientConfig: e2eClientTLS()}}
}

// hastyClient is hc in a hurry: a deadline of 1–10 ms, picked with rng,
// which a write often passes after the member has proposed it. Its
// outcome is then unknown although it applies, as after a fault, so the
// retries with the same Idempotency-Key get replays without waiting for
// one.
func hastyClient(hc *http.Client, rng *rand.Rand) *http.Client {
	return &http.Client{Transport: hc.Transport, Timeout: time.Duration(1+rng.IntN(9)) * time.Millisecond}
}

// client does PUT (plain, create-only, and compare-and-set on the ETag it
// last saw), DELETE (plain and conditional) and consistent GET on random
// keys in play, on random members, until halted; every operation with an
// effect that may have happened goes into the history. A write whose
// outcome is unknown is retried with the same Idempotency-Key, on other
// members, until a definite answer says what happened to it.
func (w *workload) client(index int) {
	rng := rand.New(rand.NewPCG(w.seed, uint64(index)+1))
	hc := workloadHTTPClient()
	defer hc.CloseIdleConnections()
	id := w.newClient()
	tags := make(map[string]uint64) // key -> the last ETag this client saw, for If-Match
	for seq := 0; !w.stopped(); seq++ {
		targets := w.c.targets()
		target := targets[rng.IntN(len(targets))]
		in := kvInput{op: "get", key: w.key(rng)}
		ifMatch := kvCond{kind: precondIfMatchAny}
		if tag, ok := tags[in.key]; ok {
			ifMatch = kvCond{kind: precondIfMatch, tag: tag}
		}
		switch r := rng.IntN(20); {
		case r < 4:
			in.op = "put"
		case r < 6:
			in.op, in.cond = "put", kvCond{kind: precondCreateOnly}
		case r < 10:
			in.op, in.cond = "put", ifMatch
		case r < 12:
			in.op = "delete"
		case r < 13:
			in.op, in.cond = "delete", ifMatch
		}
		if in.op == "put" {
			in.value = fmt.Sprintf("%d.%d", index, seq)
			w.mu.Lock()
			w.written[in.value] = true
			w.mu.Unlock()
		}
		idemKey := fmt.Sprintf("lin-%d-%d", index, seq)
		first := hc
		if in.op != "get" && rng.IntN(hastyEvery) == 0 {
			first = hastyClient(hc, rng)
		}
		call := w.now()
		a := attemptKV(first, target, in, idemKey)
		if a.knows == outcomeUnknown && a.bad == "" {
			w.mu.Lock()
			w.firstUnknown++
			w.mu.Unlock()
			a, _ = resolveKV(hc, w.c.targets, target, in, idemKey, rng)
		}
		if a.bad != "" {
			w.unexpect(a.bad)
		}
		op := porcupine.Operation{ClientId: id, Input: in, Call: call, Output: a.out, Return: w.now()}
		switch a.knows {
		case outcomeKnown:
			w.record(op)
			w.mu.Lock()
			if a.replayed {
				w.replayed++
			}
			if in.cond.kind != precondNone {
				w.conditional++
				if a.out.failed {
					w.refused++
				}
			}
			w.mu.Unlock()
			if a.out.etag != 0 && (in.op != "delete" || a.out.failed) {
				tags[in.key] = a.out.etag
			} else {
				delete(tags, in.key)
			}
			continue
		case outcomeUnknown:
			op.Return = math.MaxInt64 // set after the run, see kvModel
			w.record(op)
			id = w.newClient()
		}
		time.Sleep(50 * time.Millisecond) // a client's pause before trying again
	}
}

// clientKnows is what a client knows about an operation's effect.
type clientKnows int

const (
	outcomeKnown   clientKnows = iota // it happened, with the output given
	outcomeNone                       // a read that failed: it had no effect
	outcomeUnknown                    // it may or may not have happened
)

// kvAnswer is what one attempt at an operation taught its client.
type kvAnswer struct {
	out      kvOutput
	knows    clientKnows
	replayed bool   // the answer carried Idempotent-Replayed: true
	bad      string // an answer a correct server never gives, or ""
	why      string // the status and body, or the error: for trails
}

const (
	// resolveLimit bounds how long a client retries a write of unknown
	// outcome: past every fault's hold and recovery.
	resolveLimit = 2*recoveryLimit + clientTimeout
	// resolvePause is a client's pause between those retries.
	resolvePause = 100 * time.Millisecond
)

// resolveKV retries a write whose first attempt got no definite answer,
// with the same Idempotency-Key, on a member other than the last one
// tried each time, until an answer is definite (or is one a correct server
// never gives) or resolveLimit has passed. It returns the last answer and
// what each retry got, for messages.
func resolveKV(hc *http.Client, targets func() []string, last string, in kvInput, idemKey string, rng *rand.Rand) (kvAnswer, []string) {
	var trail []string
	for deadline := time.Now().Add(resolveLimit); time.Now().Before(deadline); {
		time.Sleep(resolvePause) // a client's pause before retrying
		urls := slices.DeleteFunc(targets(), func(u string) bool { return u == last })
		if len(urls) == 0 {
			urls = targets()
		}
		last = urls[rng.IntN(len(urls))]
		a := attemptKV(hc, last, in, idemKey)
		trail = append(trail, a.String(last))
		if a.knows == outcomeKnown || a.bad != "" {
			return a, trail
		}
	}
	return kvAnswer{out: kvOutput{unknown: true}, knows: outcomeUnknown}, trail
}

// String shows an attempt sent to target and its answer, for messages.
func (a kvAnswer) String(target string) string {
	if a.replayed {
		return fmt.Sprintf("%s: %s, replayed", target, a.why)
	}
	return fmt.Sprintf("%s: %s", target, a.why)
}

// attemptKV sends in to the member at target, a write with idemKey as its
// Idempotency-Key and its precondition, and judges the answer.
func attemptKV(hc *http.Client, target string, in kvInput, idemKey string) kvAnswer {
	method, url, body := "GET", target+"/keys/"+in.key+"?level=consistent", ""
	header := http.Header{}
	switch in.op {
	case "put":
		method, body = "PUT", in.value
	case "delete":
		method = "DELETE"
	}
	if in.op != "get" {
		url = target + "/keys/" + in.key
		header.Set("Idempotency-Key", idemKey)
		if name, value := in.cond.header(); name != "" {
			header.Set(name, value)
		}
	}
	r, err := tryWithHeader(hc, method, url, body, header)
	why := fmt.Sprintf("%d %q", r.code, strings.TrimSpace(r.body))
	if err != nil {
		why = api.OneLine(err)
	}
	unknown := kvAnswer{out: kvOutput{unknown: true}, knows: outcomeUnknown, why: why}
	none := kvAnswer{knows: outcomeNone, why: why}
	// A read that fails has no effect. A write that fails may have been
	// applied, whatever the error: even a refused connection or "no
	// leader", because Go's Transport resends a request carrying an
	// Idempotency-Key on a new connection when a kept-alive one breaks, so
	// the error may answer the resend of a request the member had already
	// proposed. Only retrying with the same key tells.
	switch {
	case (err != nil || r.code >= 500) && in.op == "get":
		return none
	case err != nil || r.code >= 500:
		return unknown
	}
	a := kvAnswer{knows: outcomeKnown, replayed: r.header.Get("Idempotent-Replayed") == "true", why: why}
	var bad error
	switch {
	case in.op == "get" && r.code == http.StatusOK:
		a.out = kvOutput{found: true, value: r.body}
		bad = parseVersion(r.header, &a.out, true)
	case in.op == "get" && r.code == http.StatusNotFound:
	case in.op == "put" && (r.code == http.StatusCreated || r.code == http.StatusNoContent):
		a.out.created = r.code == http.StatusCreated
		bad = parseVersion(r.header, &a.out, true)
	case in.op == "delete" && (r.code == http.StatusNoContent || r.code == http.StatusNotFound):
		a.out.found = r.code == http.StatusNoContent
		a.out.index, bad = headerIndex(r.header, "X-Raft-Index", true)
	case in.op != "get" && r.code == http.StatusPreconditionFailed:
		a.out.failed = true
		bad = parseVersion(r.header, &a.out, false)
	default:
		bad = errors.New("not an answer to this request")
	}
	if a.replayed && in.op == "get" {
		bad = errors.Join(bad, errors.New("a read marked Idempotent-Replayed"))
	}
	if bad != nil {
		a = unknown
		if in.op == "get" {
			a = none
		}
		a.bad = fmt.Sprintf("%s %s: %d %q: %s", method, url, r.code, r.body, api.OneLine(bad))
	}
	return a
}

// parseVersion reads an answer's ETag, X-Create-Index and X-Raft-Index
// into out; the first two are required if must, else both or neither.
func parseVersion(h http.Header, out *kvOutput, must bool) error {
	var errs [3]error
	_, has := h["Etag"]
	out.etag, errs[0] = headerETag(h, must || has)
	out.create, errs[1] = headerIndex(h, "X-Create-Index", must || has)
	out.index, errs[2] = headerIndex(h, "X-Raft-Index", true)
	return errors.Join(errs[:]...)
}

// headerETag reads a strong ETag, "N" for a log index N ≥ 1: the only
// kind raftkv sends. It is 0 if absent and not required.
func headerETag(h http.Header, required bool) (uint64, error) {
	v := h.Get("ETag")
	if v == "" && !required {
		return 0, nil
	}
	digits, ok := strings.CutPrefix(v, `"`)
	if digits, ok = strings.CutSuffix(digits, `"`); !ok {
		return 0, fmt.Errorf("ETag %q is not a quoted index", v)
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || n == 0 || digits[0] == '+' {
		return 0, fmt.Errorf("ETag %q is not a quoted index", v)
	}
	return n, nil
}

// headerIndex reads a log index header; 0 if absent and not required.
func headerIndex(h http.Header, name string, required bool) (uint64, error) {
	v := h.Get(name)
	if v == "" && !required {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%s %q is not a log index", name, v)
	}
	return n, nil
}

// versionLog is the ETag each PUT's value was seen with. Values are
// unique to their PUT, so a value seen with two ETags is a PUT applied
// twice: a retry with the same Idempotency-Key that was not deduplicated,
// or a replayed answer that is not the first attempt's.
type versionLog struct {
	first map[string]seenVersion
	twice []string // one line per value seen with a second ETag
}

// seenVersion is the first ETag a value was seen with, and where.
type seenVersion struct {
	etag  uint64
	where string
}

// saw records that value was seen with etag in the answer described by where.
func (l *versionLog) saw(value string, etag uint64, where string) {
	if l.first == nil {
		l.first = make(map[string]seenVersion)
	}
	first, ok := l.first[value]
	switch {
	case !ok:
		l.first[value] = seenVersion{etag, where}
	case first.etag != etag && first.where != "":
		l.twice = append(l.twice, fmt.Sprintf("value %q was ETag %d (%s) and ETag %d (%s): a PUT applied twice, or an answer with a wrong ETag", value, first.etag, first.where, etag, where))
		l.first[value] = seenVersion{first.etag, ""} // reported once
	}
}

// staleReader reads at a level that may be stale and checks only that
// what it reads is a value some PUT carried, with the ETag every other
// answer shows it with.
func (w *workload) staleReader(index int, level string) {
	rng := rand.New(rand.NewPCG(w.seed, uint64(index)+1))
	hc := workloadHTTPClient() // follows the default level's redirect to the leader
	defer hc.CloseIdleConnections()
	for !w.stopped() {
		targets := w.c.targets()
		key := w.key(rng)
		url := targets[rng.IntN(len(targets))] + "/keys/" + key + "?level=" + level
		r, err := e2eTry(hc, "GET", url, "")
		if err != nil || r.code != http.StatusOK {
			time.Sleep(50 * time.Millisecond) // a client's pause before trying again
			continue
		}
		var out kvOutput
		bad := parseVersion(r.header, &out, true)
		w.mu.Lock()
		w.staleReads++
		switch {
		case bad != nil:
			w.unexpected = append(w.unexpected, fmt.Sprintf("GET %s: 200: %s", url, api.OneLine(bad)))
		case !w.written[r.body]:
			w.staleBad = append(w.staleBad, fmt.Sprintf("GET %s → %q, which no PUT wrote", url, r.body))
		default:
			w.versions.saw(r.body, out.etag, fmt.Sprintf("a %s read of %s", level, key))
		}
		w.mu.Unlock()
	}
}

// finalReads reads every key the run used with level=consistent, through
// members in turn, retrying until each read succeeds; the reads join the
// history, so porcupine checks them with the rest.
func (w *workload) finalReads() {
	t := w.c.t
	t.Helper()
	if w.finalClient < 0 {
		w.finalClient = w.newClient()
	}
	targets := w.c.targets()
	n := 0
	for epoch := 0; epoch <= w.lastEpoch; epoch++ {
		for i := range keysPerEpoch {
			in := kvInput{op: "get", key: linearizableKey(epoch, i)}
			w.c.procs.eventually(recoveryLimit, "a consistent read of "+in.key, func() bool {
				call := w.now()
				a := attemptKV(faultProbeClient, targets[n%len(targets)], in, "")
				n++
				if a.bad != "" {
					w.unexpect(a.bad)
				}
				if a.knows == outcomeKnown {
					w.record(porcupine.Operation{ClientId: w.finalClient, Input: in, Call: call, Output: a.out, Return: w.now()})
				}
				return a.knows == outcomeKnown
			})
		}
	}
}

// check runs porcupine on each key's history, looks for acknowledged
// writes that the final reads show lost and for PUTs applied twice, and
// fails the test on any.
func (w *workload) check(t *testing.T, seed uint64, s *faultSummary) {
	byKey := make(map[string][]porcupine.Operation)
	var last int64
	for _, op := range w.ops {
		if op.Return != math.MaxInt64 {
			last = max(last, op.Return)
		}
	}
	for _, op := range w.ops {
		s.ops++
		if op.Return == math.MaxInt64 {
			op.Return = last + 1
			s.unknown++
		}
		key := op.Input.(kvInput).key
		byKey[key] = append(byKey[key], op)
	}
	s.staleReads = w.staleReads
	s.firstUnknown, s.replayed = w.firstUnknown, w.replayed
	s.conditional, s.refused = w.conditional, w.refused
	keys := make([]string, 0, len(byKey))
	for key := range byKey {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	model := kvModel()
	var dir string
	for _, key := range keys {
		s.histories++
		result, info := porcupine.CheckOperationsVerbose(model, byKey[key], linearizableCheckTime)
		if result == porcupine.Ok {
			if lost := lostWrite(byKey[key], w.finalClient); lost != "" {
				s.lost++
				t.Errorf("key %s: acknowledged write lost (seed %d): %s", key, seed, lost)
			}
			continue
		}
		s.violations++
		if dir == "" {
			dir, _ = os.MkdirTemp("", "raftkv-linearizability-")
		}
		path := filepath.Join(dir, strings.ReplaceAll(key, "/", "_")+".html")
		if err := porcupine.VisualizePath(model, info, path); err != nil {
			path = err.Error()
		}
		t.Errorf("key %s: history %s by porcupine (seed %d); visualization: %s", key, result, seed, path)
	}
	for _, bad := range w.staleBad {
		s.violations++
		t.Errorf("seed %d: %s", seed, bad)
	}
	for _, twice := range w.versions.twice {
		s.twice++
		t.Errorf("seed %d: %s", seed, twice)
	}
	for _, bad := range w.unexpected {
		t.Errorf("seed %d: unexpected answer %s", seed, bad)
	}
}

// lostWrite explains, for one key's history, how a final read shows an
// acknowledged write lost, or returns "". A final read may see the state
// left by the last acknowledged write, or by a write of unknown outcome,
// but never a state that an acknowledged write begun after it had been
// left has overwritten. Porcupine rejects such a history too; this names
// the write that was lost.
func lostWrite(ops []porcupine.Operation, finalClient int) string {
	for _, read := range ops {
		if read.ClientId != finalClient {
			continue
		}
		out := read.Output.(kvOutput)
		// The operations that could have left what the read saw; no key
		// at all is also the initial state, left before anything began.
		var sources []porcupine.Operation
		if !out.found {
			sources = append(sources, porcupine.Operation{Return: -1})
		}
		for _, op := range ops {
			in, o := op.Input.(kvInput), op.Output.(kvOutput)
			if o.failed {
				continue
			}
			if (out.found && in.op == "put" && in.value == out.value) || (!out.found && in.op == "delete" && (o.found || o.unknown)) {
				sources = append(sources, op)
			}
		}
		overwritten := func(src porcupine.Operation) bool {
			return slices.ContainsFunc(ops, func(op porcupine.Operation) bool {
				return acknowledgedWrite(op) && op.Call > src.Return && op.Return < read.Call
			})
		}
		if slices.ContainsFunc(sources, func(src porcupine.Operation) bool { return !overwritten(src) }) {
			continue
		}
		var lost porcupine.Operation
		for _, op := range ops {
			if acknowledgedWrite(op) && op.Return < read.Call && op.Return > lost.Return {
				lost = op
			}
		}
		return fmt.Sprintf("a consistent read at %s saw %s, but %s, acknowledged at %s, was last",
			time.Duration(read.Call), describeKV(read.Input.(kvInput), out),
			describeKV(lost.Input.(kvInput), lost.Output.(kvOutput)), time.Duration(lost.Return))
	}
	return ""
}

// acknowledgedWrite reports whether op changed the key and its client was
// told so: a 201 or 204 to a PUT, a 204 to a DELETE.
func acknowledgedWrite(op porcupine.Operation) bool {
	in, out := op.Input.(kvInput), op.Output.(kvOutput)
	return !out.unknown && !out.failed && (in.op == "put" || (in.op == "delete" && out.found))
}

// faultSummary is what a run did and found: the summary line.
type faultSummary struct {
	ops, unknown, staleReads int
	firstUnknown, replayed   int // writes without a definite answer before retrying; answers replayed
	conditional, refused     int // conditional writes with a definite answer; 412s among them
	faults                   map[faultKind]int
	memberChanges            int // a member added and another removed
	histories, violations    int
	lost, twice              int // acknowledged writes lost; PUTs applied twice
	worstRecovery            time.Duration

	// The watchers (watch_test.go): how they went, what was checked,
	// and what was found.
	watchers, watchConns, watchEnds, watchCuts, watchGone, watchRelists int
	watchErrors                                                         map[string]int // error events, by reason
	watchEvents, watchGaps, watchRepeats, watchForeign                  int
	watchSkips                                                          int // watchers moved to the oldest index kept, after 410s everywhere
	watchUnseen                                                         int // acknowledged writes no watcher took
	watchHoles                                                          int // runs whose watchers together left a hole
	pages, pageKeys, pagesWrong, pagesUnsure                            int // listing pages checked, their keys, wrong pages, keys left out
}

// fault counts one healed fault of kind and how long recovery took.
func (s *faultSummary) fault(kind faultKind, recovery time.Duration) {
	if s.faults == nil {
		s.faults = make(map[faultKind]int)
	}
	s.faults[kind]++
	s.worstRecovery = max(s.worstRecovery, recovery)
}

// add folds another run's summary into s.
func (s *faultSummary) add(o faultSummary) {
	s.ops += o.ops
	s.unknown += o.unknown
	s.staleReads += o.staleReads
	s.firstUnknown += o.firstUnknown
	s.replayed += o.replayed
	s.conditional += o.conditional
	s.refused += o.refused
	if s.faults == nil {
		s.faults = make(map[faultKind]int)
	}
	for kind, n := range o.faults {
		s.faults[kind] += n
	}
	s.memberChanges += o.memberChanges
	s.histories += o.histories
	s.violations += o.violations
	s.lost += o.lost
	s.twice += o.twice
	s.watchers += o.watchers
	s.watchConns += o.watchConns
	s.watchEnds += o.watchEnds
	s.watchCuts += o.watchCuts
	s.watchGone += o.watchGone
	s.watchRelists += o.watchRelists
	s.watchSkips += o.watchSkips
	for why, n := range o.watchErrors {
		if s.watchErrors == nil {
			s.watchErrors = make(map[string]int)
		}
		s.watchErrors[why] += n
	}
	s.watchEvents += o.watchEvents
	s.watchGaps += o.watchGaps
	s.watchRepeats += o.watchRepeats
	s.watchForeign += o.watchForeign
	s.watchUnseen += o.watchUnseen
	s.watchHoles += o.watchHoles
	s.pages += o.pages
	s.pageKeys += o.pageKeys
	s.pagesWrong += o.pagesWrong
	s.pagesUnsure += o.pagesUnsure
	s.worstRecovery = max(s.worstRecovery, o.worstRecovery)
}

// faultsString lists the faults injected, by kind, and their total.
func (s faultSummary) faultsString() string {
	var faults []string
	total := 0
	for _, kind := range faultKinds {
		faults = append(faults, fmt.Sprintf("%s %d", kind, s.faults[kind]))
		total += s.faults[kind]
	}
	return fmt.Sprintf("%d faults injected (%s)", total, strings.Join(faults, ", "))
}

// String is the summary line.
func (s faultSummary) String() string {
	return fmt.Sprintf("%d operations (%d writes of unknown outcome, %d without a definite answer before retrying with the same Idempotency-Key; %d answers replayed; %d conditional writes, %d refused with 412) + %d stale/default reads, %s and %d membership changes, %d histories checked, %d violations, %d acknowledged writes lost, %d PUTs applied twice, worst recovery %s; %s",
		s.ops, s.unknown, s.firstUnknown, s.replayed, s.conditional, s.refused, s.staleReads, s.faultsString(), s.memberChanges, s.histories, s.violations, s.lost, s.twice, s.worstRecovery.Round(time.Millisecond), s.watchString())
}

// TestKVModel proves that TestLinearizable's model catches what
// conditional writes and versions can get wrong, on hand-made histories:
// each bad one is a planted bug (a lost update, an ETag no write
// produced, a create-only PUT over an existing key...) and must be
// rejected, while its good twin must pass. Without this, a model that
// accepts everything would let TestLinearizable pass whatever the server
// does.
func TestKVModel(t *testing.T) {
	const never = 1000 // the return time of a write of unknown outcome
	put := func(value string, cond kvCond) kvInput { return kvInput{op: "put", key: "k", value: value, cond: cond} }
	del := func(cond kvCond) kvInput { return kvInput{op: "delete", key: "k", cond: cond} }
	get := kvInput{op: "get", key: "k"}
	none := kvCond{}
	ifMatch := func(tag uint64) kvCond { return kvCond{kind: precondIfMatch, tag: tag} }
	createOnly := kvCond{kind: precondCreateOnly}
	// Answers: a 201 or 204 to a PUT, a 412, a 200 to a GET, a DELETE's.
	created := func(etag uint64) kvOutput { return kvOutput{created: true, etag: etag, create: etag, index: etag} }
	replaced := func(etag, create uint64) kvOutput { return kvOutput{etag: etag, create: create, index: etag} }
	refused := func(index, etag, create uint64) kvOutput {
		return kvOutput{failed: true, etag: etag, create: create, index: index}
	}
	read := func(value string, etag, create, index uint64) kvOutput {
		return kvOutput{found: true, value: value, etag: etag, create: create, index: index}
	}
	unknown := kvOutput{unknown: true}
	op := func(client int, call, ret int64, in kvInput, out kvOutput) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Call: call, Return: ret, Input: in, Output: out}
	}
	// Every history starts with a, created at index 5.
	start := op(0, 0, 1, put("a", none), created(5))
	for _, tc := range []struct {
		name string
		ok   bool
		ops  []porcupine.Operation
	}{
		{"compare-and-set: one of two wins, the other is refused with the winner's ETag", true, []porcupine.Operation{
			op(1, 2, 5, put("b", ifMatch(5)), replaced(7, 5)),
			op(2, 3, 6, put("c", ifMatch(5)), refused(8, 7, 5)),
			op(0, 7, 8, get, read("b", 7, 5, 8)),
		}},
		{"lost update: two compare-and-sets on the same ETag both succeed", false, []porcupine.Operation{
			op(1, 2, 5, put("b", ifMatch(5)), replaced(7, 5)),
			op(2, 3, 6, put("c", ifMatch(5)), replaced(8, 5)),
		}},
		{"lost update, one of the two of unknown outcome but seen", false, []porcupine.Operation{
			op(1, 2, never, put("b", ifMatch(5)), unknown),
			op(0, 3, 4, get, read("b", 7, 5, 7)),
			op(2, 5, 6, put("c", ifMatch(5)), replaced(8, 5)),
		}},
		{"compare-and-set on a stale ETag takes effect", false, []porcupine.Operation{
			op(1, 2, 3, put("b", none), replaced(6, 5)),
			op(1, 4, never, put("c", ifMatch(5)), unknown),
			op(0, 5, 6, get, read("c", 9, 5, 9)),
		}},
		{"a 412 although the ETag matched", false, []porcupine.Operation{
			op(1, 2, 3, put("b", ifMatch(5)), refused(6, 5, 5)),
		}},
		{"a 412 showing an ETag the key never had", false, []porcupine.Operation{
			op(1, 2, 3, put("b", ifMatch(4)), refused(6, 3, 5)),
		}},
		{"a read shows the ETag of the value's write", true, []porcupine.Operation{
			op(0, 2, 3, get, read("a", 5, 5, 9)),
		}},
		{"a read shows an ETag no write produced", false, []porcupine.Operation{
			op(0, 2, 3, get, read("a", 6, 5, 9)),
		}},
		{"a read shows the wrong creation index", false, []porcupine.Operation{
			op(1, 2, 3, put("b", none), replaced(6, 5)),
			op(0, 4, 5, get, read("b", 6, 6, 6)),
		}},
		{"a read after a write of unknown outcome takes its ETag", true, []porcupine.Operation{
			op(1, 2, never, put("b", none), unknown),
			op(0, 3, 4, get, read("b", 9, 5, 9)),
			op(0, 5, 6, get, read("b", 9, 5, 9)),
		}},
		{"reads after a write of unknown outcome disagree on its ETag", false, []porcupine.Operation{
			op(1, 2, never, put("b", none), unknown),
			op(0, 3, 4, get, read("b", 9, 5, 9)),
			op(0, 5, 6, get, read("b", 10, 5, 10)),
		}},
		{"a write of unknown outcome with an ETag below an earlier one", false, []porcupine.Operation{
			op(1, 2, never, put("b", none), unknown),
			op(0, 3, 4, get, read("b", 4, 5, 9)),
		}},
		{"create-only PUT on an absent key", true, []porcupine.Operation{
			op(1, 2, 3, del(none), kvOutput{found: true, index: 6}),
			op(1, 4, 5, put("b", createOnly), created(7)),
		}},
		{"create-only PUT on an existing key is refused", true, []porcupine.Operation{
			op(1, 2, 3, put("b", createOnly), refused(6, 5, 5)),
		}},
		{"create-only PUT succeeds on an existing key", false, []porcupine.Operation{
			op(1, 2, 3, put("b", createOnly), created(6)),
		}},
		{"create-only PUT replaces an existing key", false, []porcupine.Operation{
			op(1, 2, 3, put("b", createOnly), replaced(6, 5)),
		}},
		{"a 201 for a key that existed", false, []porcupine.Operation{
			op(1, 2, 3, put("b", none), created(6)),
		}},
		{"a write's ETag below the value's before it", false, []porcupine.Operation{
			op(1, 2, 3, put("b", none), replaced(4, 5)),
		}},
		{"a conditional DELETE of an absent key is 412, not 404", true, []porcupine.Operation{
			op(1, 2, 3, del(none), kvOutput{found: true, index: 6}),
			op(1, 4, 5, del(ifMatch(5)), refused(7, 0, 0)),
		}},
		{"a conditional DELETE of an absent key answers 404", false, []porcupine.Operation{
			op(1, 2, 3, del(none), kvOutput{found: true, index: 6}),
			op(1, 4, 5, del(ifMatch(5)), kvOutput{index: 7}),
		}},
		{"a read after a DELETE sees the value", false, []porcupine.Operation{
			op(1, 2, 3, del(none), kvOutput{found: true, index: 6}),
			op(0, 4, 5, get, read("a", 5, 5, 6)),
		}},
	} {
		ops := append([]porcupine.Operation{start}, tc.ops...)
		if got := porcupine.CheckOperations(kvModel(), ops); got != tc.ok {
			var steps []string
			for _, o := range ops {
				steps = append(steps, describeKV(o.Input.(kvInput), o.Output.(kvOutput)))
			}
			t.Errorf("%s: linearizable %t, want %t: %s", tc.name, got, tc.ok, strings.Join(steps, "; "))
		}
	}
}

// TestVersionLog proves that a value seen with two ETags, a PUT applied
// twice, is reported once, and that agreeing sightings are not.
func TestVersionLog(t *testing.T) {
	var l versionLog
	l.saw("1.1", 5, "the PUT's 204")
	l.saw("1.1", 5, "a consistent read")
	l.saw("1.2", 7, "the PUT's 204")
	if len(l.twice) != 0 {
		t.Fatalf("agreeing sightings reported: %q", l.twice)
	}
	l.saw("1.1", 9, "a stale read")
	l.saw("1.1", 11, "another stale read")
	if len(l.twice) != 1 || !strings.Contains(l.twice[0], `"1.1" was ETag 5 (the PUT's 204) and ETag 9 (a stale read)`) {
		t.Fatalf("a value seen with ETags 5, 9 and 11 reported as %q, want once, naming 5 and 9", l.twice)
	}
}
