package main

import (
	"errors"
	"fmt"
	"net"
	"time"

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
// a connection closes, which connLimits bounds.
func listenClients(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	limit, err := runtime.FDLimit()
	if err != nil {
		return ln, nil // no limit to keep within on this system
	}
	if limit <= reservedFDs {
		ln.Close()
		return nil, fmt.Errorf("the file descriptor limit (ulimit -n) is %d: raftkv needs more than %d", limit, reservedFDs)
	}
	return transport.LimitListener(ln, int(limit-reservedFDs)), nil
}

// stoppableListener is the peer listener: a TCP listener that closes when
// stopC closes. The peer server cannot be stopped with http.Server.Shutdown,
// which waits for requests to finish, because rafthttp's streams are
// requests that never finish; the raft node closes stopC to refuse new peer
// connections at once and transport.Stop ends the streams.
type stoppableListener struct {
	*net.TCPListener
	stopC <-chan struct{}
}

// newStoppableListener listens on addr until stopC closes.
func newStoppableListener(addr string, stopC <-chan struct{}) (*stoppableListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	go func() {
		<-stopC
		ln.Close()
	}()
	return &stoppableListener{TCPListener: ln.(*net.TCPListener), stopC: stopC}, nil
}

// Accept waits for the next peer connection and enables TCP keep-alive on
// it, so that a peer that vanished without closing its streams is noticed.
func (ln *stoppableListener) Accept() (net.Conn, error) {
	conn, err := ln.AcceptTCP()
	if err != nil {
		select {
		case <-ln.stopC:
			return nil, ErrListenerStopped
		default:
			return nil, err
		}
	}
	conn.SetKeepAlive(true)
	conn.SetKeepAlivePeriod(30 * time.Second)
	return conn, nil
}
