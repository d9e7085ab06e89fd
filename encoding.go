package main

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The log entry format.
//
// A normal raft entry carries a client command, or a batch of them (below);
// an empty one is a new leader's first entry of its term. It is written to the
// WAL, sent to every follower and decoded by every member, so the encoding is
// a flat binary layout rather than gob or JSON: building an entry is one
// allocation, decoding one allocates nothing (key and value are sub-slices
// of the entry), there are no type descriptors to repeat (gob sends them per
// encoder) and values stay raw bytes (JSON would base64 them).
//
//	op (1 byte) | request id (uvarint) | op-specific fields
//
//	opPut:       key length (uvarint) | key | value (the rest)
//	opDelete:    key (the rest)
//	opAdvertise: member id (uvarint) | client URL (the rest)
//	opPutIf:     condition | key length (uvarint) | key | value (the rest)
//	opDeleteIf:  condition | key (the rest)
//
// opPutIf and opDeleteIf are writes with a precondition or an idempotency
// key (versions.go, idempotency.go), evaluated when the entry applies:
//
//	condition: flags (1 byte) | If-Match tags, if listed | If-None-Match tags, if listed |
//	           idempotency key (length-prefixed) | fingerprint (8 bytes) | window (uvarint), if keyed
//	tags:      count (uvarint) | per tag: modIndex<<1 | weak (uvarint)
//
// The request id is the wait-registry key of the handler waiting for the
// entry; it is unique across the cluster, so any member can apply the entry
// and only the member holding that waiter wakes someone.
//
// An entry may also carry a batch of the commands above, which a member
// proposes together when many arrive at once: one entry to log, fsync,
// replicate and commit instead of many.
//
//	opBatch:     count (uvarint) | per command: length (uvarint) | command

// op says what a command does to the state machine.
type op byte

const (
	opPut       op = 1 // set key to value
	opDelete    op = 2 // remove key
	opAdvertise op = 3 // record a member's client URL, so followers can redirect to the leader
	opBatch     op = 4 // several of the commands above, applied in order
	opPutIf     op = 5 // opPut with a precondition or an idempotency key
	opDeleteIf  op = 6 // opDelete with a precondition or an idempotency key
)

// The flags of a condition.
const (
	condIfMatch        = 1 << iota // If-Match given
	condIfMatchAny                 // If-Match: *
	condIfNoneMatch                // If-None-Match given
	condIfNoneMatchAny             // If-None-Match: *
	condIdempotencyKey             // an idempotency key follows the tags
)

// ErrCorruptEntry reports a log entry or snapshot that cannot be decoded.
var ErrCorruptEntry = errors.New("corrupt entry")

// command is one decoded client command: a whole entry, or one of an
// opBatch entry's.
type command struct {
	op        op
	requestID uint64
	key       []byte       // opPut, opDelete, opPutIf, opDeleteIf
	value     []byte       // opPut, opPutIf
	memberID  uint64       // opAdvertise
	clientURL string       // opAdvertise
	cond      precondition // opPutIf, opDeleteIf
	idem      idempotent   // opPutIf, opDeleteIf
}

// encodePut returns the entry that sets key to value.
func encodePut(requestID uint64, key string, value []byte) []byte {
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(key)+len(value))
	b = append(b, byte(opPut))
	b = binary.AppendUvarint(b, requestID)
	b = appendString(b, key)
	return append(b, value...)
}

// encodeDelete returns the entry that removes key.
func encodeDelete(requestID uint64, key string) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(key))
	b = append(b, byte(opDelete))
	b = binary.AppendUvarint(b, requestID)
	return append(b, key...)
}

// encodeAdvertise returns the entry that records memberID's client URL.
func encodeAdvertise(requestID, memberID uint64, clientURL string) []byte {
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(clientURL))
	b = append(b, byte(opAdvertise))
	b = binary.AppendUvarint(b, requestID)
	b = binary.AppendUvarint(b, memberID)
	return append(b, clientURL...)
}

// encodeWrite returns the entry for a PUT (put true) or a DELETE of key:
// opPut or opDelete, or opPutIf or opDeleteIf when it carries a condition
// or an idempotency key.
func encodeWrite(requestID uint64, put bool, key string, value []byte, cond precondition, idem idempotent) []byte {
	if !cond.given() && idem.key == "" {
		if put {
			return encodePut(requestID, key, value)
		}
		return encodeDelete(requestID, key)
	}
	b := make([]byte, 0, 2+4*binary.MaxVarintLen64+len(idem.key)+len(key)+len(value))
	if put {
		b = append(b, byte(opPutIf))
	} else {
		b = append(b, byte(opDeleteIf))
	}
	b = binary.AppendUvarint(b, requestID)
	b = appendCondition(b, cond, idem)
	if put {
		b = appendString(b, key)
		return append(b, value...)
	}
	return append(b, key...)
}

