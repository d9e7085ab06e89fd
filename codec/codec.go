// Package codec is the format of what raft carries for raftkv: the log
// entries that carry client commands (this file), and the snapshot that
// holds all replicated state (snapshot.go). Every member decodes the same
// bytes, on every start as well, so the format only ever grows: an entry
// or a snapshot written by an older raftkv still decodes.
//
// The seams: a handler's write becomes a command with EncodeWrite, the
// raft node's proposal goroutine batches commands into one entry with
// EncodeBatch, and the kvstore applying an entry reads them back with
// ForEachCommand and DecodeCommand. The kvstore encodes its state
// (State.Encode) for the raft node's snapshots and for backups, and loads
// one with DecodeState; the raft node learns its peers from a snapshot
// with DecodeMembers; recovery reads and writes the state of a backup.
package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"raftkv/lease"

	"raftkv/idempotency"
	"raftkv/keyspace"
)

// The log entry format.
//
// A normal raft entry carries a client command, or a batch of them (below);
// an empty one is a new leader's first entry of its term. It is written to the
// WAL, sent to every follower and decoded by every member, so the encoding is
// a flat binary layout rather than gob or JSON: building an entry is one
// allocation, decoding a plain put or delete allocates nothing (key and
// value are sub-slices of the entry), there are no type descriptors to
// repeat (gob sends them per encoder) and values stay raw bytes (JSON would
// base64 them).
//
//	op (1 byte) | request id (uvarint) | op-specific fields
//
//	OpPut:        key length (uvarint) | key | value (the rest)
//	OpDelete:     key (the rest)
//	OpAdvertise:  member id (uvarint) | client URL (the rest)
//	OpPutWith:    options | key length (uvarint) | key | value (the rest)
//	OpDeleteWith: options | key (the rest)
//	OpGrant:      TTL in seconds (uvarint) | idempotency key, fingerprint and window, if keyed (as in options)
//	OpRevoke:     lease id (uvarint) | reason (1 byte: 1 revoked, 2 expired)
//	OpWindow:     origin member id (uvarint) | origin nonce (uvarint) | count (uvarint) | lease ids (uvarint each)
//
// OpPutWith and OpDeleteWith are a put and a delete that carry options: a
// condition (If-Match, If-None-Match), an idempotency key, a lease to
// attach the key to (a put only), evaluated when the entry applies:
//
//	options: flags (1 byte) | If-Match tags, if listed | If-None-Match tags, if listed |
//	         idempotency key (length-prefixed) | fingerprint (8 bytes) | window (uvarint), if keyed |
//	         lease id (uvarint), if leased
//	tags:    count (uvarint) | per tag: modIndex<<1 | weak (uvarint)
//
// The request id names the handler waiting for the
// entry; it is unique across the cluster, so any member can apply the entry
// and only the member holding that waiter wakes someone.
//
// An entry may also carry a batch of the commands above, which a member
// proposes together when many arrive at once: one entry to log, fsync,
// replicate and commit instead of many.
//
//	OpBatch:      count (uvarint) | per command: length (uvarint) | command

// Op says what a command does to the state machine.
type Op byte

const (
	OpPut        Op = 1 // set key to value
	OpDelete     Op = 2 // remove key
	OpAdvertise  Op = 3 // record a member's client URL, so followers can redirect to the leader
	OpBatch      Op = 4 // several of the commands above, applied in order
	OpPutWith    Op = 5 // OpPut with options: a condition, an idempotency key
	OpDeleteWith Op = 6 // OpDelete with options
	OpGrant      Op = 7 // grant a lease, whose id is the entry's index (package lease)
	OpRevoke     Op = 8 // revoke or expire a lease, deleting its keys
	OpWindow     Op = 9 // a window in which a leader may answer leases' keepalives
)

// Why an OpRevoke deletes a lease, in its reason byte.
const (
	ReasonRevoked = 1 // DELETE /leases/{id}
	ReasonExpired = 2 // the leader found it expired
)

// The flags of the options.
const (
	optIfMatch        = 1 << iota // If-Match given
	optIfMatchAny                 // If-Match: *
	optIfNoneMatch                // If-None-Match given
	optIfNoneMatchAny             // If-None-Match: *
	optIdempotencyKey             // an idempotency key follows the tags
	optLease                      // a lease id follows
)

