package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	etcdversion "go.etcd.io/etcd/api/v3/version"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"raftkv/config"
	"raftkv/e2e/testpki"
	"raftkv/limits"
	"raftkv/tlsconfig"
)

// The listeners (listener.go): slow clients on the client and the peer
// port, and TLS handshakes refused on the client port.

// slowKind is one way a connection can make no progress.
type slowKind struct {
	name    string
	request string // sent at once, on a request line for the port's path
	trickle bool   // then one more byte every slowTrickleEvery
	answer  bool   // read one whole answer before the wait starts: a kept-alive connection
	bound   func(limits.Conn) time.Duration
	answers string // what the server must send before it closes, if anything
}

// slowTrickleEvery is how often a trickling client sends its next byte:
// far faster than any bound, so only a whole-request bound can stop it.
const slowTrickleEvery = 50 * time.Millisecond

// slowKinds are the four kinds the test opens, for a port whose routes
// include path; a body goes with method, to bodyPath with bodyHeaders.
func slowKinds(path, method, bodyPath, bodyHeaders string) []slowKind {
	return []slowKind{
		{name: "silent", bound: func(l limits.Conn) time.Duration { return l.Header }},
		{name: "headers trickling", request: fmt.Sprintf("GET %s HTTP/1.1\r\nHost: slow\r\nX-Slow: ", path), trickle: true,
			bound: func(l limits.Conn) time.Duration { return l.Header }},
		{name: "body trickling", request: fmt.Sprintf("%s %s HTTP/1.1\r\nHost: slow\r\n%sContent-Length: 100000\r\n\r\n", method, bodyPath, bodyHeaders), trickle: true,
			bound: func(l limits.Conn) time.Duration { return l.Body }},
		{name: "idle kept alive", request: fmt.Sprintf("GET %s HTTP/1.1\r\nHost: slow\r\n\r\n", path), answer: true,
			bound: func(l limits.Conn) time.Duration { return l.Idle }},
	}
}

// slowResult is what became of one slow connection.
type slowResult struct {
	kind     slowKind
	port     string
	heldFor  time.Duration // from when it stopped making progress to when the server closed it
	closed   bool          // false: still open when the test stopped waiting
	received string        // what the server sent after the wait started
	err      error         // a failure of the test's own, before the wait
}

// slowConnect opens one connection to addr, behaves as k, and reports
// when the server closes it, waiting until giveUp at most.
func slowConnect(addr string, k slowKind, giveUp time.Time) slowResult {
	res := slowResult{kind: k}
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		res.err = err
		return res
	}
	defer conn.Close()
	conn.SetDeadline(giveUp)
	br := bufio.NewReader(conn)
	if _, err := io.WriteString(conn, k.request); err != nil {
		res.err = err
		return res
	}
	if k.answer {
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if err != nil {
			res.err = fmt.Errorf("first request: %w", err)
			return res
		}
	}
	start := time.Now()
	stop := make(chan struct{})
	var trickling sync.WaitGroup
	if k.trickle {
		trickling.Go(func() {
			tick := time.NewTicker(slowTrickleEvery)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					if _, err := conn.Write([]byte("x")); err != nil {
						return
					}
				}
			}
		})
	}
	var got bytes.Buffer
	_, err = io.Copy(&got, br) // until the server closes (EOF, or a reset if it left bytes unread)
	res.heldFor = time.Since(start)
	res.closed = !errors.Is(err, os.ErrDeadlineExceeded)
	res.received = got.String()
	close(stop)
	trickling.Wait()
	return res
}

