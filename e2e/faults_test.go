package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"

	"raftkv/e2e/testpki"
	"raftkv/membership"
)

// faultCluster runs real raftkv processes, each behind a peerProxy, and
// injects the faults a Jepsen-style test needs: kill and restart, pause
// and resume, network partitions, and membership changes. Only the test
// goroutine calls its methods, except targets, which clients call.
type faultCluster struct {
	t             *testing.T
	procs         *e2eCluster // starts, tracks and finally reaps the processes
	snapshotCount int
	extraArgs     []string // on every member's command line, after the rest

	mu      sync.Mutex
	members []*faultMember // by id-1, every member ever created
}

// faultMember is one member and the fault it is under, if any.
type faultMember struct {
	id      uint64
	client  string // client URL; read by workload goroutines while the cluster grows
	args    []string
	proxy   *peerProxy
	starts  int  // processes started so far, to name their logs
	paused  bool // SIGSTOPped
	removed bool // removed from the cluster; its process has exited
}

// faultMemberTimeout bounds how long a member may take to start serving,
// join, or leave.
const faultMemberTimeout = 30 * time.Second

// newFaultCluster starts n members with --snapshot-count snapshotCount and
// extraArgs, and waits until each serves.
func newFaultCluster(t *testing.T, bin string, n, snapshotCount int, extraArgs ...string) *faultCluster {
	procs := newE2ECluster(t, bin)
	procs.deadline = time.Now().Add(24 * time.Hour) // the caller bounds each wait itself
	c := &faultCluster{t: t, procs: procs, snapshotCount: snapshotCount, extraArgs: extraArgs}
	for range n {
		c.allocate()
	}
	for _, m := range c.members {
		m.args = c.args(m.id, "")
		c.start(m)
	}
	for _, m := range c.members {
		c.waitHealthy(m)
	}
	return c
}

// allocate reserves ports for one more member and puts a proxy in front
// of its peer listener.
func (c *faultCluster) allocate() *faultMember {
	id := c.procs.allocate()
	m := &faultMember{id: id, client: c.procs.clients[id-1], proxy: newPeerProxy(c.t, hostPort(c.procs.peers[id-1]), newProxyTLS(c.t, c.procs.pki))}
	c.mu.Lock()
	c.members = append(c.members, m)
	c.mu.Unlock()
	return m
}

// args is member id's command line: peers reach every member, itself
// included, through the proxies, while it listens behind its own.
func (c *faultCluster) args(id uint64, join string) []string {
	var cluster []string
	for _, m := range c.members {
		cluster = append(cluster, m.proxy.url())
	}
	client := c.procs.clients[id-1]
	args := []string{
		"--id", fmt.Sprint(id),
		"--cluster", strings.Join(cluster, ","),
		"--listen-peer-url", c.procs.peers[id-1],
		"--port", client[strings.LastIndex(client, ":")+1:],
		"--data-dir", filepath.Join(c.procs.dir, fmt.Sprintf("raftkv-%d", id)),
		"--snapshot-count", fmt.Sprint(c.snapshotCount),
		"--request-timeout", "3s",
	}
	args = append(args, c.procs.tlsArgs()...)
	if join != "" {
		args = append(args, "--join", join)
	}
	return append(args, c.extraArgs...)
}

// start runs a new process for m on its data dir.
func (c *faultCluster) start(m *faultMember) {
	m.starts++
	c.procs.start(m.id, fmt.Sprintf("raftkv%d-%d", m.id, m.starts), m.args...)
}

// kill SIGKILLs m's process and waits until it is gone.
func (c *faultCluster) kill(m *faultMember) {
	p := c.procs.expectExit(m.id)
	p.cmd.Process.Kill()
	<-p.done
}

// signal sends sig to m's process.
func (c *faultCluster) signal(m *faultMember, sig syscall.Signal) {
	if err := c.procs.running[m.id].cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("signal member %d: %v", m.id, err)
	}
	m.paused = sig == syscall.SIGSTOP
}

