// Package idempotency makes retried writes apply exactly once.
//
// A client that got no answer (a 504, a dropped connection) cannot know
// whether its write applied, and raft may commit one command twice: the
// first attempt can still be in the log when the retry arrives (raft
// thesis §6.3). So a write may carry an Idempotency-Key. The key travels in
// the entry with a fingerprint of the request, and applying the entry
// records key -> answer in the replicated state (in every snapshot, the
// same on every member). An entry whose key is already recorded changes
// nothing: its handler gets the recorded answer, so a retry sent to any
// member answers exactly what the first attempt did.
//
// The records are bounded: a member keeps the newest window of them, evicting the
// oldest in apply order. The bound travels in each entry (the proposing
// member's --idempotency-window), so every member evicts the same records
// at the same log position even if their flags differ. A retry whose
// record was evicted is applied again, as a new request.
//
// The seam: a handler turns the header into a Key (KeyOf),
// which the entry carries; the kvstore, applying it, asks its Records for
// a Replay first and Remembers the answer after.
package idempotency

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"

	"raftkv/keyspace"
)

// ErrKeyReused is an Idempotency-Key already recorded for a different
// request: nothing was applied.
var ErrKeyReused = errors.New("Idempotency-Key was already used for a different request")

// ErrBadKey is an Idempotency-Key header that is empty, too long, repeated
// or holds other than visible ASCII.
var ErrBadKey = errors.New("bad Idempotency-Key")

const (
	// MaxKeyBytes is the longest Idempotency-Key.
	MaxKeyBytes = 128
	// DefaultWindow keeps about the last minute of writes at the cluster's
	// measured peak, in some 20 MiB.
	DefaultWindow = 100000
	// MaxWindow bounds the record's memory: at most some 2 GiB of
	// full-length keys.
	MaxWindow = 10000000
)

// Parse returns the request's Idempotency-Key, "" if none.
func Parse(h http.Header) (string, error) {
	lines, ok := h["Idempotency-Key"]
	if !ok {
		return "", nil
	}
	if len(lines) != 1 {
		return "", fmt.Errorf("%w: give it once", ErrBadKey)
	}
	key := lines[0]
	if len(key) < 1 || len(key) > MaxKeyBytes {
		return "", fmt.Errorf("%w: must be 1 to %d characters", ErrBadKey, MaxKeyBytes)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return "", fmt.Errorf("%w: only visible ASCII characters, no spaces", ErrBadKey)
		}
	}
	return key, nil
}

// KeyOf is the Idempotency-Key of a request whose headers are h, if it
// has one, with the fingerprint of parts (everything that decides the
// request's effect: its method, target, body and conditions) and the
// proposer's window; the zero Key if it has none.
func KeyOf(h http.Header, window uint64, parts ...[]byte) (Key, error) {
	name, err := Parse(h)
	if err != nil || name == "" {
		return Key{}, err
	}
	return Key{Name: name, Fingerprint: Fingerprint(parts...), Window: window}, nil
}

// Key is what an entry carries for exactly-once: the Idempotency-Key's
// name, the request's fingerprint and the proposer's window. The zero Key
// is a request without one.
type Key struct {
	Name        string `json:"key"`
	Fingerprint uint64 `json:"fingerprint"`
	Window      uint64 `json:"window"`
}

// Fingerprint identifies a request by everything that decides its effect,
// so that a key reused for another request is told apart. It is computed
// by the proposer, so it must not depend on the process: FNV-1a over the
// length-prefixed parts.
func Fingerprint(parts ...[]byte) uint64 {
	h := fnv.New64a()
	var n [binary.MaxVarintLen64]byte
	for _, p := range parts {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(p)))])
		h.Write(p)
	}
	return h.Sum64()
}

// Answer is what applying an entry answered its request: the entry's
// index, the error it ended with (nil for success), and the key's version
// if the request names a key that exists.
type Answer struct {
	Index      uint64
	Err        error
	Version    keyspace.Version
	HasVersion bool // Version is set: the key exists
	Created    bool // a PUT that created its key
}

// Record is one remembered answer.
type Record struct {
	Name        string
	Fingerprint uint64
	Answer      Answer
}

// Records is the replicated record of recent idempotency keys, oldest
// first.
type Records struct {
	byName map[string]*Record
	order  []*Record // order[head:] are live, oldest first
	head   int
}

// NewRecords returns the records given, oldest first, as a snapshot
// holds them: none for a new cluster. A name given twice keeps its first.
func NewRecords(records ...*Record) *Records {
	rs := &Records{byName: make(map[string]*Record, len(records))}
	for _, r := range records {
		rs.add(r)
	}
	return rs
}

// Replay is the answer to an entry carrying k, if k is already recorded:
// the recorded answer, or ErrKeyReused if k was recorded for another
// request. Either way the entry must change nothing.
func (rs *Records) Replay(k Key) (Answer, bool) {
	if k.Name == "" {
		return Answer{}, false
	}
	r, ok := rs.byName[k.Name]
	if !ok {
		return Answer{}, false
	}
	if r.Fingerprint != k.Fingerprint {
		return Answer{Err: ErrKeyReused}, true
	}
	return r.Answer, true
}

// Remember records k's answer, then evicts the oldest records beyond k's
// window.
func (rs *Records) Remember(k Key, a Answer) {
	rs.add(&Record{Name: k.Name, Fingerprint: k.Fingerprint, Answer: a})
	for uint64(len(rs.order)-rs.head) > max(k.Window, 1) {
		delete(rs.byName, rs.order[rs.head].Name)
		rs.order[rs.head] = nil
		rs.head++
	}
	if rs.head > len(rs.order)/2 {
		rs.order = append(rs.order[:0], rs.order[rs.head:]...)
		rs.head = 0
	}
}

// add adds r as the newest record, unless its name is recorded already.
func (rs *Records) add(r *Record) {
	if _, dup := rs.byName[r.Name]; dup {
		return
	}
	rs.byName[r.Name] = r
	rs.order = append(rs.order, r)
}

// List returns the live records, oldest first. A record never changes
// once made.
func (rs *Records) List() []*Record { return rs.order[rs.head:] }
