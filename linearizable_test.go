package main

import (
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
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
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
	}{
		{"snapshot-count=10000", 10000, false},
		{"snapshot-count=50", 50, true},
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
			s := runLinearizable(t, bin, seed+uint64(i), run.snapshotCount, run.membership, faultTime)
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

// runLinearizable is one run: a 3-member cluster, the workload, faults
// for faultTime (and at least one of each kind), then the checks.
func runLinearizable(t *testing.T, bin string, seed uint64, snapshotCount int, membership bool, faultTime time.Duration) faultSummary {
	rng := rand.New(rand.NewPCG(seed, 0))
	c := newFaultCluster(t, bin, 3, snapshotCount)
	w := startWorkload(c, seed)
	defer w.halt()
	var s faultSummary
	// Every kind once, in an order the seed picks, then at random.
	kinds := slices.Clone(faultKinds)
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	end := time.Now().Add(faultTime)
	for i := 0; i < len(kinds) || time.Now().Before(end); i++ {
		if membership && i%membershipEvery == 2 {
			joined := c.grow(rng)
			removed := c.shrink(rng, joined)
			t.Logf("%s: member %d joined and member %d was removed under load", w.elapsed(), joined.id, removed.id)
			s.memberChanges++
		}
		kind := faultKinds[rng.IntN(len(faultKinds))]
		if i < len(kinds) {
			kind = kinds[i]
		}
		what, heal := c.inject(kind, rng)
		hold := time.Duration(500+rng.IntN(2500)) * time.Millisecond
		time.Sleep(hold) // the fault lasts this long
		heal()
		recovery := c.waitWritable(recoveryLimit)
		t.Logf("%s: %s for %s; every member took a write %s after it healed", w.elapsed(), what, hold, recovery.Round(time.Millisecond))
		s.fault(kind, recovery)
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond) // a spell without faults
	}
	w.halt()

	// Durability: every key read back now, and again after every member
	// is killed at once and restarted on its data dir.
	w.finalReads()
	for _, m := range c.active() {
		c.kill(m)
	}
	for _, m := range c.active() {
		c.start(m)
	}
	recovery := c.waitWritable(recoveryLimit)
	t.Logf("%s: killed and restarted every member; every member took a write %s later", w.elapsed(), recovery.Round(time.Millisecond))
	s.fault(faultRestartAll, recovery)
	w.finalReads()

	w.check(t, seed, &s)
	return s
}

// kvInput is one client operation, as porcupine sees it.
type kvInput struct {
	op    string // "get" (level=consistent), "put" or "delete"
	key   string
	value string // for put
}

// kvOutput is what the client learned.
type kvOutput struct {
	found   bool   // get: the key existed; delete: it existed and is gone (204)
	value   string // get: what it read
	unknown bool   // a write whose outcome the client never learned
}

// kvState is one key's state in the model.
type kvState struct {
	exists bool
	value  string
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
			s, in, out := state.(kvState), input.(kvInput), output.(kvOutput)
			switch in.op {
			case "get":
				return out.found == s.exists && out.value == s.value, s
			case "put":
				return true, kvState{exists: true, value: in.value}
			case "delete":
				return out.unknown || out.found == s.exists, kvState{}
			}
			return false, s
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(kvInput), output.(kvOutput)
			switch {
			case out.unknown:
				return fmt.Sprintf("%s(%s) → unknown", in.op, in.value)
			case in.op == "put":
				return fmt.Sprintf("put(%s)", in.value)
			case in.op == "get" && out.found:
				return fmt.Sprintf("get() → %s", out.value)
			default:
				return fmt.Sprintf("%s() → found=%t", in.op, out.found)
			}
		},
		DescribeState: func(state any) string {
			if s := state.(kvState); s.exists {
				return s.value
			}
			return "(none)"
		},
	}
}

// workload is the clients: linearizableClients doing colliding operations
// recorded for porcupine, and a stale and a default reader checking that
// whatever they read was written by someone.
type workload struct {
	c     *faultCluster
	seed  uint64
	start time.Time
	stopC chan struct{}
	wg    sync.WaitGroup
	once  sync.Once

	mu          sync.Mutex
	ops         []porcupine.Operation
	clients     int             // porcupine client ids handed out
	written     map[string]bool // every value a PUT has carried
	lastEpoch   int
	staleReads  int
	staleBad    []string // reads of values nobody wrote
	unexpected  []string // answers a correct server never gives
	finalClient int      // the client id of the final reads, -1 before
}

// startWorkload starts the clients against c.
func startWorkload(c *faultCluster, seed uint64) *workload {
	w := &workload{c: c, seed: seed, start: time.Now(), stopC: make(chan struct{}), written: make(map[string]bool), finalClient: -1}
	for i := range linearizableClients {
		w.wg.Go(func() { w.client(i) })
	}
	for i, level := range []string{"stale", "default"} {
		w.wg.Go(func() { w.staleReader(linearizableClients+i, level) })
	}
	return w
}

// halt stops the clients and waits for their last operations.
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

// linearizableKey names key i of epoch.
func linearizableKey(epoch, i int) string { return fmt.Sprintf("e%dk%d", epoch, i) }

// record adds a finished operation to the history.
func (w *workload) record(op porcupine.Operation) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ops = append(w.ops, op)
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
	return &http.Client{Timeout: clientTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
}

