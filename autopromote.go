package main

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
)

// A safe --join: the joining member drives its own promotion.
//
// --join asks the cluster to add this member as a learner (join.go), so
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
// the leader will want its log to be (checkLearnerLag). The leader then
// judges by its own count, how much of its log this one matches (learnerReady),
// and answers 409 while the learner lags; the promoter asks again every
// promoteInterval until it is promoted or the member stops. Each step is
// logged: added as a learner (join.go), caught up, promoted.

const (
	// promoteInterval is the pause between two checks or requests.
	promoteInterval = 250 * time.Millisecond
	// promoteLogEvery spaces out the lines saying the learner is still
	// catching up, or still refused.
	promoteLogEvery = 10 * time.Second
)

// ErrLearnerFlag is --learner given to a member that can never be a learner.
var ErrLearnerFlag = errors.New("--learner needs --join")

// checkLearnerFlag refuses --learner on the first start of an initial
// member: it starts as a voter, and the flag would mean nothing.
func checkLearnerFlag(cfg config) error {
	if cfg.stayLearner && cfg.join == "" && !hasWAL(cfg.dataDir) {
		return fmt.Errorf("%w: member %d starts the cluster as a voter; only a member that joins can be a learner", ErrLearnerFlag, cfg.id)
	}
	return nil
}

// promoter asks for this member's promotion while it is a learner.
type promoter struct {
	cfg    config
	lg     *zap.Logger
	store  *kvstore
	raft   *raftNode
	reads  *readLoop
	client *http.Client
}

// promoteWhenCaughtUp starts the promoter for the member s, unless it was
// started with --learner. It returns at once; the promoter ends by itself
// for a voter.
func (s *server) promoteWhenCaughtUp(reads *readLoop) {
	if s.cfg.stayLearner {
		if m, ok := s.store.lookupMember(s.cfg.id); ok && !m.IsLearner {
			s.lg.Warn("--learner: this member is a voter already; the flag only keeps a learner from asking to be promoted")
		}
		return
	}
	// The leader and the member joined through are client URLs: dial them
	// with the client TLS flags, as the join did.
	client, err := newDialClient(dialTLS(s.cfg.clientTLS, s.lg), s.cfg.requestTimeout+time.Second)
	if err != nil {
		// startServer checked the TLS flags; this cannot happen but on a
		// file that changed since, and the member goes on as a learner.
		s.lg.Error("not asking to be promoted: client TLS", zap.Error(err))
		return
	}
	p := &promoter{cfg: s.cfg, lg: s.lg, store: s.store, raft: s.raft, reads: reads, client: client}
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
		m, ok := p.store.lookupMember(p.cfg.id)
		if ok && !m.IsLearner {
			if wasLearner {
				p.lg.Info("promoted to a voter", zap.Uint64("applied-index", p.store.appliedIndex.Load()))
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
			err = fmt.Errorf("member %d: %w", p.cfg.id, ErrMemberNotFound)
		}
		if err == nil {
			err = checkLearnerLag(p.cfg.id, applied, leaderCommit)
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
			if refused == nil && p.waitApplied(index) == nil {
				continue // promoted: the table says so now
			}
			if refused != nil && time.Since(lastLog) >= promoteLogEvery {
				lastLog = time.Now()
				p.lg.Info("promotion refused for now; asking again", zap.Error(refused))
			}
		}
		select {
		case <-time.After(promoteInterval):
		case <-p.raft.done():
			return
		case <-p.store.done:
			return
		}
	}
}

// progress is this member's applied index and the leader's commit index,
// by a ReadIndex round.
func (p *promoter) progress() (applied, leaderCommit uint64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.requestTimeout)
	defer cancel()
	leaderCommit, err = p.reads.readIndex(ctx)
	return p.store.appliedIndex.Load(), leaderCommit, err
}

// waitApplied waits, for a request timeout at most, until this member has
// applied index.
func (p *promoter) waitApplied(index uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.requestTimeout)
	defer cancel()
	return p.store.waitApplied(ctx, index)
}

// ask sends POST /members/{id}/promote to the leader, by its client URL in
// the member table, or, if that is not known or cannot be reached, to the
// member this one joined through; either redirects to the leader if it is
// not. It returns the promotion's index once it was made, or why not.
func (p *promoter) ask() (uint64, error) {
	var targets []string
	if l, ok := p.store.lookupMember(p.raft.leaderID()); ok && len(l.ClientURLs) > 0 {
		targets = append(targets, l.ClientURLs[0])
	}
	if p.cfg.join != "" {
		targets = append(targets, p.cfg.join)
	}
	if len(targets) == 0 {
		return 0, errors.New("no leader's client URL known, and no --join to ask through")
	}
	var index uint64
	var err error
	for _, target := range targets {
		var answered bool
		index, answered, err = p.post(strings.TrimSuffix(target, "/") + fmt.Sprintf("/members/%d/promote", p.cfg.id))
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
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.requestTimeout+time.Second)
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