// appendCondition appends a condition's flags, tags and idempotency key.
func appendCondition(b []byte, cond precondition, idem idempotent) []byte {
	var flags byte
	if cond.ifMatch.given() {
		flags |= condIfMatch
		if cond.ifMatch.any {
			flags |= condIfMatchAny
		}
	}
	if cond.ifNoneMatch.given() {
		flags |= condIfNoneMatch
		if cond.ifNoneMatch.any {
			flags |= condIfNoneMatchAny
		}
	}
	if idem.key != "" {
		flags |= condIdempotencyKey
	}
	b = append(b, flags)
	for _, l := range []*tagList{cond.ifMatch, cond.ifNoneMatch} {
		if l.given() && !l.any {
			b = binary.AppendUvarint(b, uint64(len(l.indexes)))
			for i, index := range l.indexes {
				tag := index << 1
				if l.weak[i] {
					tag |= 1
				}
				b = binary.AppendUvarint(b, tag)
			}
		}
	}
	if idem.key != "" {
		b = appendString(b, idem.key)
		b = binary.BigEndian.AppendUint64(b, idem.fingerprint)
		b = binary.AppendUvarint(b, idem.window)
	}
	return b
}

// condition reads what appendCondition wrote.
func (d *decoder) condition() (precondition, idempotent) {
	var cond precondition
	var idem idempotent
	if len(d.buf) == 0 {
		d.fail("missing condition")
		return cond, idem
	}
	flags := d.buf[0]
	d.buf = d.buf[1:]
	if flags&^(condIfMatch|condIfMatchAny|condIfNoneMatch|condIfNoneMatchAny|condIdempotencyKey) != 0 {
		d.fail("unknown condition flags %#x", flags)
		return cond, idem
	}
	tags := func(given, any byte) *tagList {
		if flags&given == 0 {
			if flags&any != 0 {
				d.fail("condition flags %#x: * without the header", flags)
			}
			return nil
		}
		if flags&any != 0 {
			return &tagList{any: true}
		}
		l := &tagList{}
		for n := d.count(); n > 0 && d.err == nil; n-- {
			tag := d.uvarint()
			l.indexes = append(l.indexes, tag>>1)
			l.weak = append(l.weak, tag&1 == 1)
		}
		return l
	}
	cond.ifMatch = tags(condIfMatch, condIfMatchAny)
	cond.ifNoneMatch = tags(condIfNoneMatch, condIfNoneMatchAny)
	if flags&condIdempotencyKey != 0 {
		idem.key = string(d.bytes())
		if len(d.buf) < 8 {
			d.fail("truncated fingerprint")
			return cond, idem
		}
		idem.fingerprint = binary.BigEndian.Uint64(d.buf)
		d.buf = d.buf[8:]
		idem.window = d.uvarint()
		if d.err == nil && idem.key == "" {
			d.fail("empty idempotency key")
		}
	}
	return cond, idem
}

// encodeBatch returns one entry carrying commands, each made by one of the
// encode functions above.
func encodeBatch(commands [][]byte) []byte {
	size := 1 + binary.MaxVarintLen64
	for _, c := range commands {
		size += binary.MaxVarintLen64 + len(c)
	}
	b := make([]byte, 0, size)
	b = append(b, byte(opBatch))
	b = binary.AppendUvarint(b, uint64(len(commands)))
	for _, c := range commands {
		b = binary.AppendUvarint(b, uint64(len(c)))
		b = append(b, c...)
	}
	return b
}

// batchCommands calls fn with each command an entry carries: the entry
// itself, or each command of a batch, in order. It stops at the first
// error, which is fn's or a corrupt batch's.
func batchCommands(data []byte, fn func([]byte) error) error {
	if len(data) == 0 || op(data[0]) != opBatch {
		return fn(data)
	}
	d := decoder{buf: data[1:]}
	for n := d.count(); n > 0 && d.err == nil; n-- {
		if c := d.bytes(); d.err == nil {
			if err := fn(c); err != nil {
				return err
			}
		}
	}
	if d.err == nil && len(d.buf) > 0 {
		d.fail("%d bytes after the batch", len(d.buf))
	}
	return d.err
}

