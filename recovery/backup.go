// Package recovery is getting a cluster's data back: backups (GET
// /snapshot and the file it answers), `raftkv restore`, which turns such a
// file into the data dirs of a new cluster, and --force-new-cluster, which
// restarts one survivor alone when a majority is lost for good. The client
// API serves Backups; main runs Restore for `raftkv restore`; the raft node
// calls ForceNewCluster on the log it read, before raft starts.
package recovery

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"

	"raftkv/api"
	"raftkv/codec"
)

// The answer to GET /snapshot is a copy of all replicated state at one
// applied index: the keys with their versions, the member table, the
// removed ids and the idempotency records, exactly what a raft snapshot
// holds. Taking it holds the kvstore's lock only for copies that cost next
// to nothing: the key space is a copy-on-write B-tree, so Copy is O(1) and
// later writes copy the nodes they touch; the rest is small. Encoding and
// sending happen after the lock is released, while writes go on.
//
// The file is the snapshot's bytes as codec.State.Encode writes them,
// between a fixed header and a checksum, so that `raftkv restore`
// (Restore) can tell a whole, intact file from a truncated or damaged one
// before it writes anything, and knows the index to restart raft at:
//
//	magic "RAFTKVSN" (8 bytes) | format version (2 bytes) |
//	raft index | term | cluster ID | member id | snapshot length (8 bytes each) |
//	snapshot (codec.State.Encode's bytes) | SHA-256 of everything before it (32 bytes)
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

// writeBackup writes the file for data, a snapshot codec.State.Encode made, to w.
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

// Source is what a backup is taken from: the running member.
type Source interface {
	// WaitLinearizable returns once this member's applied state is as new
	// as the cluster's was when it was called.
	WaitLinearizable(ctx context.Context) error
	// PointInTime is a copy of the applied state, with the index and term
	// of the last entry it reflects.
	PointInTime() (st codec.State, index, term uint64)
}

// Backups serves GET /snapshot. One copy is encoded at a time on a member:
// each holds the whole state in memory once more until it is sent.
type Backups struct {
	src                 Source
	clusterID, memberID uint64
	requestTimeout      time.Duration
	errs                api.Errors
	slot                chan struct{} // holds a token while a copy is sent
}

// NewBackups serves backups of member memberID of cluster clusterID,
// taken from src.
func NewBackups(src Source, clusterID, memberID uint64, requestTimeout time.Duration, errs api.Errors) *Backups {
	return &Backups{src: src, clusterID: clusterID, memberID: memberID, requestTimeout: requestTimeout, errs: errs, slot: make(chan struct{}, 1)}
}

// ServeHTTP handles GET /snapshot?level=consistent|stale: the replicated
// state at this member's applied index, as a snapshot file, with the index
// in X-Raft-Index. At level consistent (the default) the copy is taken
// after one ReadIndex round, so it holds every write acknowledged before
// the request began, on any member; at stale it is whatever this member
// has applied, which needs no leader: how to save the data of a member
// whose cluster has lost its quorum.
func (b *Backups) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	level := "consistent"
	if s, ok := api.QueryValue(r.URL.RawQuery, "level"); ok {
		if s != "consistent" && s != "stale" {
			http.Error(w, fmt.Sprintf("unknown level %q: a snapshot is taken at level consistent (the default) or stale", s), http.StatusBadRequest)
			return
		}
		level = s
	}
	ctx, cancel := context.WithTimeout(r.Context(), b.requestTimeout)
	defer cancel()
	select {
	case b.slot <- struct{}{}:
		defer func() { <-b.slot }()
	case <-ctx.Done():
		w.Header().Set("Retry-After", "1")
		b.errs.ServerError(w, "another snapshot is being sent from this member", http.StatusServiceUnavailable)
		return
	}
	if level == "consistent" {
		if err := b.src.WaitLinearizable(ctx); err != nil {
			b.errs.Write(w, err)
			return
		}
	}
	st, index, term := b.src.PointInTime()
	data := st.Encode()
	hd := backupHeader{index: index, term: term, clusterID: b.clusterID, memberID: b.memberID}
	api.SetRaftIndex(w, index)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(backupSize(len(data)), 10))
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="raftkv-%s-%d.snap"`, types.ID(hd.clusterID), index))
	// An error here is the client gone: nothing is left to tell it.
	writeBackup(w, hd, data)
	codec.ReleaseMemoryAfter(len(data))
}
