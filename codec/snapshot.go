package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime/debug"
	"time"

	"raftkv/idempotency"
	"raftkv/keyspace"
	"raftkv/lease"
	"raftkv/membership"
)

// The snapshot format: all replicated state, members first so that the raft
// node can learn its peers without decoding every key.
//
//	version (1 byte)
//	member count (uvarint), then per member: id, peer URLs, client URLs, flags (1 byte)
//	removed id count (uvarint), then the ids
//	key count (uvarint), then per key: key, value, createIndex, modIndex, lease id (0: none)
//	record count (uvarint), then per idempotency record, oldest first:
//	  key, fingerprint (8 bytes), result code, index, flags (1 byte), createIndex, modIndex
//	lease count (uvarint), then per lease: id, TTL (seconds), hold (milliseconds)
//
// Ids and indexes are uvarints; strings, URL lists and values are
// length-prefixed. Older versions still load, so that a member restarts
// from a snapshot written before an upgrade: version 3, written before
// leases existed, has no lease per key and no leases; version 2, written
// before learners existed, has no member flags either (every member
// votes); version 1, written before versions existed, has no member
// flags, no indexes per key and no records, and its keys load at version
// 0.
const (
	snapshotVersion   = 4
	snapshotVersionV3 = 3
	snapshotVersionV2 = 2
	snapshotVersionV1 = 1
)

// The flags of a member in a snapshot.
const (
	memberLearner = 1 << iota // a learner: replicated to, but not a voter
)

// The flags of a recorded answer.
const (
	answerCreated    = 1 << iota // a PUT that created its key
	answerHasVersion             // the answer carries the key's version
)

// State is all replicated state, as a snapshot holds it: the member table,
// the keys, the idempotency records, oldest first, and the leases.
type State struct {
	Members *membership.Table
	Keys    *keyspace.Space
	Records []*idempotency.Record
	Leases  []lease.Saved
}

// Encode serialises the state, as a raft snapshot's data.
func (st State) Encode() []byte {
	size := 64
	st.Keys.Scan(func(k string, v keyspace.Value) bool {
		size += len(k) + len(v.Data) + 4*binary.MaxVarintLen32
		return true
	})
	b := make([]byte, 0, size)
	b = append(b, snapshotVersion)
	members := st.Members.List()
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
	removed := st.Members.Removed()
	b = binary.AppendUvarint(b, uint64(len(removed)))
	for _, id := range removed {
		b = binary.AppendUvarint(b, id)
	}
	b = binary.AppendUvarint(b, uint64(st.Keys.Len()))
	st.Keys.Scan(func(k string, v keyspace.Value) bool { // in key order, so a snapshot loads in order
		b = appendString(b, k)
		b = appendString(b, v.Data)
		b = binary.AppendUvarint(b, v.CreateIndex)
		b = binary.AppendUvarint(b, v.ModIndex)
		b = binary.AppendUvarint(b, v.Lease)
		return true
	})
	b = AppendRecords(b, st.Records)
	b = binary.AppendUvarint(b, uint64(len(st.Leases)))
	for _, l := range st.Leases { // hold in whole milliseconds, rounded up
		b = binary.AppendUvarint(b, l.ID)
		b = binary.AppendUvarint(b, uint64(l.TTL/time.Second))
		b = binary.AppendUvarint(b, uint64((l.Hold+time.Millisecond-1)/time.Millisecond))
	}
	return b
}

// AppendRecords appends the idempotency records, oldest first: the last
// section of a snapshot since version 2.
func AppendRecords(b []byte, records []*idempotency.Record) []byte {
	b = binary.AppendUvarint(b, uint64(len(records)))
	for _, r := range records {
		b = appendString(b, r.Name)
		b = binary.BigEndian.AppendUint64(b, r.Fingerprint)
		b = binary.AppendUvarint(b, answerCode(r.Answer.Err))
		b = binary.AppendUvarint(b, r.Answer.Index)
		var flags byte
		if r.Answer.Created {
			flags |= answerCreated
		}
		if r.Answer.HasVersion {
			flags |= answerHasVersion
		}
		b = append(b, flags)
		b = binary.AppendUvarint(b, r.Answer.Version.CreateIndex)
		b = binary.AppendUvarint(b, r.Answer.Version.ModIndex)
	}
	return b
}