// decodeCommand parses an entry made by one of the encode functions. The
// returned key and value alias data.
func decodeCommand(data []byte) (command, error) {
	if len(data) == 0 {
		return command{}, fmt.Errorf("%w: empty", ErrCorruptEntry)
	}
	d := decoder{buf: data[1:]}
	c := command{op: op(data[0]), requestID: d.uvarint()}
	switch c.op {
	case opPut:
		c.key = d.bytes()
		c.value = d.rest()
	case opDelete:
		c.key = d.rest()
	case opAdvertise:
		c.memberID = d.uvarint()
		c.clientURL = string(d.rest())
	case opPutIf:
		c.cond, c.idem = d.condition()
		c.key = d.bytes()
		c.value = d.rest()
	case opDeleteIf:
		c.cond, c.idem = d.condition()
		c.key = d.rest()
	default:
		return command{}, fmt.Errorf("%w: unknown op %d", ErrCorruptEntry, c.op)
	}
	return c, d.err
}

// The snapshot format: all replicated state, members first so that the raft
// node can learn its peers without decoding every key.
//
//	version (1 byte)
//	member count (uvarint), then per member: id, peer URLs, client URLs, flags (1 byte)
//	removed id count (uvarint), then the ids
//	key count (uvarint), then per key: key, value, createIndex, modIndex
//	record count (uvarint), then per idempotency record, oldest first:
//	  key, fingerprint (8 bytes), result code, index, flags (1 byte), createIndex, modIndex
//
// Ids and indexes are uvarints; strings, URL lists and values are
// length-prefixed. Older versions still load, so that a member restarts
// from a snapshot written before an upgrade: version 2, written before
// learners existed, has no member flags (every member votes); version 1,
// written before versions existed, has no member flags, no indexes per key
// and no records, and its keys load at version 0.
const (
	snapshotVersion   = 3
	snapshotVersionV2 = 2
	snapshotVersionV1 = 1
)

// The flags of a member in a snapshot.
const (
	memberLearner = 1 << iota // a learner: replicated to, but not a voter
)

// The flags of a recorded result.
const (
	resultCreated    = 1 << iota // a PUT that created its key
	resultHasVersion             // the result carries the key's version
)

// encodeSnapshot serialises the state machine's state.
func encodeSnapshot(members map[uint64]*member, removed map[uint64]bool, kv *keySpace, records []*dedupRecord) []byte {
	size := 64
	kv.Scan(func(k string, v keyValue) bool {
		size += len(k) + len(v.value) + 4*binary.MaxVarintLen32
		return true
	})
	b := make([]byte, 0, size)
	b = append(b, snapshotVersion)
	b = binary.AppendUvarint(b, uint64(len(members)))
	for _, m := range members {
		b = binary.AppendUvarint(b, m.ID)
		b = appendStrings(b, m.PeerURLs)
		b = appendStrings(b, m.ClientURLs)
		var flags byte
		if m.IsLearner {
			flags |= memberLearner
		}
		b = append(b, flags)
	}
	b = binary.AppendUvarint(b, uint64(len(removed)))
	for id := range removed {
		b = binary.AppendUvarint(b, id)
	}
	b = binary.AppendUvarint(b, uint64(kv.Len()))
	kv.Scan(func(k string, v keyValue) bool { // in key order, so a snapshot loads in order
		b = appendString(b, k)
		b = appendString(b, v.value)
		b = binary.AppendUvarint(b, v.createIndex)
		b = binary.AppendUvarint(b, v.modIndex)
		return true
	})
	return appendRecords(b, records)
}

// appendRecords appends the idempotency records, oldest first: the last
// section of a snapshot since version 2.
func appendRecords(b []byte, records []*dedupRecord) []byte {
	b = binary.AppendUvarint(b, uint64(len(records)))
	for _, r := range records {
		b = appendString(b, r.key)
		b = binary.BigEndian.AppendUint64(b, r.fingerprint)
		b = binary.AppendUvarint(b, resultCode(r.result.err))
		b = binary.AppendUvarint(b, r.result.index)
		var flags byte
		if r.result.created {
			flags |= resultCreated
		}
		if r.result.hasVersion {
			flags |= resultHasVersion
		}
		b = append(b, flags)
		b = binary.AppendUvarint(b, r.result.version.createIndex)
		b = binary.AppendUvarint(b, r.result.version.modIndex)
	}
	return b
}

// snapshotDecoder reads a snapshot section by section, in order:
// decodeMembers, decodeKeys, decodeRecords.
type snapshotDecoder struct {
	decoder
	version byte
}

// newSnapshotDecoder checks the version byte.
func newSnapshotDecoder(data []byte) (*snapshotDecoder, error) {
	if len(data) == 0 || (data[0] != snapshotVersion && data[0] != snapshotVersionV2 && data[0] != snapshotVersionV1) {
		return nil, fmt.Errorf("%w: unknown snapshot version", ErrCorruptEntry)
	}
	return &snapshotDecoder{decoder: decoder{buf: data[1:]}, version: data[0]}, nil
}

