package main

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"raftkv/bootstrap"
	"raftkv/codec"
	"raftkv/logging"
	"raftkv/membership"
	"raftkv/tlsconfig"
)

// The transport: raft messages to and from peers, over etcd's rafthttp.
// Outgoing messages leave through transport.Send (ready.go); incoming ones
// arrive on the peer port and rafthttp hands them to Process, which steps
// them into raft (node.Step: raft's recvc channel, or its propc for a
// proposal a follower forwards to the leader). Which peers the
// transport knows follows the applied configuration: the initial members or
// a snapshot's at start, then each conf change (confchange.go).
//
// The peer port also serves raftkv's own peer API (package bootstrap), the
// read-only GET /raftkv/members that a member starting asks its peers
// before it starts raft.

// startTransport starts rafthttp and tells it where the other members are.
// rafthttp talks only to members it has been told of: it drops messages to
// any other and refuses their connections. A member restarting from a
// snapshot takes the members from it; otherwise it starts from cfg.Cluster,
// and the conf changes it applies add and remove members from there. For a
// member that joins, cfg.Cluster is the cluster's member list as it was when
// the member was added (join.Joined): without it, the new member could not
// answer the leader's first append, so it would never receive the log it
// would learn the members from.
func (rc *raftNode) startTransport() error {
	rc.transport = &rafthttp.Transport{
		Logger:      logging.NewTransportLogger(rc.lg),
		TLSInfo:     tlsconfig.Dial(rc.cfg.TLS.Peer, rc.lg), // the peer certificate and CA, for https peers
		ID:          types.ID(rc.id),
		ClusterID:   types.ID(rc.clusterID),
		Raft:        rc,
		ServerStats: stats.NewServerStats("", ""),
		LeaderStats: stats.NewLeaderStats(rc.lg, types.ID(rc.id).String()),
		ErrorC:      make(chan error, 1),
	}
	if err := rc.transport.Start(); err != nil {
		return fmt.Errorf("start peer transport: %w", err)
	}
	if rc.bootSnapshot != nil {
		// The snapshot knows the members as of its index; entries after
		// it in the WAL add and remove the rest as they are applied.
		if err := rc.resetPeers(rc.bootSnapshot); err != nil {
			rc.transport.Stop()
			return err
		}
	} else {
		for id, u := range rc.cfg.Cluster {
			if id != rc.id {
				rc.transport.AddPeer(types.ID(id), []string{u})
			}
		}
	}

	return nil
}

// resetPeers points the transport at exactly the members in a snapshot.
func (rc *raftNode) resetPeers(snapshot *raftpb.Snapshot) error {
	members, err := codec.DecodeMembers(snapshot.GetData())
	if err != nil {
		return err
	}
	rc.transport.RemoveAllPeers()
	for _, m := range members.List() {
		if m.ID != rc.id {
			rc.addPeer(m.ID, m.PeerURLs)
		}
	}
	return nil
}

// addPeer adds a member to the transport, which panics on a bad URL; URLs
// were checked when the member was proposed, so this only guards the log.
func (rc *raftNode) addPeer(id uint64, peerURLs []string) {
	if _, err := types.NewURLs(peerURLs); err != nil {
		rc.lg.Error("not adding peer with bad URLs", zap.Uint64("member-id", id), zap.Error(err))
		return
	}
	rc.transport.AddPeer(types.ID(id), peerURLs)
}

// Process, IsIDRemoved, ReportUnreachable and ReportSnapshot make raftNode
// the rafthttp.Raft that the transport delivers peer messages to.

// Process steps a message from a peer into raft.
func (rc *raftNode) Process(ctx context.Context, m *raftpb.Message) error {
	return rc.node.Step(ctx, m)
}

// IsIDRemoved reports whether member id was removed: rafthttp turns its
// messages away, which tells it to stop.
func (rc *raftNode) IsIDRemoved(id uint64) bool { return rc.sm.isIDRemoved(id) }

// ReportUnreachable tells raft that a message to member id failed, so the
// leader stops sending it appends until it answers again.
func (rc *raftNode) ReportUnreachable(id uint64) { rc.node.ReportUnreachable(id) }

// ReportSnapshot tells raft whether the snapshot sent to member id
// arrived, so the leader resumes appends from it or sends it again.
func (rc *raftNode) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	rc.node.ReportSnapshot(id, status)
}

// servePeerAPI makes the peer API answer from the applied member table
// (bootstrap.PeerHandler.ServeMembers).
func (rc *raftNode) servePeerAPI(table func() *membership.Table) {
	members := func() bootstrap.Answer {
		answer := bootstrap.Answer{From: rc.id, ClusterID: types.ID(rc.clusterID).String(), Members: []bootstrap.PeerMember{}}
		for _, m := range table().List() {
			answer.Members = append(answer.Members, bootstrap.PeerMember{Member: m.WithLists(), Connected: m.ID != rc.id && rc.Connected(m.ID)})
		}
		return answer
	}
	rc.peers.ServeMembers(members)
}
