package main

import (
	"errors"
	"net"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// ErrListenerStopped is what Accept returns once the listener was stopped.
var ErrListenerStopped = errors.New("listener stopped")

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
