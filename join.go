package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.uber.org/zap"
)

// joinTimeout bounds how long a new member keeps asking to be added while
// the cluster has no leader or cannot be reached.
const joinTimeout = 30 * time.Second

// ErrJoinRefused is a join the cluster answered with a definite no.
var ErrJoinRefused = errors.New("join refused")

// joinedCluster is what a joining member learns from the cluster it joins,
// because its own flags cannot tell it, and what it must know before raft
// starts:
//   - the cluster ID, which rafthttp checks on every peer request. The
//     cluster derived it from its initial members when it first started;
//     the joiner's --cluster does not describe them.
//   - the current members' peer URLs. The leader starts sending the new
//     member appends at once, and rafthttp drops the answers to a member it
//     has not been told of; the new member would learn the members from the
//     log, but it receives no log until it answers. (etcd's joining member
//     likewise fetches the cluster's members and adds them to its
//     transport, with rafthttp's AddRemote.)
type joinedCluster struct {
	id    uint64
	peers map[uint64]string // peer URL by member id, this member's included
}

// requestJoin asks the cluster, through the member at cfg.join, to add this
// member as a learner (POST /members, following redirects), then reads the
// cluster it joined from GET /members. Raft adds a member before it runs:
// the new member starts empty and the leader brings it up to date; as a
// learner it counts towards no quorum meanwhile, and it asks to be promoted
// once it has caught up (autopromote.go). A 409 for this very id and peer URL
// means an earlier attempt got through, or an operator added this member
// with POST /members, as a learner or as a voter.
func requestJoin(ctx context.Context, cfg config, lg *zap.Logger) (joinedCluster, error) {
	body, err := json.Marshal(addMemberRequest{ID: cfg.id, PeerURL: cfg.peerURL(), ClientURL: cfg.clientURL, Learner: true})
	if err != nil {
		return joinedCluster{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	// The member joined through is a client URL: dial it, and the leader
	// it may redirect to, with the client TLS flags.
	client, err := newDialClient(dialTLS(cfg.clientTLS, lg), cfg.requestTimeout+time.Second)
	if err != nil {
		return joinedCluster{}, fmt.Errorf("client TLS: %w", err)
	}
	defer client.CloseIdleConnections()
	membersURL := strings.TrimSuffix(cfg.join, "/") + "/members"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, membersURL, bytes.NewReader(body))
		if err != nil {
			return joinedCluster{}, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err == nil {
			reason, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusCreated:
				joined, err := fetchCluster(ctx, client, membersURL, cfg, lg)
				if err != nil {
					return joinedCluster{}, fmt.Errorf("added to the cluster via %s, but %w; run the same command again to finish joining", cfg.join, err)
				}
				// The member that answered has applied this member, but
				// one the GET was redirected to may not have yet.
				joined.peers[cfg.id] = cfg.peerURL()
				lg.Info("added to the cluster as a learner", zap.String("via", cfg.join), zap.Stringer("cluster-id", types.ID(joined.id)))
				return joined, nil
			case resp.StatusCode == http.StatusConflict:
				return checkAlreadyMember(ctx, client, membersURL, cfg, lg, strings.TrimSpace(string(reason)))
			case resp.StatusCode < 500:
				return joinedCluster{}, fmt.Errorf("%w by %s: %s %s", ErrJoinRefused, cfg.join, resp.Status, strings.TrimSpace(string(reason)))
			}
			err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(reason)))
		}
		if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
			// No retry makes the member's certificate verify.
			return joinedCluster{}, fmt.Errorf("join via %s: %w (check --trusted-ca-file)", cfg.join, err)
		}
		lg.Warn("join request failed; retrying", zap.String("via", cfg.join), zap.Error(err))
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return joinedCluster{}, fmt.Errorf("join via %s: %w (last error: %v)", cfg.join, ctx.Err(), err)
		}
	}
}

// checkAlreadyMember accepts a 409 if the cluster already has this member
// with this peer URL, and returns the conflict otherwise.
func checkAlreadyMember(ctx context.Context, client *http.Client, membersURL string, cfg config, lg *zap.Logger, conflict string) (joinedCluster, error) {
	joined, err := fetchCluster(ctx, client, membersURL, cfg, lg)
	if err != nil {
		return joinedCluster{}, fmt.Errorf("join via %s: %s, and %w", cfg.join, conflict, err)
	}
	if u, ok := joined.peers[cfg.id]; !ok || !sameURL(u, cfg.peerURL()) {
		return joinedCluster{}, fmt.Errorf("%w by %s: %s", ErrJoinRefused, cfg.join, conflict)
	}
	lg.Info("already a member of the cluster", zap.String("via", cfg.join), zap.Stringer("cluster-id", types.ID(joined.id)))
	return joined, nil
}

// fetchCluster reads the cluster from GET /members, following redirects:
// the members and their peer URLs from the body, the cluster ID from the
// header every member sets on its answers. It tries once: the member is
// already added, so running the same command again lands in the 409 case
// and tries again.
func fetchCluster(ctx context.Context, client *http.Client, membersURL string, cfg config, lg *zap.Logger) (joinedCluster, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, membersURL, nil)
	if err != nil {
		return joinedCluster{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return joinedCluster{}, fmt.Errorf("listing members failed: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		reason, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return joinedCluster{}, fmt.Errorf("listing members failed: %s %s", resp.Status, strings.TrimSpace(string(reason)))
	}
	joined := joinedCluster{id: legacyClusterID, peers: make(map[uint64]string)}
	if h := resp.Header.Get(clusterIDHeader); h != "" {
		id, err := types.IDFromString(h)
		if err != nil {
			return joinedCluster{}, fmt.Errorf("the cluster ID in %s, %q, is not hex: %w", clusterIDHeader, h, err)
		}
		joined.id = uint64(id)
	} else {
		// Members from before cluster IDs do not send one; theirs is the legacy ID.
		lg.Warn("the member joined through sends no cluster ID; taking the legacy one", zap.String("via", cfg.join), zap.Stringer("cluster-id", types.ID(joined.id)))
	}
	var members []member
	if err := json.NewDecoder(resp.Body).Decode(&members); err != nil {
		return joinedCluster{}, fmt.Errorf("the member list is unreadable: %w", err)
	}
	for _, m := range members {
		if len(m.PeerURLs) != 1 {
			return joinedCluster{}, fmt.Errorf("member %d has %d peer URLs, want 1", m.ID, len(m.PeerURLs))
		}
		u, err := normalizeURL(m.PeerURLs[0])
		if err != nil {
			return joinedCluster{}, fmt.Errorf("member %d's peer URL: %w", m.ID, err)
		}
		joined.peers[m.ID] = u
	}
	return joined, nil
}
