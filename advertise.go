package main

import (
	"context"
	"errors"
	"slices"
	"time"

	"go.etcd.io/raft/v3"
	"go.uber.org/zap"
)

// leaderWatch is what advertising a client URL needs of the raft node: who
// leads, and a channel closed at the next change of leader.
type leaderWatch interface {
	leaderID() uint64
	leaderChange() <-chan struct{}
}

// advertiseClientURL puts this member's client URL into the replicated
// member table, so that followers can redirect clients to it when it leads.
// Like etcd's publish of its member attributes, it runs on every start,
// until the table shows the URL (advertised by this run, by an earlier one, or
// given when the member was added) or the store stops. A proposal needs a
// leader, so it proposes the moment one is known, woken by the change of
// leader rather than by a timer; after a failure, again at the next change
// of leader or a tenth of timeout later, whichever comes first.
func (s *kvstore) advertiseClientURL(leaders leaderWatch, memberID uint64, clientURL string, timeout time.Duration) {
	for !s.hasClientURL(memberID, clientURL) {
		changed := leaders.leaderChange()
		if leaders.leaderID() == raft.None {
			select {
			case <-changed:
				continue
			case <-s.done:
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		id := s.requestIDs.Next()
		_, err := s.propose(ctx, id, encodeAdvertise(id, memberID, clientURL))
		cancel()
		switch {
		case err == nil:
			s.lg.Info("advertised client URL", zap.String("client-url", clientURL))
			return
		case errors.Is(err, ErrMemberNotFound):
			s.lg.Warn("not advertising client URL: not a member", zap.Uint64("member-id", memberID))
			return
		case errors.Is(err, ErrStopped):
			return
		}
		select {
		case <-changed:
		case <-time.After(timeout / 10):
		case <-s.done:
			return
		}
	}
}

// hasClientURL reports whether the applied member table gives member id
// exactly clientURL, the one it serves clients on.
func (s *kvstore) hasClientURL(id uint64, clientURL string) bool {
	m, ok := s.lookupMember(id)
	return ok && slices.Equal(m.ClientURLs, []string{clientURL})
}
