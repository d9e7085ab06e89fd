package join

import (
	"context"
	"errors"
	"slices"
	"time"

	"go.uber.org/zap"

	"raftkv/api"
	"raftkv/membership"
)

// Advertise puts this member's client URL into the replicated member
// table, so that followers can redirect clients to it when it leads. Like
// etcd's publish of its member attributes, it runs on every start, until
// the table shows the URL (advertised by this run, by an earlier one, or
// given when the member was added) or the member stops. A proposal needs
// a leader, so it proposes the moment one is known, woken by the change
// of leader rather than by a timer; after a failure, again at the next
// change of leader or a tenth of timeout later, whichever comes first.
func Advertise(srv Server, id uint64, clientURL string, timeout time.Duration, lg *zap.Logger) {
	for !hasClientURL(srv.Table(), id, clientURL) {
		changed := srv.LeaderChange()
		if srv.Leader() == 0 {
			select {
			case <-changed:
				continue
			case <-srv.Done():
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		err := srv.ProposeAdvertise(ctx, id, clientURL)
		cancel()
		switch {
		case err == nil:
			lg.Info("advertised client URL", zap.String("client-url", clientURL))
			return
		case errors.Is(err, membership.ErrMemberNotFound):
			lg.Warn("not advertising client URL: not a member", zap.Uint64("member-id", id))
			return
		case errors.Is(err, api.ErrStopped):
			return
		}
		select {
		case <-changed:
		case <-time.After(timeout / 10):
		case <-srv.Done():
			return
		}
	}
}

// hasClientURL reports whether table gives member id exactly clientURL,
// the one it serves clients on.
func hasClientURL(table *membership.Table, id uint64, clientURL string) bool {
	m, ok := table.Lookup(id)
	return ok && slices.Equal(m.ClientURLs, []string{clientURL})
}
