// Package lease is raftkv's leases: keys that live only while their owner
// keeps renewing, for service registration, locks and leader election.
//
// A lease is granted with a TTL through the log; a PUT may attach keys to
// it; when it is revoked, or expires, one log entry deletes it and all its
// keys, on every member at the same index. Only the leader decides that a
// lease has expired, and it says so through the log: a follower never
// expires a lease on its own.
//
// Timing. A lease must never end before its TTL has passed since the last
// keepalive answered 200, whoever leads, and must end soon after. Members'
// clocks are not synchronised, so nothing in the log is a time: a member
// reasons only about durations on its own clock. Keepalives do not go
// through the log (they would cost a write each): the leader answers them
// from memory. What the log carries instead are windows. Before the leader
// answers keepalives of a lease from memory, it commits a window entry for
// it, and it answers only until half the lease's TTL after it proposed that
// entry. Every other member, applying the window, holds the lease until at
// least its own apply time plus that half TTL plus the TTL, which is no
// sooner than any keepalive the leader may answer under the window, plus
// the TTL. So a member that becomes leader, however many leaders came
// before it, never expires a lease that a keepalive answered by another
// leader still covers; and since the windows of a lease stop when its
// keepalives stop, it does not hold a dead lease much longer either: a new
// leader ends it within 1.5 times its TTL of the last window, where etcd
// extends every lease by a full TTL at each change of leader.
//
// The seams: the kvstore applies the lease commands to a Table (Grant,
// Revoke, Window, and Attach and Detach as PUTs and DELETEs change keys);
// the leader's Lessor answers keepalives, proposes windows and expiries;
// the client API serves /leases with API.
package lease

import (
	"errors"
	"maps"
	"slices"
	"time"

	"raftkv/idempotency"
)

// Errors of lease requests.
var (
	// ErrNotFound is a lease that does not exist, or no longer does.
	ErrNotFound = errors.New("lease not found")
)

// MaxTTL is the longest TTL a lease may have: a TTL and a half must fit
// in a time.Duration with room to spare.
const MaxTTL = 1_000_000_000 * time.Second

// Why a lease's keys were deleted, as its watchers' events say.
const (
	Revoked = "revoked"
	Expired = "expired"
)

// window is how long after proposing a window the leader may answer a
// lease's keepalives from memory: half its TTL.
func window(ttl time.Duration) time.Duration { return ttl / 2 }

// Origin names the process that proposed a window: a member, and a number
// its process drew at start, so that a member restarted is another origin.
type Origin struct {
	Member uint64
	Nonce  uint64
}

// Lease is one lease as a member holds it.
type Lease struct {
	ID   uint64
	TTL  time.Duration
	keys map[string]struct{}
	// holdUntil is how long this member must hold the lease by what it
	// applied: its grant (apply time plus TTL), and every window another
	// process proposed (apply time plus a window plus TTL). Keepalives the
	// leader answered from memory under those windows are covered by it.
	holdUntil time.Time
	// ownUntil is the same for the windows this process proposed itself:
	// as leader it knows every keepalive it answered under them, and holds
	// the lease by those (Lessor), not by its windows; a snapshot, which
	// another member may load, holds the lease until the later of the two.
	ownUntil time.Time
}

// Info is a copy of a lease as the table holds it.
type Info struct {
	ID        uint64
	TTL       time.Duration
	Keys      []string  // in order
	HoldUntil time.Time // see Lease.holdUntil
}

// Table is the leases a member holds: replicated (every member applies the
// same grants, revokes and attachments at the same indexes) but for the
// times, which each member keeps on its own clock. It has no lock of its
// own: its owner's guards it.
type Table struct {
	now    func() time.Time
	self   Origin
	leases map[uint64]*Lease
}

// NewTable returns an empty table for the process self, reading time
// from now.
func NewTable(self Origin, now func() time.Time) *Table {
	return &Table{now: now, self: self, leases: make(map[uint64]*Lease)}
}

// Grant adds lease id with ttl: the entry that grants it is at index id.
func (t *Table) Grant(id uint64, ttl time.Duration) {
	t.leases[id] = &Lease{ID: id, TTL: ttl, keys: make(map[string]struct{}), holdUntil: t.now().Add(ttl)}
}

// Exists reports whether lease id exists.
func (t *Table) Exists(id uint64) bool { return t.leases[id] != nil }

