// Package join is how a member makes itself part of a running cluster, in
// the order it does it: it asks to be added as a learner (Ask, with
// --join, before raft starts), advertises its client URL through the log
// (Advertise, on every start), and asks to be promoted to a voter once it
// has caught up (Promote). startServer calls Ask, then starts Advertise
// and Promote with the running member as their Server.
package join

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

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.uber.org/zap"

	"raftkv/api"
	"raftkv/config"
	"raftkv/datadir"
	"raftkv/membership"
	"raftkv/tlsconfig"
)

// joinTimeout bounds how long a new member keeps asking to be added while
// the cluster has no leader or cannot be reached.
const joinTimeout = 30 * time.Second

// ErrJoinRefused is a join the cluster answered with a definite no.
var ErrJoinRefused = errors.New("join refused")

// Request is what a member asks the cluster with.
type Request struct {
	ID             uint64
	PeerURL        string // this member's
	ClientURL      string // this member's
	Via            string // --join: the client URL of a running member to ask
	ClientTLS      transport.TLSInfo
	RequestTimeout time.Duration // the cluster's, roughly: how long one request may take
}

// RequestOf is the member cfg describes, as it asks the cluster.
func RequestOf(cfg config.Config) Request {
	return Request{ID: cfg.ID, PeerURL: cfg.PeerURL(), ClientURL: cfg.ClientURL, Via: cfg.Join, ClientTLS: cfg.TLS.Client, RequestTimeout: cfg.RequestTimeout}
}

// Joined is what a joining member learns from the cluster it joins,
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
type Joined struct {
	ClusterID uint64
	Peers     map[uint64]string // peer URL by member id, this member's included
}

// Ask asks the cluster, through the member at req.Via, to add this member
// as a learner (POST /members, which any member answers), then reads the
// cluster it joined from GET /members. Raft adds a member before it runs:
// the new member starts empty and the leader brings it up to date; as a
// learner it counts towards no quorum meanwhile, and it asks to be promoted
// once it has caught up (Promote). A 409 for this very id and peer URL
// means an earlier attempt got through, or an operator added this member
// with POST /members, as a learner or as a voter.
func Ask(ctx context.Context, req Request, lg *zap.Logger) (Joined, error) {
	body, err := json.Marshal(membership.AddRequest{ID: req.ID, PeerURL: req.PeerURL, ClientURL: req.ClientURL, Learner: true})
	if err != nil {
		return Joined{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	// The member joined through is a client URL: dial it, and the leader
	// it may redirect to, with the client TLS flags.
	client, err := tlsconfig.NewDialClient(tlsconfig.Dial(req.ClientTLS, lg), req.RequestTimeout+time.Second)
	if err != nil {
		return Joined{}, fmt.Errorf("client TLS: %w", err)
	}
	defer client.CloseIdleConnections()
	membersURL := strings.TrimSuffix(req.Via, "/") + "/members"
	for {
		post, err := http.NewRequestWithContext(ctx, http.MethodPost, membersURL, bytes.NewReader(body))
		if err != nil {
			return Joined{}, err
		}
		post.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(post)
		if err == nil {
			reason, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusCreated:
				joined, err := fetchCluster(ctx, client, membersURL, req, lg)
				if err != nil {
					return Joined{}, fmt.Errorf("added to the cluster via %s, but %w; run the same command again to finish joining", req.Via, err)
				}
				// The member that answered has applied this member, but
				// one the GET was redirected to may not have yet.
				joined.Peers[req.ID] = req.PeerURL
				lg.Info("added to the cluster as a learner", zap.String("via", req.Via), zap.Stringer("cluster-id", types.ID(joined.ClusterID)))
				return joined, nil
			case resp.StatusCode == http.StatusConflict:
				return checkAlreadyMember(ctx, client, membersURL, req, lg, strings.TrimSpace(string(reason)))
			case resp.StatusCode < 500:
				return Joined{}, fmt.Errorf("%w by %s: %s %s", ErrJoinRefused, req.Via, resp.Status, strings.TrimSpace(string(reason)))
			}
			err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(reason)))
		}
		if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
			// No retry makes the member's certificate verify.
			return Joined{}, fmt.Errorf("join via %s: %w (check --trusted-ca-file)", req.Via, err)
		}
		lg.Warn("join request failed; retrying", zap.String("via", req.Via), zap.Error(err))
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return Joined{}, fmt.Errorf("join via %s: %w (last error: %v)", req.Via, ctx.Err(), err)
		}
	}
}

// checkAlreadyMember accepts a 409 if the cluster already has this member
// with this peer URL, and returns the conflict otherwise.
func checkAlreadyMember(ctx context.Context, client *http.Client, membersURL string, req Request, lg *zap.Logger, conflict string) (Joined, error) {
	joined, err := fetchCluster(ctx, client, membersURL, req, lg)
	if err != nil {
		return Joined{}, fmt.Errorf("join via %s: %s, and %w", req.Via, conflict, err)
	}
	if u, ok := joined.Peers[req.ID]; !ok || !membership.SameURL(u, req.PeerURL) {
		return Joined{}, fmt.Errorf("%w by %s: %s", ErrJoinRefused, req.Via, conflict)
	}
	lg.Info("already a member of the cluster", zap.String("via", req.Via), zap.Stringer("cluster-id", types.ID(joined.ClusterID)))
	return joined, nil
}

// fetchCluster reads the cluster from GET /members: the members and their peer URLs from the body, the cluster ID from the
// header every member sets on its answers. It tries once: the member is
// already added, so running the same command again lands in the 409 case
// and tries again.
func fetchCluster(ctx context.Context, client *http.Client, membersURL string, req Request, lg *zap.Logger) (Joined, error) {
	get, err := http.NewRequestWithContext(ctx, http.MethodGet, membersURL, nil)
	if err != nil {
		return Joined{}, err
	}
	resp, err := client.Do(get)
	if err != nil {
		return Joined{}, fmt.Errorf("listing members failed: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		reason, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return Joined{}, fmt.Errorf("listing members failed: %s %s", resp.Status, strings.TrimSpace(string(reason)))
	}
	joined := Joined{ClusterID: datadir.LegacyClusterID, Peers: make(map[uint64]string)}
	if h := resp.Header.Get(api.ClusterIDHeader); h != "" {
		id, err := types.IDFromString(h)
		if err != nil {
			return Joined{}, fmt.Errorf("the cluster ID in %s, %q, is not hex: %w", api.ClusterIDHeader, h, err)
		}
		joined.ClusterID = uint64(id)
	} else {
		// Members from before cluster IDs do not send one; theirs is the legacy ID.
		lg.Warn("the member joined through sends no cluster ID; taking the legacy one", zap.String("via", req.Via), zap.Stringer("cluster-id", types.ID(joined.ClusterID)))
	}
	var members []membership.Member
	if err := json.NewDecoder(resp.Body).Decode(&members); err != nil {
		return Joined{}, fmt.Errorf("the member list is unreadable: %w", err)
	}
	for _, m := range members {
		if len(m.PeerURLs) != 1 {
			return Joined{}, fmt.Errorf("member %d has %d peer URLs, want 1", m.ID, len(m.PeerURLs))
		}
		u, err := membership.NormalizeURL(m.PeerURLs[0])
		if err != nil {
			return Joined{}, fmt.Errorf("member %d's peer URL: %w", m.ID, err)
		}
		joined.Peers[m.ID] = u
	}
	return joined, nil
}
