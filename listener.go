package main

import (
	"errors"
	"fmt"
	"net"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/pkg/v3/runtime"
)

// ErrListenerStopped is what Accept returns once the listener was stopped.
var ErrListenerStopped = errors.New("listener stopped")

// reservedFDs is how many file descriptors client connections leave to the
// member itself, as etcd's reservedInternalFDNum does: the WAL's files
// (the one written, the next one preallocated), snapshot files being
// written and read, the data dir scans that purge old files, the peer
// listener, and rafthttp's connections, two streams and a few pipeline
// and snapshot connections to every peer. Out of descriptors, the member
// could not cut a WAL file or save a snapshot, and would stop.
const reservedFDs = 150

// listenClients listens for clients on addr, accepting at most as many
// connections at a time as the file descriptor limit leaves beyond
// reservedFDs. Clients beyond that wait in the kernel's accept queue until
// a connection closes, which limits.Conn bounds. With tlsInfo (nil for
// plain http) it serves TLS, as etcd's client listener does: the limit
// counts connections before their handshake, which etcd's TLS listener
// runs apart from Accept and gives up on after 10 seconds.
func listenClients(addr string, tlsInfo *transport.TLSInfo) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if limit, err := runtime.FDLimit(); err == nil { // else no limit to keep within on this system
		if limit <= reservedFDs {
			ln.Close()
			return nil, fmt.Errorf("the file descriptor limit (ulimit -n) is %d: raftkv needs more than %d", limit, reservedFDs)
		}
		ln = transport.LimitListener(ln, int(limit-reservedFDs))
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

// stoppableListener is the peer listener: a listener that closes when
// stopC closes. The peer server cannot be stopped with http.Server.Shutdown,
// which waits for requests to finish, because rafthttp's streams are
// requests that never finish; the raft node closes stopC to refuse new peer
// connections at once and transport.Stop ends the streams.
type stoppableListener struct {
	net.Listener
	stopC <-chan struct{}
}

// newStoppableListener listens on addr until stopC closes, with etcd's
// peer listener (transport.NewListenerWithOpts): TCP keep-alive on every
// connection, so that a peer that vanished without closing its streams is
// noticed, and for scheme https TLS with tlsInfo, which also refuses a
// peer whose certificate does not name the address it connects from.
func newStoppableListener(addr, scheme string, tlsInfo *transport.TLSInfo, stopC <-chan struct{}) (*stoppableListener, error) {
	var opts []transport.ListenerOption
	if tlsInfo != nil {
		opts = append(opts, transport.WithTLSInfo(tlsInfo))
	}
	ln, err := transport.NewListenerWithOpts(addr, scheme, opts...)
	if err != nil {
		return nil, err
	}
	go func() {
		<-stopC
		ln.Close()
	}()
	return &stoppableListener{Listener: ln, stopC: stopC}, nil
}

// Accept waits for the next peer connection.
func (ln *stoppableListener) Accept() (net.Conn, error) {
	conn, err := ln.Listener.Accept()
	if err != nil {
		select {
		case <-ln.stopC:
			return nil, ErrListenerStopped
		default:
			return nil, err
		}
	}
	return conn, nil
}
