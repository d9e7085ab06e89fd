package membership

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestLearnerLag proves the leader's rule for a learner's log (etcd's
// isLearnerReady, and a bound on the entries behind): within 1000 entries
// and 90% of the leader's it may be promoted, otherwise not.
func TestLearnerLag(t *testing.T) {
	for _, tc := range []struct {
		match, leaderMatch uint64
		ready              bool
	}{
		{0, 0, true},
		{10, 10, true},
		{9, 10, true},
		{8, 10, false}, // 80%
		{0, 10, false},
		{1_000_000, 1_001_000, true},
		{1_000_000, 1_001_001, false}, // 99.9%, but 1001 behind
		{12, 10, true},                // ahead of what the leader's status showed
	} {
		err := CheckLearnerLag(4, tc.match, tc.leaderMatch)
		if (err == nil) != tc.ready || (err != nil && !errors.Is(err, ErrLearnerNotReady)) {
			t.Errorf("CheckLearnerLag(match %d, leader %d) = %v, want ready %v", tc.match, tc.leaderMatch, err, tc.ready)
		}
	}
}

// TestQuorum proves a quorum is a strict majority of the voters.
func TestQuorum(t *testing.T) {
	for n, want := range map[int]int{1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 4, 7: 4} {
		if got := Quorum(n); got != want {
			t.Errorf("Quorum(%d) = %d, want %d", n, got, want)
		}
	}
}

// rulesVoters is a table's voters 1 to n.
func rulesVoters(n int) []Member {
	var voters []Member
	for id := 1; id <= n; id++ {
		voters = append(voters, Member{ID: uint64(id)})
	}
	return voters
}

// rulesHealthy is a health check under which only up are healthy.
func rulesHealthy(up ...uint64) func(uint64) bool {
	return func(id uint64) bool { return slices.Contains(up, id) }
}

// rulesCheck fails unless err is what a check should answer: nil when ok,
// else ErrTooFewHealthy with every number in want in its message.
func rulesCheck(t *testing.T, what string, err error, ok bool, want ...string) {
	t.Helper()
	switch {
	case ok && err != nil:
		t.Errorf("%s: %v, want it allowed", what, err)
	case !ok && !errors.Is(err, ErrTooFewHealthy):
		t.Errorf("%s: %v, want ErrTooFewHealthy", what, err)
	case !ok:
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", what, err, w)
			}
		}
	}
}

// TestCheckAddVoter proves strict reconfiguration's rule for adding a
// voter: refused when the healthy voters would be fewer than a quorum of
// the new configuration, the new voter, not started yet, not counting as
// healthy; a lone voter may always add a second. Adding three voters that
// never start to three is refused at the third, which would leave three
// healthy of six.
func TestCheckAddVoter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		voters int
		up     []uint64
		ok     bool
		want   []string
	}{
		{"to one", 1, []uint64{1}, true, nil},
		{"to one that is down", 1, nil, true, nil},
		{"to two, both up", 2, []uint64{1, 2}, true, nil},
		{"to two, one down", 2, []uint64{1}, false, []string{"adding member 9", "3 voters", "1 of them healthy", "quorum is 2"}},
		{"to three, all up", 3, []uint64{1, 2, 3}, true, nil},
		{"to three, one down", 3, []uint64{1, 2}, false, []string{"adding member 9", "4 voters", "2 of them healthy", "quorum is 3"}},
		{"to four, one down", 4, []uint64{1, 2, 3}, true, nil},
		{"to five, two down", 5, []uint64{1, 2, 3}, false, []string{"6 voters", "3 of them healthy", "quorum is 4"}},
		{"new voter said to be healthy", 3, []uint64{1, 2, 9}, false, []string{"2 of them healthy"}},
	} {
		rulesCheck(t, tc.name, CheckAddVoter(rulesVoters(tc.voters), 9, rulesHealthy(tc.up...)), tc.ok, tc.want...)
	}

	voters, healthy := rulesVoters(3), rulesHealthy(1, 2, 3)
	for id := uint64(4); id <= 6; id++ {
		err := CheckAddVoter(voters, id, healthy)
		rulesCheck(t, fmt.Sprintf("adding member %d that never starts to %d voters", id, len(voters)), err, id < 6, "6 voters", "3 of them healthy", "quorum is 4")
		voters = append(voters, Member{ID: id})
	}
}

// TestCheckRemoveVoter proves strict reconfiguration's rule for removing
// a voter: refused when the healthy voters left would be fewer than a
// quorum of those left; removing the voter that is down is how a cluster
// drops it, and is allowed while the rest are up.
func TestCheckRemoveVoter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		voters int
		up     []uint64
		remove uint64
		ok     bool
		want   []string
	}{
		{"a live one of three, all up", 3, []uint64{1, 2, 3}, 2, true, nil},
		{"the one of three that is down", 3, []uint64{1, 2}, 3, true, nil},
		{"a live one of three, one down", 3, []uint64{1, 2}, 2, false, []string{"removing member 2", "2 voters", "1 of them healthy", "quorum is 2"}},
		{"the other of two, down", 2, []uint64{1}, 2, true, nil},
		{"a live one of five, two down", 5, []uint64{1, 2, 3}, 1, false, []string{"removing member 1", "4 voters", "2 of them healthy", "quorum is 3"}},
		{"one of five that is down, another down too", 5, []uint64{1, 2, 3}, 4, true, nil},
		{"a live one of four, one down", 4, []uint64{1, 2, 3}, 3, true, nil},
	} {
		rulesCheck(t, "removing "+tc.name, CheckRemoveVoter(rulesVoters(tc.voters), tc.remove, rulesHealthy(tc.up...)), tc.ok, tc.want...)
	}
}

// TestCheckPromote proves strict reconfiguration's rule for promoting a
// learner: it adds a voter, checked as an add is, except that the learner,
// connected to the leader, counts as healthy. So a promotion is allowed
// where adding a voter that never started is refused.
func TestCheckPromote(t *testing.T) {
	for _, tc := range []struct {
		name   string
		voters int
		up     []uint64
		ok     bool
		want   []string
	}{
		{"to one", 1, []uint64{1}, true, nil},
		{"to three, all up", 3, []uint64{1, 2, 3}, true, nil},
		{"to three, one down", 3, []uint64{1, 2}, true, nil},
		{"to three, two down", 3, []uint64{1}, false, []string{"promoting member 9", "4 voters", "2 of them healthy", "quorum is 3"}},
		{"to two, one down", 2, []uint64{1}, true, nil},
		{"to five, three down", 5, []uint64{1, 2}, false, []string{"6 voters", "3 of them healthy", "quorum is 4"}},
	} {
		rulesCheck(t, "promoting "+tc.name, CheckPromote(rulesVoters(tc.voters), 9, rulesHealthy(tc.up...)), tc.ok, tc.want...)
	}
	// The learner counts once, whatever healthy says of it.
	rulesCheck(t, "promoting a learner said to be healthy to three, two down", CheckPromote(rulesVoters(3), 9, rulesHealthy(1, 9)), false, "2 of them healthy")
}
