package membership

import (
	"errors"
	"fmt"
)

// Strict reconfiguration, as etcd's --strict-reconfig-check: a change to
// the voters is refused, before anything is proposed, when it would leave
// fewer healthy voters than a quorum of the new configuration.
//
// Raft commits a conf change with a quorum of the configuration before it,
// and from the moment it is applied needs a quorum of the one after. Add
// three voters that never start to a cluster of three and it has six voters
// with three alive: no quorum, so it cannot commit anything, not even the
// removal that would undo the mistake. Remove a live voter while another is
// down and the same happens with fewer members.
//
// A member counts as healthy when the member that checks is connected to
// it (the Cluster's Connected), so a member that was added but never
// started is not healthy. etcd also asks that the connection be five
// seconds old, to ride out a flapping link; raftkv counts a peer from the
// moment its connection is up, since raft replicates to it from that
// moment, so that a change right after a member restarts is not refused.
//
// Only voters count. A learner is in no quorum: adding or removing one
// never risks the quorum, and is never refused for it, while promoting one
// adds a voter and is checked as an add is, the learner counting as healthy
// (it must be connected to the leader to be promoted).

// ErrTooFewHealthy is a membership change refused because the voters it
// would leave could not form a quorum.
var ErrTooFewHealthy = errors.New("too few healthy voters")

// Quorum is how many of n voters raft needs to elect a leader or commit.
func Quorum(n int) int { return n/2 + 1 }

// countHealthy counts the voters, other than except, for which healthy
// holds.
func countHealthy(voters []Member, except uint64, healthy func(id uint64) bool) int {
	n := 0
	for _, m := range voters {
		if m.ID != except && healthy(m.ID) {
			n++
		}
	}
	return n
}

// CheckAddVoter refuses to add voter id to voters if the healthy ones
// would then be fewer than a quorum of the new size. A lone voter may add
// a second, as etcd allows: a cluster of one can grow no other way, and
// until the second member starts it cannot commit, whatever the check
// says.
func CheckAddVoter(voters []Member, id uint64, healthy func(id uint64) bool) error {
	if len(voters) == 1 {
		return nil
	}
	n, ok := len(voters)+1, countHealthy(voters, id, healthy)
	if ok < Quorum(n) {
		return fmt.Errorf("%w: adding member %d would make %d voters, %d of them healthy, and a quorum is %d; start or remove the members that are down first",
			ErrTooFewHealthy, id, n, ok, Quorum(n))
	}
	return nil
}

// CheckRemoveVoter refuses to remove voter id if the healthy voters left
// would be fewer than a quorum of those left. Removing a member that is
// down is always allowed when the rest are up: it is how a cluster drops
// a member that will not come back.
func CheckRemoveVoter(voters []Member, id uint64, healthy func(id uint64) bool) error {
	n, ok := len(voters)-1, countHealthy(voters, id, healthy)
	if ok < Quorum(n) {
		return fmt.Errorf("%w: removing member %d would leave %d voters, %d of them healthy, and a quorum is %d; start the members that are down first",
			ErrTooFewHealthy, id, n, ok, Quorum(n))
	}
	return nil
}

// CheckPromote refuses to promote learner id, which is healthy (connected
// to the leader), if the healthy voters would then be fewer than a quorum
// of the new size.
func CheckPromote(voters []Member, id uint64, healthy func(id uint64) bool) error {
	n, ok := len(voters)+1, countHealthy(voters, id, healthy)+1
	if ok < Quorum(n) {
		return fmt.Errorf("%w: promoting member %d would make %d voters, %d of them healthy, and a quorum is %d; start or remove the members that are down first",
			ErrTooFewHealthy, id, n, ok, Quorum(n))
	}
	return nil
}

// Learners: members that receive the log but do not vote.
//
// A new member starts empty. Added as a voter, it counts towards the quorum
// from the moment its addition applies, long before it holds the log: add
// a fourth member to three and the quorum is three, so with the new member
// still catching up (a snapshot of a million keys takes a while) one more
// member down stops every write. A learner is a member raft replicates to
// like any follower but that counts towards no quorum, never campaigns and
// can never lead (raft's ConfChangeAddLearnerNode). Once its log is close to
// the leader's it is promoted (an AddNode of a learner makes it a voter in
// raft), as etcd's MemberPromote does: POST /members/{id}/promote, which
// only the leader answers, since only it knows how far each member's log
// matches its own (raft's Progress.Match).

// ErrLearnerNotReady is a promotion refused while the learner lags.
var ErrLearnerNotReady = errors.New("learner not caught up")

const (
	// learnerReadyFraction is how much of the leader's log a learner's log
	// must match to be promoted: etcd's readyPercentThreshold.
	learnerReadyFraction = 0.9

	// learnerMaxLag is how many entries a learner's log may be behind the
	// leader's to be promoted. A fraction alone lets a learner far behind
	// through once the log is long (at index 10 million, 90% is a million
	// entries behind); a learner that keeps up with the leader is a batch
	// or two behind, a few entries, whatever the load.
	learnerMaxLag = 1000
)

// CheckLearnerLag refuses learner id whose log matches the leader's to
// index match, the leader's own being at leaderMatch, if it is more than
// learnerMaxLag entries behind or matches less than learnerReadyFraction,
// as etcd's isLearnerReady judges it with a bound added. The leader
// judges by it, and so does a learner asking for its own promotion, with
// its applied index and the leader's commit index.
func CheckLearnerLag(id, match, leaderMatch uint64) error {
	behind := leaderMatch - min(match, leaderMatch)
	if behind > learnerMaxLag || float64(match) < learnerReadyFraction*float64(leaderMatch) {
		return fmt.Errorf("%w: member %d's log matches the leader's to index %d of %d, %d entries behind; it can be promoted once it is at most %d entries and %.0f%% behind",
			ErrLearnerNotReady, id, match, leaderMatch, behind, learnerMaxLag, 100*(1-learnerReadyFraction))
	}
	return nil
}