// active is the members in the cluster, in id order.
func (c *faultCluster) active() []*faultMember {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ms []*faultMember
	for _, m := range c.members {
		if !m.removed {
			ms = append(ms, m)
		}
	}
	return ms
}

// targets is the client URLs clients may send to: every member in the
// cluster, whether or not it is down at the moment, as real clients would.
func (c *faultCluster) targets() []string {
	var urls []string
	for _, m := range c.active() {
		urls = append(urls, m.client)
	}
	return urls
}

// url is member m's client URL with path appended.
func (c *faultCluster) url(m *faultMember, path string) string {
	return c.procs.url(m.id, path)
}

// checkRunning fails the test if a member's process exited by itself: a
// crash under faults is a bug whatever the history says.
func (c *faultCluster) checkRunning() {
	c.t.Helper()
	for _, m := range c.active() {
		p, ok := c.procs.running[m.id]
		if !ok {
			c.t.Fatalf("member %d is not running", m.id)
		}
		select {
		case <-p.done:
			c.t.Fatalf("member %d exited by itself (%s); its log is %s", m.id, p.exitStatus(), p.log)
		default:
		}
	}
}

// waitHealthy waits until m answers GET /health with 200: it is up, knows
// a leader and the leader's client URL, and has advertised its own.
func (c *faultCluster) waitHealthy(m *faultMember) {
	c.t.Helper()
	c.procs.eventually(faultMemberTimeout, fmt.Sprintf("member %d to answer GET /health with 200", m.id), func() bool {
		r, err := e2eTry(faultProbeClient, "GET", c.url(m, "/health"), "")
		return err == nil && r.code == http.StatusOK
	})
}

