package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"

	"go.etcd.io/etcd/client/pkg/v3/types"
)

// Backups: GET /snapshot, and the file it answers.
//
// The answer is a copy of all replicated state at one applied index: the
// keys with their versions, the member table, the removed ids and the
// idempotency records, exactly what a raft snapshot holds. Taking it holds
// the kvstore's lock only for copies that cost next to nothing: the key
// space is a copy-on-write B-tree, so Copy is O(1) and later writes copy
// the nodes they touch; the rest is small. Encoding and sending happen
// after the lock is released, while writes go on.
//
// The file is the snapshot's bytes as encodeSnapshot writes them, between a
// fixed header and a checksum, so that `raftkv restore` (restore.go) can
// tell a whole, intact file from a truncated or damaged one before it
// writes anything, and knows the index to restart raft at:
//
//	magic "RAFTKVSN" (8 bytes) | format version (2 bytes) |
//	raft index | term | cluster ID | member id | snapshot length (8 bytes each) |
//	snapshot (encodeSnapshot's bytes) | SHA-256 of everything before it (32 bytes)
//
// Numbers are big-endian. The term is that of the entry at the index (0 if
// unknown); the member id is the member that took the copy.

const (
	backupMagic       = "RAFTKVSN"
	backupFormat      = 1
	backupHeaderSize  = len(backupMagic) + 2 + 5*8
	backupTrailerSize = sha256.Size
)

// ErrBadBackup is a snapshot file that restore cannot use: not one, from a
// newer format, truncated, or damaged.
var ErrBadBackup = errors.New("bad snapshot file")

// backupHeader is what a snapshot file says about the copy it holds.
type backupHeader struct {
	index     uint64 // the applied index the copy reflects
	term      uint64 // the term of the entry at index; 0 if not known
	clusterID uint64 // the cluster it was taken from
	memberID  uint64 // the member that took it
}

// backupSize is the size of the file holding dataLen bytes of snapshot.
func backupSize(dataLen int) int64 {
	return int64(backupHeaderSize) + int64(dataLen) + backupTrailerSize
}

// writeBackup writes the file for data, a snapshot encodeSnapshot made, to w.
func writeBackup(w io.Writer, hd backupHeader, data []byte) error {
	header := make([]byte, 0, backupHeaderSize)
	header = append(header, backupMagic...)
	header = binary.BigEndian.AppendUint16(header, backupFormat)
	for _, n := range []uint64{hd.index, hd.term, hd.clusterID, hd.memberID, uint64(len(data))} {
		header = binary.BigEndian.AppendUint64(header, n)
	}
	sum := sha256.New()
	out := io.MultiWriter(w, sum)
	if _, err := out.Write(header); err != nil {
		return fmt.Errorf("write snapshot header: %w", err)
	}
	if _, err := out.Write(data); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	if _, err := w.Write(sum.Sum(nil)); err != nil {
		return fmt.Errorf("write snapshot checksum: %w", err)
	}
	return nil
}

// parseBackup checks a whole snapshot file and returns its header and the
// snapshot it holds (a sub-slice of file). A file cut short anywhere is
// reported as truncated; any other damage as a checksum mismatch.
func parseBackup(file []byte) (backupHeader, []byte, error) {
	if len(file) < backupHeaderSize {
		if !bytes.HasPrefix(file, []byte(backupMagic)) && !bytes.HasPrefix([]byte(backupMagic), file) {
			return backupHeader{}, nil, fmt.Errorf("%w: not a raftkv snapshot file (it does not start with %q)", ErrBadBackup, backupMagic)
		}
		return backupHeader{}, nil, fmt.Errorf("%w: truncated: %d bytes, less than the %d-byte header", ErrBadBackup, len(file), backupHeaderSize)
	}
	if !bytes.HasPrefix(file, []byte(backupMagic)) {
		return backupHeader{}, nil, fmt.Errorf("%w: not a raftkv snapshot file (it does not start with %q)", ErrBadBackup, backupMagic)
	}
	b := file[len(backupMagic):]
	if format := binary.BigEndian.Uint16(b); format != backupFormat {
		return backupHeader{}, nil, fmt.Errorf("%w: format version %d; this raftkv reads version %d", ErrBadBackup, format, backupFormat)
	}
	b = b[2:]
	field := func() uint64 {
		n := binary.BigEndian.Uint64(b)
		b = b[8:]
		return n
	}
	hd := backupHeader{index: field(), term: field(), clusterID: field(), memberID: field()}
	dataLen := field()
	want := uint64(backupHeaderSize) + dataLen + backupTrailerSize
	intact := len(file) >= backupHeaderSize+backupTrailerSize && checksumHolds(file)
	switch {
	case intact && uint64(len(file)) == want:
	case !intact && (dataLen > uint64(len(file)) || uint64(len(file)) < want):
		return backupHeader{}, nil, fmt.Errorf("%w: truncated: %d bytes, and its header says %d", ErrBadBackup, len(file), want)
	default:
		return backupHeader{}, nil, fmt.Errorf("%w: corrupt: the SHA-256 checksum at its end does not match its contents", ErrBadBackup)
	}
	return hd, file[backupHeaderSize : backupHeaderSize+int(dataLen)], nil
}

