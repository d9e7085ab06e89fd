package main

import (
	"errors"
	"net"
	"time"
)

// ErrListenerStopped is what Accept returns once the listener was stopped.
var ErrListenerStopped = errors.New("listener stopped")

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
