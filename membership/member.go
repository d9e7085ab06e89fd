// Package membership is who is in the cluster: the replicated member table
// and the rules it changes by, the members' URLs and the cluster's
// identity, the strict reconfiguration and learner rules that decide
// whether a change is safe, and the /members routes of the client API.
//
// The seam with the raft server: a conf change proposed through the API
// (API, with the Cluster it is given) is committed by raft, and the
// kvstore applying it calls Table.Apply; only if the table takes the
// change does the raft node apply it to raft's configuration and the
// transport. Raft lets an application treat a conf change as a no-op by
// not calling ApplyConfChange; deciding once, in the table, keeps the
// member table and raft's voters and learners the same on every member.
// (It also keeps raft from doing what the member table would not: raft
// takes an AddLearnerNode of a voter as a demotion, which raftkv never
// asks for.)
package membership

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.etcd.io/raft/v3/raftpb"

	"raftkv/idempotency"
)

// Errors a membership change can end with, having changed nothing.
var (
	ErrMemberExists   = errors.New("member already exists")
	ErrMemberNotFound = errors.New("member not found")
	ErrNotLearner     = errors.New("not a learner")
	// ErrBadChange is a conf change entry the table cannot read: every
	// member reads the same bytes and refuses it alike.
	ErrBadChange = errors.New("bad conf change")
)