// checksumHolds reports whether file's last 32 bytes are the SHA-256 of the
// rest.
func checksumHolds(file []byte) bool {
	body, trailer := file[:len(file)-backupTrailerSize], file[len(file)-backupTrailerSize:]
	sum := sha256.Sum256(body)
	return bytes.Equal(sum[:], trailer)
}

// replicatedState is everything the kvstore replicates, as a snapshot
// holds it: a copy that nothing else modifies, to encode while the kvstore
// goes on applying.
type replicatedState struct {
	members map[uint64]*member
	removed map[uint64]bool
	kv      *keySpace
	records []*dedupRecord
}

// encode is the state as a raft snapshot's data.
func (st replicatedState) encode() []byte {
	return encodeSnapshot(st.members, st.removed, st.kv, st.records)
}

// decodeState reads a whole snapshot, as loadSnapshot does.
func decodeState(data []byte) (replicatedState, error) {
	d, err := newSnapshotDecoder(data)
	if err != nil {
		return replicatedState{}, err
	}
	var st replicatedState
	if st.members, st.removed, err = d.decodeMembers(); err != nil {
		return replicatedState{}, err
	}
	if st.kv, err = d.decodeKeys(); err != nil {
		return replicatedState{}, err
	}
	records, err := d.decodeRecords()
	if err != nil {
		return replicatedState{}, err
	}
	st.records = records.records()
	return st, nil
}

// pointInTime returns a copy of the applied state, with the index and term
// of the last entry it reflects. It holds the write lock, for a moment:
// Copy marks the tree so that the next write to it copies the nodes it
// changes instead, and two Copies must not race. Members are copied whole,
// since an advertise entry changes a member in place; idempotency records
// never change once made, but the list of them is compacted in place.
func (s *kvstore) pointInTime() (st replicatedState, index, term uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st.members = make(map[uint64]*member, len(s.members))
	for id, m := range s.members {
		c := *m
		c.PeerURLs, c.ClientURLs = slices.Clone(m.PeerURLs), slices.Clone(m.ClientURLs)
		st.members[id] = &c
	}
	st.removed = maps.Clone(s.removed)
	st.kv = s.kv.Copy()
	st.records = slices.Clone(s.dedup.records())
	return st, s.appliedIndex.Load(), s.appliedTerm
}

// snapshotRoute is the handler of GET /snapshot. One copy is encoded at a
// time on a member: each holds the whole state in memory once more until
// it is sent.
func (h *httpAPI) snapshotRoute() http.HandlerFunc {
	slot := make(chan struct{}, 1)
	return func(w http.ResponseWriter, r *http.Request) { h.getSnapshot(w, r, slot) }
}

// getSnapshot handles GET /snapshot?level=consistent|stale: the replicated
// state at this member's applied index, as a snapshot file, with the index
// in X-Raft-Index. At level consistent (the default) the copy is taken
// after one ReadIndex round, so it holds every write acknowledged before
// the request began, on any member; at stale it is whatever this member
// has applied, which needs no leader: how to save the data of a member
// whose cluster has lost its quorum.
func (h *httpAPI) getSnapshot(w http.ResponseWriter, r *http.Request, slot chan struct{}) {
	level := levelConsistent
	if s, ok := queryValue(r.URL.RawQuery, "level"); ok {
		if s != levelConsistent && s != levelStale {
			http.Error(w, fmt.Sprintf("unknown level %q: a snapshot is taken at level consistent (the default) or stale", s), http.StatusBadRequest)
			return
		}
		level = s
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	select {
	case slot <- struct{}{}:
		cancel()
		defer func() { <-slot }()
	case <-ctx.Done():
		cancel()
		w.Header().Set("Retry-After", "1")
		h.serverError(w, "another snapshot is being sent from this member", http.StatusServiceUnavailable)
		return
	}
	if !h.awaitLevel(w, r, level) {
		return
	}
	st, index, term := h.store.pointInTime()
	data := st.encode()
	hd := backupHeader{index: index, term: term, clusterID: h.raft.clusterID, memberID: h.id}
	setRaftIndex(w, index)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(backupSize(len(data)), 10))
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="raftkv-%s-%d.snap"`, types.ID(hd.clusterID), index))
	// An error here is the client gone: nothing is left to tell it.
	writeBackup(w, hd, data)
	releaseMemoryAfter(len(data))
}