// TestSlowClients proves a member closes 200 connections that make no progress (silent, trickling headers or a body, idle after an answer), on both ports, within its bounds, while PUTs and GETs on other connections are answered promptly.
func TestSlowClients(t *testing.T) {
	bounds := limits.Conn{Header: 300 * time.Millisecond, Body: 600 * time.Millisecond, Idle: 450 * time.Millisecond}
	// What a loaded 2-core machine may add to a bound before the close is
	// seen; the old code held these connections for 10 s or for ever.
	const slack = 1500 * time.Millisecond
	c := newTestCluster(t, 1, func(cfg *config.Config) {
		cfg.ClientConnLimits = bounds
		cfg.PeerConnLimits = bounds
	})
	clientAddr := strings.TrimPrefix(c.clients[0], "http://")
	peerAddr := strings.TrimPrefix(c.peerURLs[0], "http://")
	ports := []struct {
		name, addr string
		kinds      []slowKind
		conns      int
	}{
		{"client", clientAddr, slowKinds("/health", "PUT", "/keys/slow", ""), 160},
		// A raft message, with the headers rafthttp checks before it
		// reads the body.
		{"peer", peerAddr, slowKinds("/raft/probing", "POST", "/raft", fmt.Sprintf("X-Server-Version: %s\r\nX-Etcd-Cluster-ID: %x\r\n", etcdversion.Version, c.server(1).raft.clusterID)), 40},
	}
	// A client whose body is cut off is told so; rafthttp answers 400.
	ports[0].kinds[2].answers = "HTTP/1.1 408 "
	ports[1].kinds[2].answers = "HTTP/1.1 400 "

	giveUp := time.Now().Add(max(bounds.Header, bounds.Body, bounds.Idle) + slack + time.Second)
	results := make(chan slowResult, 200)
	var slow sync.WaitGroup
	for _, p := range ports {
		for i := range p.conns {
			k := p.kinds[i%len(p.kinds)]
			slow.Go(func() {
				res := slowConnect(p.addr, k, giveUp)
				res.port = p.name
				results <- res
			})
		}
	}
	done := make(chan struct{})
	go func() {
		slow.Wait()
		close(done)
	}()

	// Meanwhile, a client writes and reads on connections of its own.
	client := &http.Client{Timeout: 2 * time.Second}
	var ops int
	var slowest time.Duration
	for i := 0; ; i++ {
		select {
		case <-done:
		default:
			key := fmt.Sprintf("%s/keys/k%d", c.clients[0], i)
			for _, op := range []struct{ method, url, body string }{{"PUT", key, "v"}, {"GET", key + "?level=consistent", ""}} {
				start := time.Now()
				req, _ := http.NewRequest(op.method, op.url, strings.NewReader(op.body))
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("%s %s beside the slow connections: %v", op.method, op.url, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode >= 300 {
					t.Fatalf("%s %s beside the slow connections: %d", op.method, op.url, resp.StatusCode)
				}
				slowest = max(slowest, time.Since(start))
				ops++
			}
			continue
		}
		break
	}
	close(results)
	t.Logf("%d requests served beside the slow connections, the slowest in %s", ops, slowest.Round(time.Millisecond))
	if slowest > time.Second {
		t.Errorf("a request beside the slow connections took %s", slowest)
	}

	// By port and kind: the longest hold, and the first failure of each
	// sort with how many connections failed so.
	held := make(map[string]time.Duration)
	failed := make(map[string]int)
	first := make(map[string]string)
	for res := range results {
		what := res.port + " port, " + res.kind.name
		bound := res.kind.bound(bounds)
		var failure string
		switch {
		case res.err != nil:
			failure = res.err.Error()
		case !res.closed:
			failure = fmt.Sprintf("still open after %s; bound %s", res.heldFor.Round(time.Millisecond), bound)
		case res.heldFor > bound+slack:
			failure = fmt.Sprintf("closed after %s; bound %s", res.heldFor.Round(time.Millisecond), bound)
		case !strings.HasPrefix(res.received, res.kind.answers):
			failure = fmt.Sprintf("answered %.80q before closing, want %q first", res.received, res.kind.answers)
		}
		held[what] = max(held[what], res.heldFor)
		if failure != "" {
			failed[what]++
			if first[what] == "" {
				first[what] = failure
			}
		}
	}
	for _, what := range slices.Sorted(maps.Keys(held)) {
		if failed[what] > 0 {
			t.Errorf("%s: %d connections failed, the first: %s", what, failed[what], first[what])
		} else {
			t.Logf("%s: held at most %s", what, held[what].Round(time.Millisecond))
		}
	}
}

// TestTLSHandshakeFailureLogged proves a refused TLS connection is logged,
// with the address it came from.
func TestTLSHandshakeFailureLogged(t *testing.T) {
	pki := testpki.New(t)
	core, logs := observer.New(zapcore.WarnLevel)
	client, _ := pki.MemberTLS(pki.Server)
	ln, err := limits.ListenClients("127.0.0.1:0", tlsconfig.Listen(client, zap.New(core), "client"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(ln)
	defer srv.Close()
	url := "https://" + ln.Addr().String() + "/"
	if r := tlsDo(t, tlsTestClient(t, pki.CAFile, pki.Client, false), "GET", url, ""); r.code != http.StatusOK {
		t.Fatalf("GET with a client certificate: %d %q", r.code, r.body)
	}
	tlsRefused(t, tlsTestClient(t, pki.CAFile, testpki.Cert{}, false), url, "a client without a certificate")
	eventually(t, 5*time.Second, "the refused connection to be logged", func() bool {
		for _, e := range logs.All() {
			if strings.Contains(e.Message, "refused a TLS connection on the client port") && e.ContextMap()["remote-addr"] != nil {
				return true
			}
		}
		return false
	})
}