// answerErrors are the errors a recorded answer can hold, by their code in
// the snapshot: the position in this list. Code 0 is success.
var answerErrors = []error{nil, keyspace.ErrKeyNotFound, keyspace.ErrPreconditionFailed, membership.ErrMemberExists, membership.ErrMemberNotFound, membership.ErrBadChange, lease.ErrNotFound}

// answerCode is err's code in answerErrors.
func answerCode(err error) uint64 {
	for i, e := range answerErrors[1:] {
		if errors.Is(err, e) {
			return uint64(i + 1)
		}
	}
	return 0
}

// DecodeState reads a whole snapshot.
func DecodeState(data []byte) (State, error) {
	d, err := newSnapshotDecoder(data)
	if err != nil {
		return State{}, err
	}
	var st State
	if st.Members, err = d.members(); err != nil {
		return State{}, err
	}
	if st.Keys, err = d.keys(); err != nil {
		return State{}, err
	}
	if st.Records, err = d.records(); err != nil {
		return State{}, err
	}
	if st.Leases, err = d.leases(); err != nil {
		return State{}, err
	}
	return st, nil
}

// DecodeMembers reads only the member table of a snapshot: what the raft
// node needs to know its peers.
func DecodeMembers(data []byte) (*membership.Table, error) {
	d, err := newSnapshotDecoder(data)
	if err != nil {
		return nil, err
	}
	return d.members()
}

// snapshotDecoder reads a snapshot section by section, in order: members,
// keys, records.
type snapshotDecoder struct {
	decoder
	version   byte
	keyLeases []uint64 // the leases keys have, to check each exists
}

// newSnapshotDecoder checks the version byte.
func newSnapshotDecoder(data []byte) (*snapshotDecoder, error) {
	if len(data) == 0 || data[0] < snapshotVersionV1 || data[0] > snapshotVersion {
		return nil, fmt.Errorf("%w: unknown snapshot version", ErrCorrupt)
	}
	return &snapshotDecoder{decoder: decoder{buf: data[1:]}, version: data[0]}, nil
}