// faultProbeClient is what the harness itself uses: short timeouts, no
// redirects, a new connection per request.
var faultProbeClient = &http.Client{
	Transport:     e2eTransport,
	Timeout:       2 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// waitWritable measures liveness: how long, from now, until every member
// in the cluster has accepted a write. It fails the test past limit.
func (c *faultCluster) waitWritable(limit time.Duration) time.Duration {
	c.t.Helper()
	c.checkRunning()
	start := time.Now()
	var wg sync.WaitGroup
	late := make(chan uint64, len(c.members))
	for _, m := range c.active() {
		wg.Go(func() {
			for time.Since(start) < limit {
				r, err := e2eTry(faultProbeClient, "PUT", c.url(m, fmt.Sprintf("/keys/probe-%d", m.id)), "alive")
				if err == nil && (r.code == http.StatusNoContent || r.code == http.StatusCreated) {
					return // 201 for a probe key this member writes first
				}
				time.Sleep(50 * time.Millisecond) // a client's pause between retries
			}
			late <- m.id
		})
	}
	wg.Wait()
	close(late)
	for id := range late {
		c.checkRunning()
		c.t.Fatalf("member %d accepted no write within %s of the faults healing", id, limit)
	}
	return time.Since(start)
}

// leader asks the members that are up who leads; 0 if none knows of a
// leader in the cluster. (Just after a removal, a member may still name the
// removed one.)
func (c *faultCluster) leader() uint64 {
	ms := c.active()
	for _, m := range ms {
		if m.paused {
			continue
		}
		r, err := e2eTry(faultProbeClient, "GET", c.url(m, "/status"), "")
		if err != nil || r.code != http.StatusOK {
			continue
		}
		var st statusView
		if json.Unmarshal([]byte(r.body), &st) == nil && slices.Contains(faultIDs(ms), st.Leader) {
			return st.Leader
		}
	}
	return 0
}

// member returns the member with id.
func (c *faultCluster) member(id uint64) *faultMember {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[id-1]
}

// faultKind is one kind of fault the nemesis injects.
type faultKind string

// The fault kinds; a short run injects each at least once.
const (
	faultKill       faultKind = "kill"        // SIGKILL a member, restart it on its data dir
	faultPause      faultKind = "pause"       // SIGSTOP a member (a long GC pause), then SIGCONT
	faultPartition  faultKind = "partition"   // cut a minority off from the rest, then heal
	faultKillLeader faultKind = "kill-leader" // SIGKILL whoever leads, restart it
	faultRestartAll faultKind = "restart-all" // SIGKILL every member, restart them all
)

// faultKinds lists every kind, in a fixed order a seed can shuffle.
var faultKinds = []faultKind{faultKill, faultPause, faultPartition, faultKillLeader, faultRestartAll}

// inject starts a fault of kind on members picked with rng and returns a
// description and the function that undoes it.
func (c *faultCluster) inject(kind faultKind, rng *rand.Rand) (string, func()) {
	ms := c.active()
	pick := ms[rng.IntN(len(ms))]
	switch kind {
	case faultKill, faultKillLeader:
		what := "member"
		if id := c.leader(); kind == faultKillLeader && id != 0 {
			pick, what = c.member(id), "leader"
		}
		c.kill(pick)
		return fmt.Sprintf("kill %s %d", what, pick.id), func() { c.start(pick) }
	case faultPause:
		c.signal(pick, syscall.SIGSTOP)
		return fmt.Sprintf("pause member %d", pick.id), func() { c.signal(pick, syscall.SIGCONT) }
	case faultPartition:
		// A random minority, so the majority side can go on.
		perm := rng.Perm(len(ms))
		minority := make([]*faultMember, 1+rng.IntN((len(ms)-1)/2))
		for i := range minority {
			minority[i] = ms[perm[i]]
		}
		c.setPartition(ms, minority, true)
		return fmt.Sprintf("cut %v off", faultIDs(minority)), func() { c.setPartition(ms, minority, false) }
	case faultRestartAll:
		for _, m := range ms {
			c.kill(m)
		}
		return "kill every member", func() {
			for _, m := range ms {
				c.start(m)
			}
		}
	}
	c.t.Fatalf("unknown fault kind %q", kind)
	return "", nil
}

// nemesis injects faults into c for faultTime, and goes on past it until
// every kind has been injected once, in an order rng picks; then kinds at
// random. Each fault lasts 0.5–3 s and is followed by a spell without
// faults once every member takes writes again. With membership, every
// membershipEvery faults a member joins and another leaves, under load.
// Each fault is logged at elapsed() and counted in s. TestLinearizable and
// TestExactlyOnceCounter share it, so both see every fault there is.
func (c *faultCluster) nemesis(rng *rand.Rand, faultTime time.Duration, membership bool, elapsed func() time.Duration, s *faultSummary) {
	c.t.Helper()
	kinds := slices.Clone(faultKinds)
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	end := time.Now().Add(faultTime)
	for i := 0; i < len(kinds) || time.Now().Before(end); i++ {
		if membership && i%membershipEvery == 2 {
			joined := c.grow(rng)
			removed := c.shrink(rng, joined)
			c.t.Logf("%s: member %d joined and member %d was removed under load", elapsed(), joined.id, removed.id)
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
		c.t.Logf("%s: %s for %s; every member took a write %s after it healed", elapsed(), what, hold, recovery.Round(time.Millisecond))
		s.fault(kind, recovery)
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond) // a spell without faults
	}
}

// restartAll kills every member at once and restarts each on its data
// dir, and returns how long until every member took a write again.
func (c *faultCluster) restartAll() time.Duration {
	c.t.Helper()
	for _, m := range c.active() {
		c.kill(m)
	}
	for _, m := range c.active() {
		c.start(m)
	}
	return c.waitWritable(recoveryLimit)
}

// setPartition cuts (or heals) every link between minority and the rest
// of ms, in both directions.
func (c *faultCluster) setPartition(ms, minority []*faultMember, cut bool) {
	for _, a := range minority {
		for _, b := range ms {
			if slices.Contains(minority, b) {
				continue
			}
			if cut {
				a.proxy.cut(b.id)
				b.proxy.cut(a.id)
			} else {
				a.proxy.heal(b.id)
				b.proxy.heal(a.id)
			}
		}
	}
}

// faultIDs lists the ids of ms.
func faultIDs(ms []*faultMember) []uint64 {
	ids := make([]uint64, len(ms))
	for i, m := range ms {
		ids[i] = m.id
	}
	return ids
}

// grow adds a member under load the way an operator would: a new process
// with --join, through a member picked with rng. It returns once the new
// member serves and every member lists it as a voter: --join adds it as a
// learner, and it is promoted once it has caught up.
func (c *faultCluster) grow(rng *rand.Rand) *faultMember {
	c.t.Helper()
	via := c.active()[rng.IntN(len(c.active()))]
	m := c.allocate()
	m.args = c.args(m.id, c.procs.clients[via.id-1])
	c.join(m)
	for _, other := range c.active() {
		c.procs.eventually(faultMemberTimeout, fmt.Sprintf("member %d to list member %d", other.id, m.id), func() bool {
			r, err := e2eTry(faultProbeClient, "GET", c.url(other, "/members"), "")
			var ms []membership.View
			if err != nil || r.code != http.StatusOK || json.Unmarshal([]byte(r.body), &ms) != nil {
				return false
			}
			i := slices.IndexFunc(ms, func(v membership.View) bool { return v.ID == m.id })
			return i >= 0 && len(ms[i].ClientURLs) > 0 && !ms[i].IsLearner
		})
	}
	return m
}

// join starts m, whose args say --join, until it serves. --join adds a
// learner, which strict reconfiguration never refuses; should the join be
// refused all the same (membership.ErrTooFewHealthy, as a voter's could be by a member
// that has just reconnected after a fault and does not count its peers
// healthy yet), the joiner exits, and, like an operator, join tries again a
// little later. (Its promotion, which such a member may refuse too, the
// joiner retries by itself.)
func (c *faultCluster) join(m *faultMember) {
	c.t.Helper()
	for attempt := 1; ; attempt++ {
		c.start(m)
		p := c.procs.running[m.id]
		exited := false
		eventually(c.t, faultMemberTimeout, fmt.Sprintf("member %d to join and answer GET /health with 200", m.id), func() bool {
			select {
			case <-p.done:
				exited = true
				return true
			default:
			}
			r, err := e2eTry(faultProbeClient, "GET", c.url(m, "/health"), "")
			return err == nil && r.code == http.StatusOK
		})
		if !exited {
			return
		}
		c.procs.expectExit(m.id)
		last := e2eTail(p.log, 1)
		if !strings.Contains(last, membership.ErrTooFewHealthy.Error()) || attempt == 5 {
			c.t.Fatalf("member %d exited (%s) while joining: %s", m.id, p.exitStatus(), last)
		}
		c.t.Logf("member %d: join refused, trying again in a second: %s", m.id, last)
		time.Sleep(time.Second)
	}
}

// shrink removes a member other than keep, picked with rng (perhaps the
// leader), through another member, and waits for its process to exit 0.
func (c *faultCluster) shrink(rng *rand.Rand, keep *faultMember) *faultMember {
	c.t.Helper()
	var candidates []*faultMember
	for _, m := range c.active() {
		if m != keep {
			candidates = append(candidates, m)
		}
	}
	victim := candidates[rng.IntN(len(candidates))]
	via := keep
	what := "member"
	if c.leader() == victim.id {
		what = "leader" // handed over first: see membership's Remove, which has the cluster TransferLeadership
	}
	c.mu.Lock()
	victim.removed = true // clients stop choosing it; requests in flight are theirs to judge
	c.mu.Unlock()
	proc := c.procs.expectExit(victim.id)
	// A 504 leaves the removal's outcome unknown; retrying then answers 404
	// if the first attempt was applied after all.
	// A 409 or 503 (too few healthy voters, no leader, a hand-over that did
	// not finish) changed nothing: retry too.
	path := fmt.Sprintf("/members/%d", victim.id)
	start, retried := time.Now(), ""
	c.procs.eventually(faultMemberTimeout, fmt.Sprintf("DELETE %s through member %d", path, via.id), func() bool {
		r, err := e2eTry(e2eClient, "DELETE", c.url(via, path), "")
		if err == nil && (r.code == http.StatusNoContent || r.code == http.StatusNotFound) {
			return true
		}
		retried = fmt.Sprintf("%d %q %v", r.code, r.body, err)
		return false
	})
	c.procs.waitExit(proc, faultMemberTimeout, "after its removal")
	c.t.Logf("removed %s %d through member %d in %s (last answer retried: %s)", what, victim.id, via.id, time.Since(start).Round(time.Millisecond), cmp.Or(retried, "none"))
	return victim
}

// peerProxy stands in front of one member's peer listener, so a test can
// cut the network between chosen members without root: a cut link is one
// whose connections the proxy drops and refuses. Every member reaches every
// other through the other's proxy (the proxy's URL is what --cluster lists;
// the member itself listens on --listen-peer-url), so the proxy tells who
// is calling by the X-Server-From header rafthttp puts on every stream and
// pipeline request, and forwards the bytes untouched.
type peerProxy struct {
	ln     net.Listener
	target string    // host:port of the member's own peer listener
	tls    *proxyTLS // for a member on TLS; nil on plain http

	mu      sync.Mutex
	blocked map[string]bool     // X-Server-From values (member ids in hex) cut off
	conns   map[net.Conn]string // open connections, both sides, by caller ("" until known)
	wg      sync.WaitGroup      // one per connection being served
	closed  bool                // set once close has begun
	stopped chan struct{}       // closed when the accept loop ends
}

// newPeerProxy listens on an ephemeral loopback port and forwards to
// target, over TLS with pt (nil for plain TCP).
func newPeerProxy(t testing.TB, target string, pt *proxyTLS) *peerProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &peerProxy{
		ln:      pt.listen(ln),
		target:  target,
		tls:     pt,
		blocked: make(map[string]bool),
		conns:   make(map[net.Conn]string),
		stopped: make(chan struct{}),
	}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// url is the peer URL members use to reach the member behind the proxy.
func (p *peerProxy) url() string { return p.tls.scheme() + "://" + p.ln.Addr().String() }

// serve accepts connections until the proxy is closed.
func (p *peerProxy) serve() {
	defer close(p.stopped)
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		if !p.track(c, "") {
			p.wg.Done()
			c.Close()
			return
		}
		go func() {
			defer p.wg.Done()
			p.forward(c)
		}()
	}
}

