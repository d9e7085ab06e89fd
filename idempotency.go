package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
)

// Exactly-once retries.
//
// A client that got no answer (a 504, a dropped connection) cannot know
// whether its write applied, and raft may commit one command twice: the
// first attempt can still be in the log when the retry arrives (raft
// thesis §6.3). So a write may carry an Idempotency-Key. The key travels in
// the entry with a fingerprint of the request, and applying the entry
// records key -> outcome in the replicated state (in every snapshot, the
// same on every member). An entry whose key is already recorded changes
// nothing: its handler gets the recorded outcome, so a retry sent to any
// member answers exactly what the first attempt did.
//
// The record is bounded: it keeps the newest window records, evicting the
// oldest in apply order. The bound travels in each entry (the proposing
// member's --idempotency-window), so every member evicts the same records
// at the same log position even if their flags differ. A retry whose
// record was evicted is applied again, as a new request.

// ErrIdempotencyKeyReused is an Idempotency-Key already recorded for a
// different request: nothing was applied.
var ErrIdempotencyKeyReused = errors.New("Idempotency-Key was already used for a different request")

// ErrBadIdempotencyKey is an Idempotency-Key header that is empty, too
// long, repeated or holds other than visible ASCII.
var ErrBadIdempotencyKey = errors.New("bad Idempotency-Key")

const (
	maxIdempotencyKey = 128
	// defaultIdempotencyWindow keeps about the last minute of writes at
	// the cluster's measured peak, in some 20 MiB.
	defaultIdempotencyWindow = 100000
	// maxIdempotencyWindow bounds the record's memory: at most some 2 GiB
	// of full-length keys.
	maxIdempotencyWindow = 10000000
)

// parseIdempotencyKey returns the request's Idempotency-Key, "" if none.
func parseIdempotencyKey(h http.Header) (string, error) {
	lines, ok := h["Idempotency-Key"]
	if !ok {
		return "", nil
	}
	if len(lines) != 1 {
		return "", fmt.Errorf("%w: give it once", ErrBadIdempotencyKey)
	}
	key := lines[0]
	if len(key) < 1 || len(key) > maxIdempotencyKey {
		return "", fmt.Errorf("%w: must be 1 to %d characters", ErrBadIdempotencyKey, maxIdempotencyKey)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return "", fmt.Errorf("%w: only visible ASCII characters, no spaces", ErrBadIdempotencyKey)
		}
	}
	return key, nil
}

// idempotent is what an entry carries for exactly-once: the key, the
// request's fingerprint and the proposer's window. A zero value is a
// request without a key.
type idempotent struct {
	key         string
	fingerprint uint64
	window      uint64
}

// fingerprint identifies a request by everything that decides its effect,
// so that a key reused for another request is told apart. It is computed
// by the proposer, so it must not depend on the process: FNV-1a over the
// length-prefixed parts.
func fingerprint(parts ...[]byte) uint64 {
	h := fnv.New64a()
	var n [binary.MaxVarintLen64]byte
	for _, p := range parts {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(p)))])
		h.Write(p)
	}
	return h.Sum64()
}

// dedupRecord is one remembered outcome.
type dedupRecord struct {
	key         string
	fingerprint uint64
	result      outcome // with err one of resultErrors, replayed false
}

// dedup is the replicated record of recent idempotency keys, oldest first.
type dedup struct {
	byKey map[string]*dedupRecord
	order []*dedupRecord // order[head:] are live, oldest first
	head  int
}

// newDedup is an empty record, as a new cluster starts with.
func newDedup() *dedup { return &dedup{byKey: make(map[string]*dedupRecord)} }

// lookup returns the record for key, if it is remembered.
func (d *dedup) lookup(key string) (*dedupRecord, bool) {
	r, ok := d.byKey[key]
	return r, ok
}

// record remembers a key's outcome, then evicts the oldest records beyond
// window.
func (d *dedup) record(id idempotent, result outcome) {
	r := &dedupRecord{key: id.key, fingerprint: id.fingerprint, result: result}
	d.byKey[id.key] = r
	d.order = append(d.order, r)
	for uint64(len(d.order)-d.head) > max(id.window, 1) {
		delete(d.byKey, d.order[d.head].key)
		d.order[d.head] = nil
		d.head++
	}
	if d.head > len(d.order)/2 {
		d.order = append(d.order[:0], d.order[d.head:]...)
		d.head = 0
	}
}

// records returns the live records, oldest first.
func (d *dedup) records() []*dedupRecord { return d.order[d.head:] }

// resultErrors are the outcomes a record can hold, by their code in the
// snapshot: the position in this list. Code 0 is success.
var resultErrors = []error{nil, ErrKeyNotFound, ErrPreconditionFailed, ErrMemberExists, ErrMemberNotFound, ErrCorruptEntry}

// resultCode is err's code in resultErrors.
func resultCode(err error) uint64 {
	for i, e := range resultErrors[1:] {
		if errors.Is(err, e) {
			return uint64(i + 1)
		}
	}
	return 0
}