// members reads the member table and the removed ids.
func (d *snapshotDecoder) members() (*membership.Table, error) {
	var members []membership.Member
	for n := d.count(); n > 0 && d.err == nil; n-- {
		m := membership.Member{ID: d.uvarint()}
		m.PeerURLs = d.strings()
		m.ClientURLs = d.strings()
		if d.version >= snapshotVersionV3 {
			m.IsLearner = d.memberFlags()&memberLearner != 0
		}
		members = append(members, m)
	}
	var removed []uint64
	for n := d.count(); n > 0 && d.err == nil; n-- {
		removed = append(removed, d.uvarint())
	}
	return membership.NewTable(members, removed), d.err
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

// keys reads the keys, values and versions. Values are copied out of the
// snapshot (as strings) so that the snapshot's memory can be released. A
// snapshot lists its keys in order (version 1's came in any order), so
// Load appends them to the tree.
func (d *snapshotDecoder) keys() (*keyspace.Space, error) {
	keys := keyspace.New()
	prev := ""
	for i, n := 0, d.count(); i < n && d.err == nil; i++ {
		k := string(d.bytes())
		v := keyspace.Value{Data: string(d.bytes())}
		if d.version == snapshotVersionV1 {
			keys.Set(k, v)
			continue
		}
		v.CreateIndex = d.uvarint()
		v.ModIndex = d.uvarint()
		if d.version >= snapshotVersion {
			if v.Lease = d.uvarint(); v.Lease != 0 {
				d.keyLeases = append(d.keyLeases, v.Lease)
			}
		}
		if i > 0 && k <= prev && d.err == nil {
			d.fail("key %.60q out of order", k)
		}
		keys.Load(k, v)
		prev = k
	}
	return keys, d.err
}

// records reads the idempotency records, oldest first.
func (d *snapshotDecoder) records() ([]*idempotency.Record, error) {
	var records []*idempotency.Record
	seen := make(map[string]bool)
	if d.version != snapshotVersionV1 {
		for n := d.count(); n > 0 && d.err == nil; n-- {
			r := &idempotency.Record{Name: string(d.bytes())}
			if len(d.buf) < 8 {
				d.fail("truncated fingerprint")
				break
			}
			r.Fingerprint = binary.BigEndian.Uint64(d.buf)
			d.buf = d.buf[8:]
			code := d.uvarint()
			if code >= uint64(len(answerErrors)) {
				d.fail("unknown result code %d", code)
				break
			}
			r.Answer.Err = answerErrors[code]
			r.Answer.Index = d.uvarint()
			if len(d.buf) < 1 {
				d.fail("truncated record")
				break
			}
			flags := d.buf[0]
			d.buf = d.buf[1:]
			r.Answer.Created = flags&answerCreated != 0
			r.Answer.HasVersion = flags&answerHasVersion != 0
			r.Answer.Version.CreateIndex = d.uvarint()
			r.Answer.Version.ModIndex = d.uvarint()
			if seen[r.Name] && d.err == nil {
				d.fail("idempotency key %q recorded twice", r.Name)
			}
			seen[r.Name] = true
			records = append(records, r)
		}
	}
	return records, d.err
}

// leases reads the leases, the last section, and checks that nothing
// follows them: that every key's lease is one of them, and every lease is
// listed once.
func (d *snapshotDecoder) leases() ([]lease.Saved, error) {
	var leases []lease.Saved
	if d.version >= snapshotVersion {
		seen := make(map[uint64]bool)
		for n := d.count(); n > 0 && d.err == nil; n-- {
			l := lease.Saved{ID: d.uvarint()}
			ttl, hold := d.uvarint(), d.uvarint()
			if d.err == nil && (l.ID == 0 || seen[l.ID] || ttl == 0 || ttl > uint64(math.MaxInt64/time.Second)/2 || hold > uint64(math.MaxInt64/time.Millisecond)/2) {
				d.fail("bad lease %d", l.ID)
			}
			seen[l.ID] = true
			l.TTL, l.Hold = time.Duration(ttl)*time.Second, time.Duration(hold)*time.Millisecond
			leases = append(leases, l)
		}
		for _, id := range d.keyLeases {
			if !seen[id] && d.err == nil {
				d.fail("a key has lease %d, which the snapshot does not hold", id)
			}
		}
	}
	if d.err == nil && len(d.buf) != 0 {
		d.fail("%d trailing bytes", len(d.buf))
	}
	return leases, d.err
}

// releaseMemoryAbove is the size from which encoding or decoding a
// snapshot is followed by returning freed memory to the OS at once
// (ReleaseMemoryAfter). Making or loading a snapshot takes several copies
// of the whole state (the encoding, then the snap package's two protobuf
// layers); without this the process keeps that high-water mark as its
// size. Below it the copies are too small to matter, and a forced
// collection every few seconds under load costs more CPU (8% of a
// member's, measured at 10 000-key snapshots) than it gives back memory.
const releaseMemoryAbove = 32 << 20

// ReleaseMemoryAfter returns freed memory to the OS, on a goroutine of its
// own (it runs a garbage collection), after a snapshot of size bytes was
// encoded or decoded, if it is that large.
func ReleaseMemoryAfter(size int) {
	if size >= releaseMemoryAbove {
		go debug.FreeOSMemory()
	}
}