// Attach attaches key to lease id, which must exist.
func (t *Table) Attach(id uint64, key string) {
	if l := t.leases[id]; l != nil {
		l.keys[key] = struct{}{}
	}
}

// Detach detaches key from lease id, if both exist.
func (t *Table) Detach(id uint64, key string) {
	if l := t.leases[id]; l != nil {
		delete(l.keys, key)
	}
}

// Revoke removes lease id, and returns the keys attached to it, in order:
// the caller deletes them. ErrNotFound if it does not exist.
func (t *Table) Revoke(id uint64) ([]string, error) {
	l := t.leases[id]
	if l == nil {
		return nil, ErrNotFound
	}
	delete(t.leases, id)
	return slices.Sorted(maps.Keys(l.keys)), nil
}

// Window applies a window for the leases ids proposed by origin (the ids
// that no longer exist are skipped): until half a TTL after origin
// proposed it, origin may answer their keepalives from memory.
func (t *Table) Window(origin Origin, ids []uint64) {
	now := t.now()
	for _, id := range ids {
		l := t.leases[id]
		if l == nil {
			continue
		}
		until := now.Add(window(l.TTL) + l.TTL)
		if origin == t.self {
			l.ownUntil = later(l.ownUntil, until)
		} else {
			l.holdUntil = later(l.holdUntil, until)
		}
	}
}

// Get returns lease id.
func (t *Table) Get(id uint64) (Info, bool) {
	l := t.leases[id]
	if l == nil {
		return Info{}, false
	}
	return l.info(), true
}

// List returns every lease, in no order, without its keys: the leader
// reads it every tick, and sorting ten thousand ids each time would cost
// it more than the rest of the scan.
func (t *Table) List() []Info {
	list := make([]Info, 0, len(t.leases))
	for _, l := range t.leases {
		list = append(list, Info{ID: l.ID, TTL: l.TTL, HoldUntil: l.holdUntil})
	}
	return list
}

// Len is the number of leases.
func (t *Table) Len() int { return len(t.leases) }

// info is a copy of l.
func (l *Lease) info() Info {
	return Info{ID: l.ID, TTL: l.TTL, Keys: slices.Sorted(maps.Keys(l.keys)), HoldUntil: l.holdUntil}
}

// Saved is a lease as a snapshot holds it: its id and TTL, and how long a
// member that loads the snapshot must hold it at least.
type Saved struct {
	ID   uint64
	TTL  time.Duration // whole seconds
	Hold time.Duration
}

// Command is a lease command, which the raft server proposes as an
// entry (package codec has the format).
type Command struct {
	Kind Kind
	TTL  time.Duration   // Grant: whole seconds
	Idem idempotency.Key // Grant: its Idempotency-Key, if any
	ID   uint64          // Revoke: the lease
	// Expired is a revoke the leader proposes for a lease whose time is up,
	// not one a client asked for.
	Expired bool
	Origin  Origin   // Window: the process that proposes it
	IDs     []uint64 // Window: the leases
}

// Kind is what a lease command does.
type Kind int

// The lease commands.
const (
	Grant  Kind = iota + 1 // grant a lease, whose id is its entry's index
	Revoke                 // delete a lease and its keys
	Window                 // open a window for the leases' keepalives
)

// Save returns every lease as a snapshot holds it, ordered by id: with
// how long it must be held from now, by every window applied, this
// process's own too. A member that loads it holds the lease that long from
// the moment it loads it, which is later.
func (t *Table) Save() []Saved {
	now := t.now()
	saved := make([]Saved, 0, len(t.leases))
	for _, id := range slices.Sorted(maps.Keys(t.leases)) {
		l := t.leases[id]
		saved = append(saved, Saved{ID: id, TTL: l.TTL, Hold: max(later(l.holdUntil, l.ownUntil).Sub(now), 0)})
	}
	return saved
}

// Load replaces the table's leases with those of a snapshot, with no keys
// attached yet: the caller attaches the keys the snapshot's key space
// says are.
func (t *Table) Load(saved []Saved) {
	now := t.now()
	t.leases = make(map[uint64]*Lease, len(saved))
	for _, s := range saved {
		t.leases[s.ID] = &Lease{ID: s.ID, TTL: s.TTL, keys: make(map[string]struct{}), holdUntil: now.Add(s.Hold)}
	}
}

// later is the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