// client does PUT, DELETE and consistent GET on random keys in play, on
// random members, until halted; every operation with an effect that may
// have happened goes into the history.
func (w *workload) client(index int) {
	rng := rand.New(rand.NewPCG(w.seed, uint64(index)+1))
	hc := workloadHTTPClient()
	defer hc.CloseIdleConnections()
	id := w.newClient()
	for seq := 0; !w.stopped(); seq++ {
		targets := w.c.targets()
		target := targets[rng.IntN(len(targets))]
		in := kvInput{op: "get", key: w.key(rng)}
		switch r := rng.IntN(10); {
		case r < 4:
			in.op, in.value = "put", fmt.Sprintf("%d.%d", index, seq)
			w.mu.Lock()
			w.written[in.value] = true
			w.mu.Unlock()
		case r < 6:
			in.op = "delete"
		}
		call := w.now()
		out, known := w.do(hc, target, in)
		op := porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: w.now()}
		switch known {
		case outcomeKnown:
			w.record(op)
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
	outcomeNone                       // it certainly had no effect
	outcomeUnknown                    // it may or may not have happened
)

// do sends one operation to the member at target and judges the answer.
func (w *workload) do(hc *http.Client, target string, in kvInput) (kvOutput, clientKnows) {
	method, url, body := "GET", target+"/keys/"+in.key+"?level=consistent", ""
	switch in.op {
	case "put":
		method, body = "PUT", in.value
	case "delete":
		method = "DELETE"
	}
	if in.op != "get" {
		url = target + "/keys/" + in.key
	}
	r, err := e2eTry(hc, method, url, body)
	switch {
	case err != nil && (in.op == "get" || errors.Is(err, syscall.ECONNREFUSED)):
		return kvOutput{}, outcomeNone // a read has no effect; a refused connection sent nothing
	case err != nil:
		return kvOutput{unknown: true}, outcomeUnknown
	case in.op == "get" && r.code == http.StatusOK:
		return kvOutput{found: true, value: r.body}, outcomeKnown
	case in.op == "put" && (r.code == http.StatusCreated || r.code == http.StatusNoContent):
		return kvOutput{}, outcomeKnown
	case in.op == "delete" && r.code == http.StatusNoContent:
		return kvOutput{found: true}, outcomeKnown
	case in.op != "put" && r.code == http.StatusNotFound:
		return kvOutput{}, outcomeKnown // no such key, as of the read or the delete
	case r.code == http.StatusServiceUnavailable && strings.HasPrefix(r.body, ErrNoLeader.Error()):
		return kvOutput{}, outcomeNone // raft refused the proposal: it is in no log
	case r.code >= 500 && in.op == "get":
		return kvOutput{}, outcomeNone
	case r.code >= 500:
		return kvOutput{unknown: true}, outcomeUnknown
	}
	w.mu.Lock()
	w.unexpected = append(w.unexpected, fmt.Sprintf("%s %s: %d %q", method, url, r.code, r.body))
	w.mu.Unlock()
	return kvOutput{unknown: in.op != "get"}, outcomeUnknown
}

// staleReader reads at a level that may be stale and checks only that
// what it reads is a value some PUT carried.
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
		w.mu.Lock()
		w.staleReads++
		if !w.written[r.body] {
			w.staleBad = append(w.staleBad, fmt.Sprintf("GET %s → %q, which no PUT wrote", url, r.body))
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
			var out kvOutput
			var o clientKnows
			w.c.procs.eventually(recoveryLimit, "a consistent read of "+in.key, func() bool {
				call := w.now()
				out, o = w.do(faultProbeClient, targets[n%len(targets)], in)
				n++
				if o == outcomeKnown {
					w.record(porcupine.Operation{ClientId: w.finalClient, Input: in, Call: call, Output: out, Return: w.now()})
				}
				return o == outcomeKnown
			})
		}
	}
}

// check runs porcupine on each key's history, looks for acknowledged
// writes that the final reads show lost, and fails the test on either.
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
		path := filepath.Join(dir, key+".html")
		if err := porcupine.VisualizePath(model, info, path); err != nil {
			path = err.Error()
		}
		t.Errorf("key %s: history %s by porcupine (seed %d); visualization: %s", key, result, seed, path)
	}
	for _, bad := range w.staleBad {
		s.violations++
		t.Errorf("seed %d: %s", seed, bad)
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
			time.Duration(read.Call), kvModel().DescribeOperation(read.Input, read.Output),
			kvModel().DescribeOperation(lost.Input, lost.Output), time.Duration(lost.Return))
	}
	return ""
}

// acknowledgedWrite reports whether op changed the key and its client was
// told so: a 204 to a PUT or a DELETE.
func acknowledgedWrite(op porcupine.Operation) bool {
	in, out := op.Input.(kvInput), op.Output.(kvOutput)
	return !out.unknown && (in.op == "put" || (in.op == "delete" && out.found))
}

// faultSummary is what a run did and found: the summary line.
type faultSummary struct {
	ops, unknown, staleReads int
	faults                   map[faultKind]int
	memberChanges            int // a member added and another removed
	histories, violations    int
	lost                     int
	worstRecovery            time.Duration
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
	s.worstRecovery = max(s.worstRecovery, o.worstRecovery)
}

// String is the summary line.
func (s faultSummary) String() string {
	var faults []string
	total := 0
	for _, kind := range faultKinds {
		faults = append(faults, fmt.Sprintf("%s %d", kind, s.faults[kind]))
		total += s.faults[kind]
	}
	return fmt.Sprintf("%d operations (%d of unknown outcome) + %d stale/default reads, %d faults injected (%s) and %d membership changes, %d histories checked, %d violations, %d acknowledged writes lost, worst recovery %s",
		s.ops, s.unknown, s.staleReads, total, strings.Join(faults, ", "), s.memberChanges, s.histories, s.violations, s.lost, s.worstRecovery.Round(time.Millisecond))
}