// ErrCorrupt reports a log entry or a snapshot that cannot be decoded.
var ErrCorrupt = errors.New("corrupt entry")

// Command is one decoded client command: a whole entry, or one of an
// OpBatch entry's.
type Command struct {
	Op        Op
	RequestID uint64
	Key       []byte             // OpPut, OpDelete, OpPutWith, OpDeleteWith
	Value     []byte             // OpPut, OpPutWith
	MemberID  uint64             // OpAdvertise
	ClientURL string             // OpAdvertise
	Cond      keyspace.Condition // OpPutWith, OpDeleteWith
	Idem      idempotency.Key    // OpPutWith, OpDeleteWith, OpGrant
	TTL       uint64             // OpGrant: seconds
	Lease     uint64             // OpPutWith: the lease to attach the key to (0: none); OpRevoke: the lease
	Reason    byte               // OpRevoke: ReasonRevoked or ReasonExpired
	Origin    [2]uint64          // OpWindow: the proposing member and its process's nonce
	Leases    []uint64           // OpWindow
}

// EncodeWrite returns the command for a PUT (put true) or a DELETE of key:
// OpPut or OpDelete, or OpPutWith or OpDeleteWith when it carries a
// condition, an idempotency key or a lease (non-zero; a PUT only).
func EncodeWrite(requestID uint64, put bool, key string, value []byte, cond keyspace.Condition, idem idempotency.Key, lease uint64) []byte {
	if !cond.Given() && idem.Name == "" && lease == 0 {
		if put {
			return encodePut(requestID, key, value)
		}
		return encodeDelete(requestID, key)
	}
	b := make([]byte, 0, 2+4*binary.MaxVarintLen64+len(idem.Name)+len(key)+len(value))
	if put {
		b = append(b, byte(OpPutWith))
	} else {
		b = append(b, byte(OpDeleteWith))
	}
	b = binary.AppendUvarint(b, requestID)
	b = appendOptions(b, cond, idem, lease)
	if put {
		b = appendString(b, key)
		return append(b, value...)
	}
	return append(b, key...)
}

// encodePut returns the entry that sets key to value.
func encodePut(requestID uint64, key string, value []byte) []byte {
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(key)+len(value))
	b = append(b, byte(OpPut))
	b = binary.AppendUvarint(b, requestID)
	b = appendString(b, key)
	return append(b, value...)
}

// encodeDelete returns the entry that removes key.
func encodeDelete(requestID uint64, key string) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(key))
	b = append(b, byte(OpDelete))
	b = binary.AppendUvarint(b, requestID)
	return append(b, key...)
}

// EncodeAdvertise returns the entry that records memberID's client URL.
func EncodeAdvertise(requestID, memberID uint64, clientURL string) []byte {
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(clientURL))
	b = append(b, byte(OpAdvertise))
	b = binary.AppendUvarint(b, requestID)
	b = binary.AppendUvarint(b, memberID)
	return append(b, clientURL...)
}

// EncodeGrant returns the entry that grants a lease of ttl seconds,
// carrying idem if it has a name.
func EncodeGrant(requestID, ttl uint64, idem idempotency.Key) []byte {
	b := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(idem.Name)+8)
	b = append(b, byte(OpGrant))
	b = binary.AppendUvarint(b, requestID)
	b = binary.AppendUvarint(b, ttl)
	if idem.Name != "" {
		b = appendString(b, idem.Name)
		b = binary.BigEndian.AppendUint64(b, idem.Fingerprint)
		b = binary.AppendUvarint(b, idem.Window)
	}
	return b
}

// EncodeRevoke returns the entry that deletes lease id and its keys, for
// reason (ReasonRevoked or ReasonExpired).
func EncodeRevoke(requestID, id uint64, reason byte) []byte {
	b := make([]byte, 0, 2+2*binary.MaxVarintLen64)
	b = append(b, byte(OpRevoke))
	b = binary.AppendUvarint(b, requestID)
	b = binary.AppendUvarint(b, id)
	return append(b, reason)
}