// maxPeerHeader bounds how much of a request the proxy reads to find its
// header; rafthttp's headers are a few hundred bytes.
const maxPeerHeader = 16 << 10

// forward learns who is calling from the first request's header (over
// TLS, once the proxy has decrypted it), refuses
// the connection if that caller is cut off, and otherwise copies bytes both
// ways until either side closes or the link is cut.
func (p *peerProxy) forward(c net.Conn) {
	defer c.Close()
	defer p.untrack(c)
	br := bufio.NewReaderSize(c, maxPeerHeader)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	from, ok := peekCaller(br)
	if !ok {
		return
	}
	c.SetReadDeadline(time.Time{})
	if !p.track(c, from) {
		return
	}
	up, err := p.tls.dial(p.target)
	if err != nil {
		return
	}
	defer up.Close()
	if !p.track(up, from) {
		return
	}
	defer p.untrack(up)
	if from == "" {
		// rafthttp's prober names no caller, and its HTTP transport
		// reuses the connection for pipeline messages, which do: forward
		// this one request only, so that a connection that carries raft
		// messages always names its caller and a cut holds.
		forwardOne(c, br, up)
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, br); closeWrite(up); done <- struct{}{} }()
	go func() { io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

// forwardOne forwards one request from br to up and its answer back to c,
// each marked as the last on its connection.
func forwardOne(c net.Conn, br *bufio.Reader, up net.Conn) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	req.Close = true
	if err := req.Write(up); err != nil {
		return
	}
	resp, err := http.ReadResponse(bufio.NewReader(up), req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	resp.Close = true
	resp.Write(c)
}

// peekCaller finds the end of the request header in br without consuming
// it, and returns the X-Server-From value ("" for requests without one,
// such as rafthttp's RTT probes, which carry no raft messages).
func peekCaller(br *bufio.Reader) (string, bool) {
	for n := 1; n <= maxPeerHeader; n = br.Buffered() + 1 {
		// Wait for n bytes, then look at all that has arrived.
		if _, err := br.Peek(n); err != nil {
			return "", false
		}
		head, _ := br.Peek(br.Buffered())
		if i := bytes.Index(head, []byte("\r\n\r\n")); i >= 0 {
			req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head[:i+4])))
			if err != nil {
				return "", false
			}
			return req.Header.Get("X-Server-From"), true
		}
	}
	return "", false
}