// decodeMembers reads the member table and the removed ids.
func (d *snapshotDecoder) decodeMembers() (map[uint64]*member, map[uint64]bool, error) {
	members := make(map[uint64]*member)
	for n := d.count(); n > 0 && d.err == nil; n-- {
		m := &member{ID: d.uvarint()}
		m.PeerURLs = d.strings()
		m.ClientURLs = d.strings()
		if d.version == snapshotVersion {
			m.IsLearner = d.memberFlags()&memberLearner != 0
		}
		members[m.ID] = m
	}
	removed := make(map[uint64]bool)
	for n := d.count(); n > 0 && d.err == nil; n-- {
		removed[d.uvarint()] = true
	}
	return members, removed, d.err
}

// memberFlags reads a member's flags byte, refusing flags it does not know.
func (d *snapshotDecoder) memberFlags() byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) < 1 {
		d.fail("truncated member")
		return 0
	}
	flags := d.buf[0]
	d.buf = d.buf[1:]
	if flags&^memberLearner != 0 {
		d.fail("unknown member flags %#x", flags)
	}
	return flags
}

// decodeKeys reads the keys, values and versions. Values are copied out of
// the snapshot (as strings) so that the snapshot's memory can be released.
// A snapshot lists its keys in order (version 1's came in any order), so
// Load appends them to the tree.
func (d *snapshotDecoder) decodeKeys() (*keySpace, error) {
	kv := newKeySpace()
	prev := ""
	for i, n := 0, d.count(); i < n && d.err == nil; i++ {
		k := string(d.bytes())
		v := keyValue{value: string(d.bytes())}
		if d.version == snapshotVersionV1 {
			kv.Set(k, v)
			continue
		}
		v.createIndex = d.uvarint()
		v.modIndex = d.uvarint()
		if i > 0 && k <= prev && d.err == nil {
			d.fail("key %.60q out of order", k)
		}
		kv.Load(k, v)
		prev = k
	}
	return kv, d.err
}

// decodeRecords reads the idempotency records, oldest first, and checks
// that nothing follows them.
func (d *snapshotDecoder) decodeRecords() (*dedup, error) {
	records := newDedup()
	if d.version != snapshotVersionV1 {
		for n := d.count(); n > 0 && d.err == nil; n-- {
			r := &dedupRecord{key: string(d.bytes())}
			if len(d.buf) < 8 {
				d.fail("truncated fingerprint")
				break
			}
			r.fingerprint = binary.BigEndian.Uint64(d.buf)
			d.buf = d.buf[8:]
			code := d.uvarint()
			if code >= uint64(len(resultErrors)) {
				d.fail("unknown result code %d", code)
				break
			}
			r.result.err = resultErrors[code]
			r.result.index = d.uvarint()
			if len(d.buf) < 1 {
				d.fail("truncated record")
				break
			}
			flags := d.buf[0]
			d.buf = d.buf[1:]
			r.result.created = flags&resultCreated != 0
			r.result.hasVersion = flags&resultHasVersion != 0
			r.result.version.createIndex = d.uvarint()
			r.result.version.modIndex = d.uvarint()
			if _, dup := records.byKey[r.key]; dup && d.err == nil {
				d.fail("idempotency key %q recorded twice", r.key)
			}
			records.byKey[r.key] = r
			records.order = append(records.order, r)
		}
	}
	if d.err == nil && len(d.buf) != 0 {
		d.fail("%d trailing bytes", len(d.buf))
	}
	return records, d.err
}

// appendString appends s with its length in front.
func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendStrings appends a counted list of length-prefixed strings.
func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

// decoder reads the primitives above from buf. The first error sticks and
// every later read returns zero values, so callers check err once at the end.
type decoder struct {
	buf []byte
	err error
}

// uvarint reads a varint-encoded unsigned integer.
func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// count reads a length that must not exceed the bytes left, so a corrupt
// count cannot make the caller allocate more than the input's size.
func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.buf)) {
		d.fail("count %d exceeds input", n)
		return 0
	}
	return int(n)
}

// bytes reads a length-prefixed byte string, as a sub-slice of the input
// (no copy).
func (d *decoder) bytes() []byte {
	n := d.count()
	if d.err != nil {
		return nil
	}
	b := d.buf[:n:n]
	d.buf = d.buf[n:]
	return b
}

// strings reads a count, then that many length-prefixed strings.
func (d *decoder) strings() []string {
	n := d.count()
	ss := make([]string, 0, n)
	for ; n > 0 && d.err == nil; n-- {
		ss = append(ss, string(d.bytes()))
	}
	return ss
}

// rest takes every byte left: a field that ends its record needs no length.
func (d *decoder) rest() []byte {
	b := d.buf
	d.buf = nil
	return b
}

// fail records the first error, as ErrCorruptEntry with what was wrong.
func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrCorruptEntry}, args...)...)
	}
}