// EncodeWindow returns the entry that opens a window for the leases ids,
// proposed by member's process nonce.
func EncodeWindow(requestID, member, nonce uint64, ids []uint64) []byte {
	b := make([]byte, 0, 1+(4+len(ids))*binary.MaxVarintLen64)
	b = append(b, byte(OpWindow))
	b = binary.AppendUvarint(b, requestID)
	b = binary.AppendUvarint(b, member)
	b = binary.AppendUvarint(b, nonce)
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		b = binary.AppendUvarint(b, id)
	}
	return b
}

// EncodeLease returns the command for a lease command (package lease
// makes it), and the key it counts as writing: a grant's lease id is its
// entry's index, so one entry carries one grant at most, as it carries one
// write of a key (raftNode.serveProposals).
func EncodeLease(requestID uint64, cmd lease.Command) (data []byte, key string) {
	switch cmd.Kind {
	case lease.Grant:
		return EncodeGrant(requestID, uint64(cmd.TTL/time.Second), cmd.Idem), "\x00grant"
	case lease.Revoke:
		reason := byte(ReasonRevoked)
		if cmd.Expired {
			reason = ReasonExpired
		}
		return EncodeRevoke(requestID, cmd.ID, reason), ""
	default:
		return EncodeWindow(requestID, cmd.Origin.Member, cmd.Origin.Nonce, cmd.IDs), ""
	}
}

// appendOptions appends a write's condition, idempotency key and lease.
func appendOptions(b []byte, cond keyspace.Condition, idem idempotency.Key, lease uint64) []byte {
	var flags byte
	if cond.IfMatch.Given() {
		flags |= optIfMatch
		if cond.IfMatch.Any {
			flags |= optIfMatchAny
		}
	}
	if cond.IfNoneMatch.Given() {
		flags |= optIfNoneMatch
		if cond.IfNoneMatch.Any {
			flags |= optIfNoneMatchAny
		}
	}
	if idem.Name != "" {
		flags |= optIdempotencyKey
	}
	if lease != 0 {
		flags |= optLease
	}
	b = append(b, flags)
	for _, l := range []*keyspace.TagList{cond.IfMatch, cond.IfNoneMatch} {
		if l.Given() && !l.Any {
			b = binary.AppendUvarint(b, uint64(len(l.Indexes)))
			for i, index := range l.Indexes {
				tag := index << 1
				if l.Weak[i] {
					tag |= 1
				}
				b = binary.AppendUvarint(b, tag)
			}
		}
	}
	if idem.Name != "" {
		b = appendString(b, idem.Name)
		b = binary.BigEndian.AppendUint64(b, idem.Fingerprint)
		b = binary.AppendUvarint(b, idem.Window)
	}
	if lease != 0 {
		b = binary.AppendUvarint(b, lease)
	}
	return b
}

// options reads what appendOptions wrote.
func (d *decoder) options() (cond keyspace.Condition, idem idempotency.Key, lease uint64) {
	if len(d.buf) == 0 {
		d.fail("missing options")
		return cond, idem, 0
	}
	flags := d.buf[0]
	d.buf = d.buf[1:]
	if flags&^(optIfMatch|optIfMatchAny|optIfNoneMatch|optIfNoneMatchAny|optIdempotencyKey|optLease) != 0 {
		d.fail("unknown option flags %#x", flags)
		return cond, idem, 0
	}
	tags := func(given, any byte) *keyspace.TagList {
		if flags&given == 0 {
			if flags&any != 0 {
				d.fail("option flags %#x: * without the header", flags)
			}
			return nil
		}
		if flags&any != 0 {
			return &keyspace.TagList{Any: true}
		}
		l := &keyspace.TagList{}
		for n := d.count(); n > 0 && d.err == nil; n-- {
			tag := d.uvarint()
			l.Indexes = append(l.Indexes, tag>>1)
			l.Weak = append(l.Weak, tag&1 == 1)
		}
		return l
	}
	cond.IfMatch = tags(optIfMatch, optIfMatchAny)
	cond.IfNoneMatch = tags(optIfNoneMatch, optIfNoneMatchAny)
	if flags&optIdempotencyKey != 0 {
		idem.Name = string(d.bytes())
		if len(d.buf) < 8 {
			d.fail("truncated fingerprint")
			return cond, idem, 0
		}
		idem.Fingerprint = binary.BigEndian.Uint64(d.buf)
		d.buf = d.buf[8:]
		idem.Window = d.uvarint()
		if d.err == nil && idem.Name == "" {
			d.fail("empty idempotency key")
		}
	}
	if flags&optLease != 0 {
		if lease = d.uvarint(); d.err == nil && lease == 0 {
			d.fail("lease 0")
		}
	}
	return cond, idem, lease
}

