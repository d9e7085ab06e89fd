package join

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"raftkv/datadir"
	"raftkv/membership"
	"raftkv/tlsconfig"
)

// A safe --join: the joining member drives its own promotion.
//
// --join asks the cluster to add this member as a learner (Ask), so
// that while it is empty it counts towards no quorum. Once it runs, the
// member itself asks to be promoted (POST /members/{id}/promote), because
// it is the one process that knows it wants to vote and stays around until
// it does: an operator's command that returns after the join would leave
// the promotion to nobody, and the leader, which judges whether it has
// caught up, may change any time. The promoter runs on every start, so a
// learner restarted before it was promoted (--join is then ignored: its
// data dir has a WAL) still asks; it stops once the member table shows this
// member as a voter, and never runs with --learner.
//
// It asks only once it has caught up by its own count, so as not to send
// the leader requests it must refuse: a ReadIndex round gives the leader's
// commit index, and this member's applied index must be as close to it as
// the leader will want its log to be (membership.CheckLearnerLag). The leader then
// judges by its own count, how much of its log this one matches (membership.API.Promote),
// and answers 409 while the learner lags; the promoter asks again every
// promoteInterval until it is promoted or the member stops. Each step is
// logged: added as a learner (Ask), caught up, promoted.

const (
	// promoteInterval is the pause between two checks or requests.
	promoteInterval = 250 * time.Millisecond
	// promoteLogEvery spaces out the lines saying the learner is still
	// catching up, or still refused.
	promoteLogEvery = 10 * time.Second
)

// ErrLearnerFlag is --learner given to a member that can never be a learner.
var ErrLearnerFlag = errors.New("--learner needs --join")

// CheckLearnerFlag refuses --learner (stayLearner) on the first start of
// an initial member, which does not join (joining false) and has no WAL
// in dataDir: it starts as a voter, and the flag would mean nothing.
func CheckLearnerFlag(id uint64, stayLearner, joining bool, dataDir string) error {
	if stayLearner && !joining && !datadir.HasWAL(dataDir) {
		return fmt.Errorf("%w: member %d starts the cluster as a voter; only a member that joins can be a learner", ErrLearnerFlag, id)
	}
	return nil
}

// Server is what joining needs of the running member it is part of.
type Server interface {
	// Table is a copy of the applied member table.
	Table() *membership.Table
	// Leader is the member this one believes leads, or 0; LeaderChange
	// is closed at the next change of it (take it before Leader).
	Leader() uint64
	LeaderChange() <-chan struct{}
	// ReadIndex is the leader's commit index, confirmed by a heartbeat
	// round after the call began.
	ReadIndex(ctx context.Context) (uint64, error)
	// AppliedIndex is the last index this member applied; WaitApplied
	// returns once it is at least index.
	AppliedIndex() uint64
	WaitApplied(ctx context.Context, index uint64) error
	// ProposeAdvertise proposes recording clientURL as member id's and
	// waits until this member has applied it.
	ProposeAdvertise(ctx context.Context, id uint64, clientURL string) error
	// Done is closed once the member stops applying entries.
	Done() <-chan struct{}
}

// promoter asks for this member's promotion while it is a learner.
type promoter struct {
	req    Request
	lg     *zap.Logger
	srv    Server
	client *http.Client
}

// Promote starts asking for the promotion of the member req names, which
// runs as srv, unless stayLearner (--learner). It returns at once; the
// promoter ends by itself for a voter.
func Promote(srv Server, req Request, stayLearner bool, lg *zap.Logger) {
	if stayLearner {
		if m, ok := srv.Table().Lookup(req.ID); ok && !m.IsLearner {
			lg.Warn("--learner: this member is a voter already; the flag only keeps a learner from asking to be promoted")
		}
		return
	}
	// The leader and the member joined through are client URLs: dial them
	// with the client TLS flags, as the join did.
	client, err := tlsconfig.NewDialClient(tlsconfig.Dial(req.ClientTLS, lg), req.RequestTimeout+time.Second)
	if err != nil {
		// main checked the TLS flags; this cannot happen but on a file that
		// changed since, and the member goes on as a learner.
		lg.Error("not asking to be promoted: client TLS", zap.Error(err))
		return
	}
	p := &promoter{req: req, lg: lg, srv: srv, client: client}
	go func() {
		defer client.CloseIdleConnections()
		p.run()
	}()
}

