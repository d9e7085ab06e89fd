package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
)

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
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, br); closeWrite(up); done <- struct{}{} }()
	go func() { io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
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
		pki := newTestPKI(t)
		pt := newProxyTLS(t, pki)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		backend := &http.Server{Handler: handler}
		go backend.Serve(tls.NewListener(ln, pt.server)) // a member's peer port: it wants a peer certificate
		defer backend.Close()
		p := newPeerProxy(t, ln.Addr().String(), pt)
		tr := &http.Transport{TLSClientConfig: clientConfig(t, pki.caFile, pki.server)}
		defer tr.CloseIdleConnections()
		checkPeerProxy(t, p, &http.Client{Transport: tr})
		if _, err := e2eTry(&http.Client{Transport: &http.Transport{TLSClientConfig: clientConfig(t, pki.caFile, testCert{})}}, "GET", p.url()+"/raft/probing", ""); err == nil {
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
