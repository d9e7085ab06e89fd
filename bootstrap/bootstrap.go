// Package bootstrap is the checks a member makes before it starts raft,
// and the peer API they ask peers through: that it is the only process
// that is this member, and that what it is about to start from is what
// the cluster knows of it. The raft node runs Check before it touches the
// data dir, and serves GET /raftkv/members (Answer) on its peer port for
// the checks of other members.
package bootstrap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.uber.org/zap"

	"raftkv/config"
	"raftkv/datadir"
	"raftkv/membership"
	"raftkv/recovery"
	"raftkv/tlsconfig"
)

// A member that started empty
// with the id of one that had run, or a second process with a live
// member's id, would make raft contradict itself (a follower with no log
// told that entries it never had are committed: raft panics) or take over
// the live member's connections. etcd's server makes the same checks in
// etcdserver/bootstrap.go.

// Why a member refuses to start.
var (
	ErrPeerPortInUse       = errors.New("peer port in use")
	ErrMemberRunning       = errors.New("member already running")
	ErrAlreadyBootstrapped = errors.New("member already bootstrapped")
	ErrPeerURLChanged      = errors.New("peer URL changed")
)

const (
	// peerAskTimeout bounds one question to one peer. A peer that does not
	// answer in time (down, paused, or still starting) is no answer, and
	// does not hold up a first start.
	peerAskTimeout = time.Second

	// memberRunningWait is how long a member that peers still see
	// connected keeps asking before it decides another process is it. A
	// member killed a moment ago looks connected until its peers notice:
	// rafthttp notices on its next redial of the lost stream, which it
	// makes every 100 ms and which fails at once. Two seconds leave room
	// for a busy machine.
	memberRunningWait = 2 * time.Second

	// peerAskInterval is the pause between two rounds of questions.
	peerAskInterval = 100 * time.Millisecond

	// maxPeerAnswerBytes bounds the answer read from one peer.
	maxPeerAnswerBytes = 1 << 20
)

// PeerListenError says what a failure to listen on the peer port means:
// when the port is taken, most likely by this very member already running.
func PeerListenError(id uint64, host string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%w: something is already listening on %s, probably member %d; stop it first, or listen elsewhere with --listen-peer-url (%w)",
			ErrPeerPortInUse, host, id, err)
	}
	return fmt.Errorf("listen for peers on %s: %w", host, err)
}

// Member is what the checks know of the member about to start.
type Member struct {
	ID              uint64
	PeerURL         string            // this member's
	Cluster         map[uint64]string // peer URL by member id, from --cluster (or the cluster joined)
	ClusterID       uint64            // the cluster it starts or joins; on a restart, not known yet
	DataDir         string
	Joining         bool // --join, on a first start
	ForceNewCluster bool
	PeerTLS         transport.TLSInfo // the peer TLS flags, to ask peers with
}

// MemberOf is the member cfg describes.
func MemberOf(cfg config.Config) Member {
	return Member{ID: cfg.ID, PeerURL: cfg.PeerURL(), Cluster: cfg.Cluster, ClusterID: cfg.ClusterID, DataDir: cfg.DataDir,
		Joining: cfg.Join != "", ForceNewCluster: cfg.ForceNewCluster, PeerTLS: cfg.TLS.Peer}
}

// Check runs the checks that need neither raft nor the data dir opened:
// that no other process uses the data dir, that no other process is
// member m.ID now, and, for a member with no WAL that is not joining, that
// it never ran before. It touches nothing on disk, so a refused first
// start leaves no WAL that a retry would take for a restart.
func Check(ctx context.Context, m Member, lg *zap.Logger) error {
	if err := datadir.CheckFree(m.DataDir); err != nil {
		return err
	}
	// Peers are asked as rafthttp dials them: with the peer TLS flags.
	client, err := tlsconfig.NewDialClient(tlsconfig.Dial(m.PeerTLS, lg), peerAskTimeout)
	if err != nil {
		return fmt.Errorf("peer TLS: %w", err)
	}
	defer client.CloseIdleConnections()
	answers, err := checkNotRunning(ctx, client, m, lg)
	if err != nil {
		return err
	}
	if m.ForceNewCluster {
		return checkPeersGone(answers)
	}
	if !m.Joining && !datadir.HasWAL(m.DataDir) {
		return checkNeverStarted(m, answers)
	}
	return nil
}

