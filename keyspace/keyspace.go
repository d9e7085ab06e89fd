// Package keyspace is raftkv's key space: every key in order, with its value
// and its version, and the rules a write keeps (versions, conditions). It
// has no raft in it: the kvstore holds one Space and calls Put and Delete as
// it applies entries, in log order, under its own lock; reads and listings
// call Get and List under the same lock.
//
// A key's version is a raft log index. Raft gives every entry a unique,
// ordered number, so modIndex is the index of the entry that last wrote the
// key and createIndex the index of the one that created it (since it was
// last absent), as Consul's ModifyIndex and etcd's mod_revision. The
// proposer never puts two writes to one key into one entry, so a modIndex
// names exactly one value of a key. The version is the key's entity tag
// (RFC 9110 §8.8.3): ETag: "<modIndex>".
package keyspace

import (
	"errors"
	"strings"

	"github.com/tidwall/btree"
)

// MaxKeyBytes is the longest key, and the longest prefix a listing or a
// watch names.
const MaxKeyBytes = 4096

// Errors a write can end with, having changed nothing.
var (
	// ErrKeyNotFound is a delete of a key that is absent.
	ErrKeyNotFound = errors.New("key not found")
	// ErrPreconditionFailed is a conditional write whose condition was
	// false when its entry applied.
	ErrPreconditionFailed = errors.New("precondition failed")
)

// Version is where a key stands in the log.
type Version struct {
	CreateIndex uint64 // the entry that created the key, since it was last absent
	ModIndex    uint64 // the entry that last wrote it
}

// Value is one key's value and version, and the lease it is attached to.
type Value struct {
	Data string // a string, not a []byte: 8 bytes less per key, and immutable
	Version
	Lease uint64 // the lease the key lives by (package lease); 0: none
}

// Space is every key in order, so that a prefix can be listed a page at a
// time. It is tidwall/btree's Map, at degree 64: at a million keys it was
// the fastest ordered structure on every operation measured, with no
// allocation on a get, a put or a page, and it holds them in about the
// memory of a Go map. It has no lock of its own: its owner's guards it.
type Space struct {
	tree *btree.Map[string, Value]
}

// degree is the B-tree's degree.
const degree = 64

// New returns an empty key space.
func New() *Space { return &Space{tree: btree.NewMap[string, Value](degree)} }

// Get returns key's value, if it exists.
func (s *Space) Get(key string) (Value, bool) { return s.tree.Get(key) }

// Len is the number of keys.
func (s *Space) Len() int { return s.tree.Len() }

// Copy returns a copy of the space in O(1): the tree is copy-on-write, so
// the next write to either copies the nodes it changes. Two Copies must
// not race, and a Copy must not race with a write.
func (s *Space) Copy() *Space { return &Space{tree: s.tree.Copy()} }

// Scan calls fn with every key, in order, until fn returns false.
func (s *Space) Scan(fn func(key string, v Value) bool) { s.tree.Scan(fn) }

// Load appends a key greater than every key in the space, as a snapshot
// lists them; Set adds one anywhere.
func (s *Space) Load(key string, v Value) { s.tree.Load(key, v) }

// Set sets key to v, wherever it falls in the order.
func (s *Space) Set(key string, v Value) { s.tree.Set(key, v) }

// Put sets key to data as the write of the entry at index, attached to
// lease (0: none), if cond holds for the key now (else
// ErrPreconditionFailed, with the key's current value). It returns the
// key's new value, and whether the key existed before. The condition is checked here, when the entry applies,
// against the state every entry before it left: only the log order decides
// between racing writes, and every member decides alike.
func (s *Space) Put(index uint64, key, data string, cond Condition, lease uint64) (v Value, existed bool, err error) {
	cur, exists := s.tree.Get(key)
	if !cond.Holds(cur.Version, exists) {
		return cur, exists, ErrPreconditionFailed
	}
	v = Value{Data: data, Version: Version{CreateIndex: index, ModIndex: index}, Lease: lease}
	if exists {
		v.CreateIndex = cur.CreateIndex
	}
	s.tree.Set(key, v)
	return v, exists, nil
}

// Delete removes key as the write of the entry at index, if cond holds for
// it now and it exists: ErrPreconditionFailed (with the current value) or
// ErrKeyNotFound if not. It returns the key as it was deleted, as etcd's
// delete events show it (no data, ModIndex the delete's, CreateIndex the
// key's, its lease), and whether it existed.
func (s *Space) Delete(index uint64, key string, cond Condition) (v Value, existed bool, err error) {
	cur, exists := s.tree.Get(key)
	if !cond.Holds(cur.Version, exists) {
		return cur, exists, ErrPreconditionFailed
	}
	if !exists {
		return Value{}, false, ErrKeyNotFound
	}
	s.tree.Delete(key)
	cur.Data, cur.ModIndex = "", index
	return cur, true, nil
}

// Listed is one key of a listing.
type Listed struct {
	Key string
	Value
}

// List returns, in key order, up to limit keys that start with prefix and
// come after after, and whether more follow.
func (s *Space) List(prefix, after string, limit int) ([]Listed, bool) {
	var page []Listed
	more := false
	// Never write the tree from inside Ascend: the callback only collects.
	s.tree.Ascend(max(prefix, after), func(k string, v Value) bool {
		switch {
		case k == after:
			return true
		case !strings.HasPrefix(k, prefix):
			return false
		case len(page) == limit:
			more = true
			return false
		}
		page = append(page, Listed{Key: k, Value: v})
		return true
	})
	return page, more
}