// Member is one member as the cluster knows it: where peers and clients
// reach it, and whether it votes. The member table is replicated state: it
// changes only when a conf change or an advertise entry is applied, and it
// is part of every snapshot.
type Member struct {
	ID         uint64   `json:"id"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
	// IsLearner is a member raft replicates to but that does not vote: it
	// counts towards no quorum, for elections or commits (rules.go says how one is promoted).
	IsLearner bool `json:"isLearner"`
}

// WithLists is m with nil URL lists made empty, so JSON shows [] not null.
func (m Member) WithLists() Member {
	if m.PeerURLs == nil {
		m.PeerURLs = []string{}
	}
	if m.ClientURLs == nil {
		m.ClientURLs = []string{}
	}
	return m
}

// clone is m with URL lists of its own.
func (m Member) clone() Member {
	m.PeerURLs, m.ClientURLs = slices.Clone(m.PeerURLs), slices.Clone(m.ClientURLs)
	return m
}

// AddContext is what an AddNode or AddLearnerNode conf change carries
// (JSON: conf changes are rare, and it keeps WAL dumps readable): the
// member, and the idempotency key of the POST that proposed it, if any;
// or, for an AddNode that promotes a learner, Promote and the member's id.
type AddContext struct {
	Member
	Idempotency *idempotency.Key `json:"idempotency,omitempty"`
	// Promote is an AddNode that makes an existing learner a voter, which
	// raft does with an AddNode of a learner. Without it an AddNode of a
	// member that exists is refused, whether it is a learner or not: a
	// learner becomes a voter only through POST /members/{id}/promote,
	// which checks it has caught up.
	Promote bool `json:"promote,omitempty"`
}

// AddContextOf reads an add's context; the member's id is the conf
// change's, and it is a learner if the conf change adds a learner.
func AddContextOf(cc *raftpb.ConfChange) (AddContext, error) {
	var c AddContext
	if err := json.Unmarshal(cc.GetContext(), &c); err != nil {
		return AddContext{}, fmt.Errorf("%w: context: %v", ErrBadChange, err)
	}
	c.ID = cc.GetNodeId()
	c.IsLearner = cc.GetType() == raftpb.ConfChangeAddLearnerNode
	return c, nil
}

// Describe says, for the log, what cc did to table, which took it.
func Describe(cc *raftpb.ConfChange, table *Table) string {
	switch m, _ := table.Lookup(cc.GetNodeId()); {
	case cc.GetType() == raftpb.ConfChangeRemoveNode:
		return "member removed from the cluster"
	case IsPromotion(cc):
		return "member promoted from learner to voter"
	case m.IsLearner:
		return fmt.Sprintf("member added to the cluster as a learner at %s", strings.Join(m.PeerURLs, ","))
	default:
		return fmt.Sprintf("member added to the cluster at %s", strings.Join(m.PeerURLs, ","))
	}
}

// IsPromotion reports whether cc makes a learner a voter.
func IsPromotion(cc *raftpb.ConfChange) bool {
	c, err := AddContextOf(cc)
	return err == nil && c.Promote && cc.GetType() == raftpb.ConfChangeAddNode
}

// IdempotencyOf is the idempotency key a conf change carries: an add's,
// if it was proposed with one; else the zero Key.
func IdempotencyOf(cc *raftpb.ConfChange) idempotency.Key {
	if t := cc.GetType(); t != raftpb.ConfChangeAddNode && t != raftpb.ConfChangeAddLearnerNode {
		return idempotency.Key{}
	}
	if c, err := AddContextOf(cc); err == nil && c.Idempotency != nil {
		return *c.Idempotency
	}
	return idempotency.Key{}
}

// Table is the replicated member table: the members, and the ids of the
// members removed, which peers turn away and which are never reused. It
// has no lock of its own: its owner's guards it.
type Table struct {
	members map[uint64]*Member
	removed map[uint64]bool
}

// NewTable returns the table of members, with the removed ids removed.
func NewTable(members []Member, removed []uint64) *Table {
	t := &Table{members: make(map[uint64]*Member, len(members)), removed: make(map[uint64]bool, len(removed))}
	for _, m := range members {
		c := m.clone()
		t.members[m.ID] = &c
	}
	for _, id := range removed {
		t.removed[id] = true
	}
	return t
}

// List returns the members, ordered by id.
func (t *Table) List() []Member {
	list := make([]Member, 0, len(t.members))
	for _, m := range t.members {
		list = append(list, m.clone())
	}
	slices.SortFunc(list, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
	return list
}

// Voters returns the members that vote, ordered by id.
func (t *Table) Voters() []Member {
	return slices.DeleteFunc(t.List(), func(m Member) bool { return m.IsLearner })
}

// Removed returns the removed ids, in order.
func (t *Table) Removed() []uint64 { return slices.Sorted(maps.Keys(t.removed)) }

// Lookup returns member id.
func (t *Table) Lookup(id uint64) (Member, bool) {
	m, ok := t.members[id]
	if !ok {
		return Member{}, false
	}
	return m.clone(), true
}

// IsRemoved reports whether id was a member and was removed.
func (t *Table) IsRemoved(id uint64) bool { return t.removed[id] }

// Clone returns a copy that shares nothing with t.
func (t *Table) Clone() *Table { return NewTable(t.List(), t.Removed()) }

// SetClientURL records member id's client URL, which it advertises
// through the log once it runs; ErrMemberNotFound if it is no member.
func (t *Table) SetClientURL(id uint64, clientURL string) error {
	m, ok := t.members[id]
	if !ok {
		return ErrMemberNotFound
	}
	m.ClientURLs = []string{clientURL}
	return nil
}

// Apply records a conf change in the table, or refuses it with why: an
// add of an id that is a member already, a removal of a stranger, a
// promotion of a member that is no learner, or a change it cannot read.
// Only a change it takes may be applied to raft.
func (t *Table) Apply(cc *raftpb.ConfChange) error {
	id := cc.GetNodeId()
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		add, err := AddContextOf(cc)
		existing := t.members[id]
		switch {
		case err != nil:
			return err
		case add.Promote && cc.GetType() != raftpb.ConfChangeAddNode:
			return fmt.Errorf("%w: a promotion must be an AddNode conf change", ErrBadChange)
		case add.Promote && existing == nil:
			return ErrMemberNotFound
		case add.Promote && !existing.IsLearner:
			return ErrNotLearner
		case add.Promote:
			existing.IsLearner = false
		case existing != nil:
			return ErrMemberExists
		default:
			m := add.Member.clone()
			t.members[id] = &m
			delete(t.removed, id)
		}
	case raftpb.ConfChangeRemoveNode:
		if t.members[id] == nil {
			return ErrMemberNotFound
		}
		delete(t.members, id)
		t.removed[id] = true
	default:
		return fmt.Errorf("%w: type %v", ErrBadChange, cc.GetType())
	}
	return nil
}