// track records c as a connection from caller, unless that caller is cut
// off or the proxy is closing.
func (p *peerProxy) track(c net.Conn, from string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.blocked[from] {
		return false
	}
	p.conns[c] = from
	return true
}

// untrack forgets c once its forwarding has ended.
func (p *peerProxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

// cut drops every connection from the member with id caller and refuses
// new ones until heal.
func (p *peerProxy) cut(caller uint64) {
	from := proxyCallerID(caller)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked[from] = true
	for c, f := range p.conns {
		if f == from {
			c.Close()
		}
	}
}

// heal lets the member with id caller connect again.
func (p *peerProxy) heal(caller uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.blocked, proxyCallerID(caller))
}

// close stops accepting, drops every connection and waits for the
// forwarding goroutines to end.
func (p *peerProxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	<-p.stopped
	p.wg.Wait()
}

// proxyCallerID is how rafthttp writes a member id in X-Server-From
// (types.ID's String: hexadecimal).
func proxyCallerID(id uint64) string {
	return types.ID(id).String()
}

// TestPeerProxy proves the proxy forwards requests, cuts a caller off
// (dropping its open connections and refusing new ones) and heals, on
// plain TCP and, for members on TLS, terminating TLS on both sides.
func TestPeerProxy(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "from "+r.Header.Get("X-Server-From"))
	})
	t.Run("http", func(t *testing.T) {
		backend := httptest.NewServer(handler)
		defer backend.Close()
		p := newPeerProxy(t, backend.Listener.Addr().String(), nil)
		checkPeerProxy(t, p, &http.Client{})
	})
	t.Run("https", func(t *testing.T) {
		pki := testpki.New(t)
		pt := newProxyTLS(t, pki)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		backend := &http.Server{Handler: handler}
		go backend.Serve(tls.NewListener(ln, pt.server)) // a member's peer port: it wants a peer certificate
		defer backend.Close()
		p := newPeerProxy(t, ln.Addr().String(), pt)
		tr := &http.Transport{TLSClientConfig: testpki.ClientConfig(t, pki.CAFile, pki.Server)}
		defer tr.CloseIdleConnections()
		checkPeerProxy(t, p, &http.Client{Transport: tr})
		if _, err := e2eTry(&http.Client{Transport: &http.Transport{TLSClientConfig: testpki.ClientConfig(t, pki.CAFile, testpki.Cert{})}}, "GET", p.url()+"/raft/probing", ""); err == nil {
			t.Error("the proxy took a connection without a peer certificate")
		}
	})
}

// checkPeerProxy proves p forwards, cuts and heals callers, who call with hc.
func checkPeerProxy(t *testing.T, p *peerProxy, hc *http.Client) {
	get := func(from uint64) (string, error) {
		req, _ := http.NewRequest("GET", p.url()+"/raft/probing", nil)
		req.Header.Set("X-Server-From", proxyCallerID(from))
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	if got, err := get(1); err != nil || got != "from 1" {
		t.Fatalf("through the proxy: %q, %v; want \"from 1\"", got, err)
	}
	p.cut(1)
	if got, err := get(1); err == nil {
		t.Fatalf("cut caller got %q through the proxy", got)
	}
	if got, err := get(2); err != nil || got != "from 2" {
		t.Fatalf("another caller during the cut: %q, %v; want \"from 2\"", got, err)
	}
	p.heal(1)
	if got, err := get(1); err != nil || got != "from 1" {
		t.Fatalf("after heal: %q, %v; want \"from 1\"", got, err)
	}
}