// run checks, and asks, every promoteInterval until this member votes or
// stops.
func (p *promoter) run() {
	wasLearner, caughtUp := false, false
	lastLog := time.Now() // a learner that catches up at once says nothing
	for {
		m, ok := p.srv.Table().Lookup(p.req.ID)
		if ok && !m.IsLearner {
			if wasLearner {
				p.lg.Info("promoted to a voter", zap.Uint64("applied-index", p.srv.AppliedIndex()))
			}
			return
		}
		if ok && !wasLearner {
			wasLearner = true
			p.lg.Info("this member is a learner: catching up with the leader before asking to be promoted")
		}
		// Not in the table (!ok): a joining member that has not applied its
		// own addition yet.
		applied, leaderCommit, err := p.progress()
		if err == nil && !ok {
			err = fmt.Errorf("member %d: %w", p.req.ID, membership.ErrMemberNotFound)
		}
		if err == nil {
			err = membership.CheckLearnerLag(p.req.ID, applied, leaderCommit)
		}
		switch {
		case err != nil:
			if time.Since(lastLog) >= promoteLogEvery {
				lastLog = time.Now()
				p.lg.Info("still catching up with the leader", zap.Uint64("applied-index", applied), zap.Uint64("leader-commit-index", leaderCommit), zap.NamedError("reason", err))
			}
			caughtUp = false
		default:
			if !caughtUp {
				caughtUp, lastLog = true, time.Time{}
				p.lg.Info("caught up with the leader; asking to be promoted", zap.Uint64("applied-index", applied), zap.Uint64("leader-commit-index", leaderCommit))
			}
			index, refused := p.ask()
			if refused == nil && p.awaitPromotion(index) == nil {
				continue // promoted: the table says so now
			}
			if refused != nil && time.Since(lastLog) >= promoteLogEvery {
				lastLog = time.Now()
				p.lg.Info("promotion refused for now; asking again", zap.Error(refused))
			}
		}
		select {
		case <-time.After(promoteInterval):
		case <-p.srv.Done():
			return
		}
	}
}

// progress is this member's applied index and the leader's commit index,
// by a ReadIndex round.
func (p *promoter) progress() (applied, leaderCommit uint64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.req.RequestTimeout)
	defer cancel()
	leaderCommit, err = p.srv.ReadIndex(ctx)
	return p.srv.AppliedIndex(), leaderCommit, err
}

// awaitPromotion waits, for a request timeout at most, until this member
// has applied its promotion, at index.
func (p *promoter) awaitPromotion(index uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.req.RequestTimeout)
	defer cancel()
	return p.srv.WaitApplied(ctx, index)
}

// ask sends POST /members/{id}/promote to the leader, by its client URL in
// the member table, or, if that is not known or cannot be reached, to the
// member this one joined through; either redirects to the leader if it is
// not. It returns the promotion's index once it was made, or why not.
func (p *promoter) ask() (uint64, error) {
	var targets []string
	if l, ok := p.srv.Table().Lookup(p.srv.Leader()); ok && len(l.ClientURLs) > 0 {
		targets = append(targets, l.ClientURLs[0])
	}
	if p.req.Via != "" {
		targets = append(targets, p.req.Via)
	}
	if len(targets) == 0 {
		return 0, errors.New("no leader's client URL known, and no --join to ask through")
	}
	var index uint64
	var err error
	for _, target := range targets {
		var answered bool
		index, answered, err = p.post(strings.TrimSuffix(target, "/") + fmt.Sprintf("/members/%d/promote", p.req.ID))
		if answered {
			break // if not the answer hoped for, asking elsewhere would get the same
		}
	}
	return index, err
}

// post sends one promotion request to url and returns, for a 200, the
// promotion's index (X-Raft-Index); whether an answer came at all; and,
// unless it is a 200, why not.
func (p *promoter) post(url string) (uint64, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.req.RequestTimeout+time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return 0, false, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	reason, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return 0, true, fmt.Errorf("POST %s: %s %s", url, resp.Status, strings.TrimSpace(string(reason)))
	}
	index, err := strconv.ParseUint(resp.Header.Get("X-Raft-Index"), 10, 64)
	if err != nil {
		return 0, true, fmt.Errorf("POST %s: 200 with X-Raft-Index %q: %w", url, resp.Header.Get("X-Raft-Index"), err)
	}
	return index, true, nil
}