// peerAnswer is one peer's answer to GET /raftkv/members.
type peerAnswer struct {
	url string // the peer URL asked
	Answer
}

// connected is whether the answering peer is connected to member id at
// peerURL now. A member of another cluster whose URLs overlap this one's
// may well be connected to a member id of its own.
func (a peerAnswer) connected(id uint64, peerURL string) bool {
	return slices.ContainsFunc(a.Members, func(m PeerMember) bool {
		return m.ID == id && m.Connected && slices.ContainsFunc(m.PeerURLs, func(u string) bool { return membership.SameURL(u, peerURL) })
	})
}

// member returns member id from the answering peer's table.
func (a peerAnswer) member(id uint64) (PeerMember, bool) {
	i := slices.IndexFunc(a.Members, func(m PeerMember) bool { return m.ID == id })
	if i < 0 {
		return PeerMember{}, false
	}
	return a.Members[i], true
}

// clientURL is the answering peer's own client URL, as its table has it,
// for messages that tell an operator where to send a command; "" if it
// has not advertised one.
func (a peerAnswer) clientURL() string {
	if m, ok := a.member(a.From); ok && len(m.ClientURLs) > 0 {
		return m.ClientURLs[0]
	}
	return ""
}

// checkNotRunning refuses to start while another process is member
// m.ID: a peer connected to member m.ID right now is connected to that
// process. A member killed a moment ago still looks connected until its
// peers notice its connections closed, so while any peer says connected it
// asks again, for up to memberRunningWait, before deciding. It returns the
// last round's answers.
func checkNotRunning(ctx context.Context, client *http.Client, m Member, lg *zap.Logger) ([]peerAnswer, error) {
	deadline := time.Now().Add(memberRunningWait)
	for round := 0; ; round++ {
		answers, err := askPeers(ctx, client, m)
		if err != nil {
			return nil, err
		}
		var connected []string
		for _, a := range answers {
			if a.connected(m.ID, m.PeerURL) {
				connected = append(connected, fmt.Sprintf("member %d (%s)", a.From, a.url))
			}
		}
		if len(connected) == 0 {
			return answers, nil
		}
		if round == 0 {
			lg.Info("peers still see this member connected; asking again until they notice its last process is gone",
				zap.Strings("peers", connected), zap.Duration("at-most", memberRunningWait))
		}
		if time.Now().After(deadline) {
			verb := "are"
			if len(connected) == 1 {
				verb = "is"
			}
			return nil, fmt.Errorf("%w: %s %s connected to member %d right now, so another process is member %d; stop it first, or start this one as a new member with a new --id and --join",
				ErrMemberRunning, strings.Join(connected, " and "), verb, m.ID, m.ID)
		}
		select {
		case <-time.After(peerAskInterval):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// checkNeverStarted refuses a member of the initial cluster with no WAL
// that the cluster knows has run before. Such a member advertises its client
// URL through the log once it runs, so a peer that lists member m.ID with
// a client URL has seen it run; one the peers know only from the
// bootstrap, with no client URL yet, is on its first start. (A joining
// member is different: its join request already carries its client
// URL.) Like etcd's isMemberBootstrapped, it goes ahead when no peer
// answers: then no peer can contradict it.
func checkNeverStarted(m Member, answers []peerAnswer) error {
	for _, a := range answers {
		known, ok := a.member(m.ID)
		if !ok || len(known.ClientURLs) == 0 {
			continue
		}
		via := a.clientURL()
		if via == "" {
			via = "<a running member's client URL>"
		}
		return fmt.Errorf("%w: member %d (%s) lists member %d with client URL %s, so it ran before, but data dir %s has no WAL: its log is lost, and raft cannot take it back empty under the same id; remove it with `curl -X DELETE %s/members/%d`, then start it as a new member with a fresh data dir, a new --id and --join %s",
			ErrAlreadyBootstrapped, a.From, a.url, m.ID, known.ClientURLs[0], m.DataDir, via, m.ID, via)
	}
	return nil
}

// askPeers asks every other member in --cluster, at once, for its view of
// the cluster, and returns the answers that came within peerAskTimeout,
// in member id order. It fails only when ctx is done.
func askPeers(ctx context.Context, client *http.Client, m Member) ([]peerAnswer, error) {
	ids := slices.Sorted(maps.Keys(m.Cluster))
	answers := make([]*peerAnswer, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		if id == m.ID {
			continue
		}
		wg.Go(func() { answers[i] = askPeer(ctx, client, m, m.Cluster[id]) })
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var got []peerAnswer
	for _, a := range answers {
		if a != nil {
			got = append(got, *a)
		}
	}
	return got, nil
}

// askPeer asks the member at peerURL for its view of the cluster; nil when
// it gives none, or answers for another cluster than the one m starts or
// joins (on a restart the cluster ID is in the WAL, not read yet, and any
// answer counts). The request says who asks in rafthttp's X-Server-From
// header, so that whatever tells peer traffic apart by it treats the
// question like this member's raft messages.
func askPeer(ctx context.Context, client *http.Client, m Member, peerURL string) *peerAnswer {
	from := m.ID
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peerURL+MembersPath, nil)
	if err != nil {
		return nil
	}
	req.Header.Set("X-Server-From", types.ID(from).String())
	resp, err := client.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	a := &peerAnswer{url: peerURL}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxPeerAnswerBytes)).Decode(&a.Answer); err != nil || a.From == 0 || a.From == from {
		return nil
	}
	if !datadir.HasWAL(m.DataDir) && a.ClusterID != types.ID(m.ClusterID).String() {
		return nil
	}
	return a
}

// CheckPeerURL refuses a member restarted with its own peer URL changed in
// --cluster. On a restart the member table comes from the log, not from
// --cluster: the peers go on dialling the URL the table has, while this
// member listens on the new one, and raftkv has no call that changes a
// member's peer URL. startServer runs it once the member has applied its
// disk state, before it serves clients or advertises anything.
func CheckPeerURL(id uint64, peerURL string, table *membership.Table) error {
	m, ok := table.Lookup(id)
	if !ok || len(m.PeerURLs) == 0 || slices.ContainsFunc(m.PeerURLs, func(u string) bool { return membership.SameURL(u, peerURL) }) {
		return nil
	}
	via := "<a running member's client URL>"
	for _, other := range table.List() {
		if other.ID != id && len(other.ClientURLs) > 0 {
			via = other.ClientURLs[0]
			break
		}
	}
	return fmt.Errorf("%w: the cluster has member %d at %s, but --cluster gives %s, and a member's peer URL cannot be changed; restart it with %s in --cluster, or remove it with `curl -X DELETE %s/members/%d` and add a new member at %s with a new --id and --join",
		ErrPeerURLChanged, id, m.PeerURLs[0], peerURL, m.PeerURLs[0], via, id, peerURL)
}

// checkPeersGone refuses to force a new cluster while a member listed in
// --cluster answers: its majority may not be lost at all. The forced
// member would remove it, and the removed ids it then turns away would
// have the members still running told that they were removed, or, if they
// keep a quorum of their own, two clusters with one ID would serve
// different data. It asks only the members --cluster names.
func checkPeersGone(answers []peerAnswer) error {
	if len(answers) == 0 {
		return nil
	}
	a := answers[0]
	return fmt.Errorf("%w: member %d answers at %s, so the cluster may still have its majority; --force-new-cluster is for a majority lost for good: stop every other member for good first (and keep it stopped), or leave --force-new-cluster out",
		recovery.ErrCannotForce, a.From, a.url)
}
