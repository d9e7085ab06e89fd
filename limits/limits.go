// Package limits bounds what clients and peers can hold of a member: how
// many client connections it accepts at once (ListenClients, which
// startServer listens with), and how long a connection that makes no
// progress may hold it (NewServer, which serves the client port and the
// peer port; a request body that does not arrive in time fails with
// ErrBodyTimeout).
package limits

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/pkg/v3/runtime"

	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
)

// ErrBodyTimeout is a request body that did not arrive within its bound.
var ErrBodyTimeout = errors.New("request body too slow")

// Conn bounds how long a connection may hold a member's resources (a
// goroutine, a file descriptor, memory) while its client makes no
// progress: a client that sends its headers or body a byte at a time, or
// keeps a connection open without sending anything, is closed once its
// bound passes, however many such clients there are. A zero field takes
// its default (see Client and Peer), so a config built by a test bounds
// connections as one built from flags does.
type Conn struct {
	Header time.Duration // to read a request's headers, from its first byte
	Body   time.Duration // to read a request's body, from when its handler starts
	Idle   time.Duration // to wait for the next request on a kept-alive connection
}

// Client is l with the client port's defaults. The body bound is generous
// next to the largest value (8 MiB at 280 KB/s): it is there to cut off a
// stalled or trickling client, not a slow link. Clients keep idle
// connections for reuse (Go's for 90s); a minute frees a forgotten one.
func (l Conn) Client() Conn {
	return Conn{
		Header: cmp.Or(l.Header, 10*time.Second),
		Body:   cmp.Or(l.Body, 30*time.Second),
		Idle:   cmp.Or(l.Idle, time.Minute),
	}
}

// Peer is l with the peer port's defaults, as etcd sets them. rafthttp sends
// its headers at once and expects an answer within its
// rafthttp.ConnReadTimeout; etcd's peer listener gives up on a connection
// that sends nothing for that long, which is the header and idle bound
// here. etcd's peer server gives a request 5 minutes (ReadTimeout): a
// snapshot POST carries the whole state (about 90 MB for a million keys),
// so the body bound must fit it over a slow link. Stream GETs (rafthttp's
// long-lived connections, which the server writes to for as long as the
// peer is up) have no body, and so no bound but the header one.
func (l Conn) Peer() Conn {
	return Conn{
		Header: cmp.Or(l.Header, rafthttp.ConnReadTimeout),
		Body:   cmp.Or(l.Body, 5*time.Minute),
		Idle:   cmp.Or(l.Idle, rafthttp.ConnReadTimeout),
	}
}

// NewServer is an HTTP server for h whose connections keep to l.
//
// The body bound is not http.Server.ReadTimeout: that deadline stays on
// the connection after the body has been read, while the handler waits
// for raft, and the server's background read (which watches for the
// client going away) then fails at it and cancels the request's context,
// so a write waiting to commit would be cut off. boundBody sets the
// deadline only while a body is read. No write bound is set: rafthttp's
// stream responses last as long as the peer is up.
func NewServer(h http.Handler, l Conn) *http.Server {
	return &http.Server{
		Handler:           boundBody(h, l.Body),
		ReadHeaderTimeout: l.Header,
		IdleTimeout:       l.Idle,
	}
}

// boundBody gives every request with a body at most d, from when its
// handler starts, to send it: a read past that fails with ErrBodyTimeout.
// A request without a body (a GET, a rafthttp stream) is left alone.
func boundBody(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 {
			ctl := http.NewResponseController(w)
			// A ResponseWriter that is not a connection's (httptest's)
			// has no deadline to set; its body is in memory already.
			if ctl.SetReadDeadline(time.Now().Add(d)) == nil {
				r.Body = &deadlineBody{ReadCloser: r.Body, ctl: ctl, bound: d}
			}
		}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody is a request body read under a deadline on its connection.
// It lifts the deadline once the body has ended: the server then starts
// its background read on the connection, which would fail at the deadline
// and cancel the request's context while the handler still works on it.
type deadlineBody struct {
	io.ReadCloser
	ctl   *http.ResponseController
	bound time.Duration
}

// Read reads the body, naming a read cut off by the deadline.
func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = fmt.Errorf("%w: not all of it arrived within %s", ErrBodyTimeout, b.bound)
	default: // the end of the body, or of the connection
		b.ctl.SetReadDeadline(time.Time{})
	}
	return n, err
}

// ReservedFDs is how many file descriptors client connections leave to the
// member itself, as etcd's reservedInternalFDNum does: the WAL's files
// (the one written, the next one preallocated), snapshot files being
// written and read, the data dir scans that purge old files, the peer
// listener, and rafthttp's connections, two streams and a few pipeline
// and snapshot connections to every peer. Out of descriptors, the member
// could not cut a WAL file or save a snapshot, and would stop.
const ReservedFDs = 150

// ListenClients listens for clients on addr, accepting at most as many
// connections at a time as the file descriptor limit leaves beyond
// ReservedFDs. Clients beyond that wait in the kernel's accept queue until
// a connection closes, which Conn bounds. With tlsInfo (nil for
// plain http) it serves TLS, as etcd's client listener does: the limit
// counts connections before their handshake, which etcd's TLS listener
// runs apart from Accept and gives up on after 10 seconds.
func ListenClients(addr string, tlsInfo *transport.TLSInfo) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if limit, err := runtime.FDLimit(); err == nil { // else no limit to keep within on this system
		if limit <= ReservedFDs {
			ln.Close()
			return nil, fmt.Errorf("the file descriptor limit (ulimit -n) is %d: raftkv needs more than %d", limit, ReservedFDs)
		}
		ln = transport.LimitListener(ln, int(limit-ReservedFDs))
	}
	if tlsInfo == nil {
		return ln, nil
	}
	tln, err := transport.NewTLSListener(ln, tlsInfo)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("client TLS: %w", err)
	}
	return tln, nil
}