// EncodeBatch returns one entry carrying commands, each made by one of the
// encode functions above.
func EncodeBatch(commands [][]byte) []byte {
	size := 1 + binary.MaxVarintLen64
	for _, c := range commands {
		size += binary.MaxVarintLen64 + len(c)
	}
	b := make([]byte, 0, size)
	b = append(b, byte(OpBatch))
	b = binary.AppendUvarint(b, uint64(len(commands)))
	for _, c := range commands {
		b = binary.AppendUvarint(b, uint64(len(c)))
		b = append(b, c...)
	}
	return b
}

// ForEachCommand calls fn with each command an entry carries: the entry
// itself, or each command of a batch, in order. It stops at a corrupt
// batch, and says so.
func ForEachCommand(data []byte, fn func([]byte)) error {
	if len(data) == 0 || Op(data[0]) != OpBatch {
		fn(data)
		return nil
	}
	d := decoder{buf: data[1:]}
	for n := d.count(); n > 0 && d.err == nil; n-- {
		if c := d.bytes(); d.err == nil {
			fn(c)
		}
	}
	if d.err == nil && len(d.buf) > 0 {
		d.fail("%d bytes after the batch", len(d.buf))
	}
	return d.err
}

// DecodeCommand parses a command made by one of the encode functions. The
// returned key and value alias data.
func DecodeCommand(data []byte) (Command, error) {
	if len(data) == 0 {
		return Command{}, fmt.Errorf("%w: empty", ErrCorrupt)
	}
	d := decoder{buf: data[1:]}
	c := Command{Op: Op(data[0]), RequestID: d.uvarint()}
	switch c.Op {
	case OpPut:
		c.Key = d.bytes()
		c.Value = d.rest()
	case OpDelete:
		c.Key = d.rest()
	case OpAdvertise:
		c.MemberID = d.uvarint()
		c.ClientURL = string(d.rest())
	case OpPutWith:
		c.Cond, c.Idem, c.Lease = d.options()
		c.Key = d.bytes()
		c.Value = d.rest()
	case OpDeleteWith:
		c.Cond, c.Idem, c.Lease = d.options()
		c.Key = d.rest()
		if d.err == nil && c.Lease != 0 {
			d.fail("a delete with a lease")
		}
	case OpGrant:
		c.TTL = d.uvarint()
		if d.err == nil && len(d.buf) > 0 {
			c.Idem.Name = string(d.bytes())
			if len(d.buf) < 8 {
				d.fail("truncated fingerprint")
				return c, d.err
			}
			c.Idem.Fingerprint = binary.BigEndian.Uint64(d.buf)
			d.buf = d.buf[8:]
			c.Idem.Window = d.uvarint()
			if d.err == nil && (c.Idem.Name == "" || len(d.buf) > 0) {
				d.fail("bad idempotency key")
			}
		}
	case OpRevoke:
		c.Lease = d.uvarint()
		if rest := d.rest(); d.err == nil && (len(rest) != 1 || (rest[0] != ReasonRevoked && rest[0] != ReasonExpired)) {
			d.fail("bad revoke reason")
		} else if d.err == nil {
			c.Reason = rest[0]
		}
	case OpWindow:
		c.Origin[0], c.Origin[1] = d.uvarint(), d.uvarint()
		for n := d.count(); n > 0 && d.err == nil; n-- {
			c.Leases = append(c.Leases, d.uvarint())
		}
		if d.err == nil && len(d.buf) > 0 {
			d.fail("%d bytes after the window", len(d.buf))
		}
	default:
		return Command{}, fmt.Errorf("%w: unknown op %d", ErrCorrupt, c.Op)
	}
	return c, d.err
}
