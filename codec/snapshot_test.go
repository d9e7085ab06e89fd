package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"raftkv/idempotency"
	"raftkv/keyspace"
	"raftkv/lease"
	"raftkv/membership"
)

// snapshotContent is everything a snapshot carries, in a form that
// compares: the members by id, the removed ids in order, the keys as a
// map, the idempotency records oldest first.
type snapshotContent struct {
	members []membership.Member
	removed []uint64
	kv      map[string]keyspace.Value
	records []*idempotency.Record
}

// snapKV is kv with every key at version 0, as values only.
func snapKV(values map[string][]byte) map[string]keyspace.Value {
	kv := make(map[string]keyspace.Value, len(values))
	for k, v := range values {
		kv[k] = keyspace.Value{Data: string(v)}
	}
	return kv
}

// snapKVEqual reports whether two keys hold the same value and version.
func snapKVEqual(a, b keyspace.Value) bool { return a == b }

// treeOf is kv as the kvstore holds it.
func treeOf(kv map[string]keyspace.Value) *keyspace.Space {
	t := keyspace.New()
	for k, v := range kv {
		t.Set(k, v)
	}
	return t
}

// mapOf is a key space as a map, for comparing.
func mapOf(t *keyspace.Space) map[string]keyspace.Value {
	kv := make(map[string]keyspace.Value, t.Len())
	t.Scan(func(k string, v keyspace.Value) bool {
		kv[k] = v
		return true
	})
	return kv
}

// state is c as the kvstore hands it to State.Encode.
func (c snapshotContent) state() State {
	return State{Members: membership.NewTable(c.members, c.removed), Keys: treeOf(c.kv), Records: c.records}
}

// contentOf is a decoded state, for comparing.
func contentOf(st State) snapshotContent {
	return snapshotContent{members: st.Members.List(), removed: st.Members.Removed(), kv: mapOf(st.Keys), records: st.Records}
}

// equal reports whether two contents are the same state.
func (c snapshotContent) equal(o snapshotContent) bool {
	return slices.EqualFunc(c.members, o.members, snapMemberEqual) && slices.Equal(c.removed, o.removed) &&
		maps.EqualFunc(c.kv, o.kv, snapKVEqual) && snapRecordsEqual(c.records, o.records)
}

// String sums c up for a failure message.
func (c snapshotContent) String() string {
	return fmt.Sprintf("members %+v, removed %v, %d keys, %d records", c.members, c.removed, len(c.kv), len(c.records))
}

// snapRecordsEqual reports whether two idempotency records are the same,
// in the same order.
func snapRecordsEqual(a, b []*idempotency.Record) bool {
	return slices.EqualFunc(a, b, func(x, y *idempotency.Record) bool {
		return x.Name == y.Name && x.Fingerprint == y.Fingerprint && errors.Is(x.Answer.Err, y.Answer.Err) && (x.Answer.Err == nil) == (y.Answer.Err == nil) &&
			x.Answer.Index == y.Answer.Index && x.Answer.Version == y.Answer.Version &&
			x.Answer.HasVersion == y.Answer.HasVersion && x.Answer.Created == y.Answer.Created
	})
}

// snapMemberEqual compares members, treating nil and empty URL lists alike (the
// snapshot decoder returns empty lists; GET /members shows both as []).
func snapMemberEqual(a, b membership.Member) bool {
	return a.ID == b.ID && slices.Equal(a.PeerURLs, b.PeerURLs) && slices.Equal(a.ClientURLs, b.ClientURLs) && a.IsLearner == b.IsLearner
}

// fullSnapshotContent has every kind of content a snapshot can hold; small
// enough to decode once per byte offset.
func fullSnapshotContent() snapshotContent {
	return snapshotContent{
		members: []membership.Member{
			{ID: 1, PeerURLs: []string{"http://10.0.0.1:2380"}, ClientURLs: []string{"http://10.0.0.1:2379"}},
			{ID: 2, PeerURLs: []string{"http://10.0.0.2:2380", "http://[::1]:2380"}},
			{ID: 4, PeerURLs: []string{"http://10.0.0.4:2380"}, ClientURLs: []string{"http://10.0.0.4:2379"}, IsLearner: true},
			{ID: 1 << 40, ClientURLs: []string{""}},
		},
		removed: []uint64{3, math.MaxUint64},
		kv: map[string]keyspace.Value{
			"a":         {Data: "1", Version: keyspace.Version{CreateIndex: 4, ModIndex: 9}},
			"empty":     {Data: "", Version: keyspace.Version{CreateIndex: 5, ModIndex: 5}},
			"dir/key":   {Data: "\x00\x01\x00\x02", Version: keyspace.Version{CreateIndex: math.MaxUint64, ModIndex: math.MaxUint64}},
			"":          {Data: "empty key"},
			"\x00\xff/": {Data: strings.Repeat("\x00", 300), Version: keyspace.Version{CreateIndex: 1, ModIndex: 1 << 40}},
		},
		records: []*idempotency.Record{
			{Name: "k1", Fingerprint: 1, Answer: idempotency.Answer{Index: 9, Version: keyspace.Version{CreateIndex: 4, ModIndex: 9}, HasVersion: true}},
			{Name: "k2", Fingerprint: math.MaxUint64, Answer: idempotency.Answer{Index: 5, Created: true, Version: keyspace.Version{CreateIndex: 5, ModIndex: 5}, HasVersion: true}},
			{Name: "!~", Answer: idempotency.Answer{Index: 10, Err: keyspace.ErrPreconditionFailed}},
			{Name: "member", Answer: idempotency.Answer{Index: 11, Err: membership.ErrMemberExists}},
			{Name: "gone", Answer: idempotency.Answer{Index: 12, Err: keyspace.ErrKeyNotFound}},
			{Name: "stranger", Answer: idempotency.Answer{Index: 13, Err: membership.ErrMemberNotFound}},
			{Name: "bad change", Answer: idempotency.Answer{Index: 14, Err: membership.ErrBadChange}},
		},
	}
}

// decodeWholeSnapshot runs the whole decoding sequence the kvstore runs.
func decodeWholeSnapshot(data []byte) (snapshotContent, error) {
	st, err := DecodeState(data)
	if err != nil {
		return snapshotContent{}, err
	}
	return contentOf(st), nil
}

// TestSnapshotRoundTrip proves that a snapshot restores members, removed ids
// and keys exactly, since a member that recovers from a snapshot must end up
// with the same state as the members that applied the log; and that
// DecodeMembers, which the raft node reads its peers with, reads the same
// members.
func TestSnapshotRoundTrip(t *testing.T) {
	large := snapshotContent{
		members: []membership.Member{{ID: 7, PeerURLs: []string{"http://p"}, ClientURLs: []string{"http://c"}}},
		kv:      snapKV(map[string][]byte{"large": bytes.Repeat([]byte{0xab, 0}, 512<<10)}),
	}
	for i := range 100 {
		large.kv[fmt.Sprintf("key-%03d", i)] = keyspace.Value{Data: strings.Repeat("v", i), Version: keyspace.Version{CreateIndex: uint64(i), ModIndex: uint64(2 * i)}}
	}
	tests := []struct {
		name string
		in   snapshotContent
	}{
		{"empty state", snapshotContent{kv: map[string]keyspace.Value{}}},
		{"every kind of content", fullSnapshotContent()},
		{"many keys and a large value", large},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := tt.in.state().Encode()
			got, err := decodeWholeSnapshot(data)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !slices.EqualFunc(got.members, tt.in.members, snapMemberEqual) {
				t.Errorf("members = %v, want %v", got.members, tt.in.members)
			}
			if !slices.Equal(got.removed, tt.in.removed) {
				t.Errorf("removed = %v, want %v", got.removed, tt.in.removed)
			}
			if !maps.EqualFunc(got.kv, tt.in.kv, snapKVEqual) {
				t.Errorf("decoded %d keys, want %d, or some value or version differs", len(got.kv), len(tt.in.kv))
			}
			if !snapRecordsEqual(got.records, tt.in.records) {
				t.Errorf("decoded %d idempotency records, want %d, or some differ", len(got.records), len(tt.in.records))
			}
			table, err := DecodeMembers(data)
			if err != nil || !slices.EqualFunc(table.List(), tt.in.members, snapMemberEqual) || !slices.Equal(table.Removed(), tt.in.removed) {
				t.Errorf("DecodeMembers = %v, removed %v, %v; want %v, removed %v", table.List(), table.Removed(), err, tt.in.members, tt.in.removed)
			}
			// Values must be copies: the kvstore keeps them after the
			// snapshot's buffer is released or reused.
			clear(data)
			if !maps.EqualFunc(got.kv, tt.in.kv, snapKVEqual) {
				t.Errorf("decoded values alias the snapshot buffer")
			}
		})
	}
}

// encodeOldSnapshot is st as a snapshot of version 1 or 2 was written,
// before learners (no member flags) and, for version 1, before versions and
// idempotency records. Members must all be voters, and for version 1 keys
// must be at version 0 and there must be no records.
func encodeOldSnapshot(version byte, st snapshotContent) []byte {
	b := []byte{version}
	b = binary.AppendUvarint(b, uint64(len(st.members)))
	for _, m := range st.members {
		b = binary.AppendUvarint(b, m.ID)
		b = appendStrings(b, m.PeerURLs)
		b = appendStrings(b, m.ClientURLs)
	}
	b = binary.AppendUvarint(b, uint64(len(st.removed)))
	for _, id := range st.removed {
		b = binary.AppendUvarint(b, id)
	}
	b = binary.AppendUvarint(b, uint64(len(st.kv)))
	for _, k := range slices.Sorted(maps.Keys(st.kv)) {
		b = appendString(b, k)
		b = appendString(b, st.kv[k].Data)
		if version == snapshotVersionV2 {
			b = binary.AppendUvarint(b, st.kv[k].CreateIndex)
			b = binary.AppendUvarint(b, st.kv[k].ModIndex)
		}
	}
	if version == snapshotVersionV2 {
		b = AppendRecords(b, st.records)
	}
	return b
}

// TestSnapshotOlderVersions proves that snapshots of versions 1 and 2,
// written before learners existed, still load, with every member a voter,
// and that what they hold survives being written again as the current
// version: a member restarted after an upgrade starts from the snapshot its
// older self wrote.
func TestSnapshotOlderVersions(t *testing.T) {
	st := fullSnapshotContent()
	for i := range st.members {
		st.members[i].IsLearner = false
	}
	v1 := st
	v1.kv = make(map[string]keyspace.Value)
	for k, v := range st.kv {
		v1.kv[k] = keyspace.Value{Data: v.Data}
	}
	v1.records = nil
	for _, tt := range []struct {
		version byte
		want    snapshotContent
	}{{snapshotVersionV2, st}, {snapshotVersionV1, v1}} {
		t.Run(fmt.Sprintf("version %d", tt.version), func(t *testing.T) {
			data := encodeOldSnapshot(tt.version, tt.want)
			for range 2 { // as written then, and rewritten as the current version
				got, err := decodeWholeSnapshot(data)
				if err != nil {
					t.Fatalf("decode version %d: %v", data[0], err)
				}
				if !got.equal(tt.want) {
					t.Fatalf("version %d decoded to %v; want %v", data[0], got, tt.want)
				}
				data = got.state().Encode()
			}
		})
	}
}

// TestSnapshotCorrupt proves that a damaged snapshot (wrong version,
// truncated anywhere, trailing bytes, absurd counts) is rejected with
// ErrCorrupt and never panics, since loading half a state would
// silently diverge a member from its cluster.
func TestSnapshotCorrupt(t *testing.T) {
	valid := fullSnapshotContent().state().Encode()
	if _, err := decodeWholeSnapshot(valid); err != nil {
		t.Fatalf("valid snapshot does not decode: %v", err)
	}
	twice := fullSnapshotContent()
	twice.records = append(twice.records, &idempotency.Record{Name: "k1", Fingerprint: 2})
	tests := []struct {
		name string
		data []byte
	}{
		{"version 0", append([]byte{0}, valid[1:]...)},
		{"next version", append([]byte{snapshotVersion + 1}, valid[1:]...)},
		{"unknown member flag", []byte{snapshotVersion, 1, 1, 0, 0, 2, 0, 0, 0}},
		{"member without its flags", []byte{snapshotVersion, 1, 1, 0, 0}},
		{"trailing zero byte", append(slices.Clone(valid), 0)},
		{"trailing garbage", append(slices.Clone(valid), "garbage"...)},
		{"member count beyond input", []byte{snapshotVersion, 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"key count beyond input", []byte{snapshotVersion, 0, 0, 0xff, 0x01}},
		{"value length beyond input", []byte{snapshotVersion, 0, 0, 1, 1, 'k', 9, 'v'}},
		{"overflowing member count", append([]byte{snapshotVersion}, bytes.Repeat([]byte{0xff}, 11)...)},
		{"a key twice", []byte{snapshotVersion, 0, 0, 2, 1, 'k', 1, '1', 1, 1, 1, 'k', 1, '2', 2, 2, 0}},
		{"keys out of order", []byte{snapshotVersion, 0, 0, 2, 1, 'k', 1, '1', 1, 1, 1, 'a', 1, '2', 2, 2, 0}},
		{"an idempotency key recorded twice", twice.state().Encode()},
		{"unknown result code", append(slices.Clone(valid[:len(valid)-len(AppendRecords(nil, fullSnapshotContent().records))]), 1, 1, 'r', 0, 0, 0, 0, 0, 0, 0, 0, byte(len(answerErrors)), 1, 0, 0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := decodeCorruptSnapshot(t, tt.data); err != nil {
				t.Error(err)
			}
		})
	}
	t.Run("truncated at every offset", func(t *testing.T) {
		for i := range valid {
			if err := decodeCorruptSnapshot(t, valid[:i:i]); err != nil {
				t.Errorf("truncated to %d of %d bytes: %v", i, len(valid), err)
			}
		}
	})
}

// decodeCorruptSnapshot decodes data and explains why the outcome is wrong
// for a corrupt snapshot, or returns nil.
func decodeCorruptSnapshot(t *testing.T, data []byte) error {
	var err error
	catchPanic(t, func() { _, err = decodeWholeSnapshot(data) })
	if !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("decode error = %v, want one wrapping ErrCorrupt", err)
	}
	return nil
}

// FuzzDecodeSnapshot proves that no input makes the snapshot decoder panic
// or fail with a foreign error, and that whatever it accepts re-encodes to a
// snapshot with the same content: a member restoring from a snapshot must
// end up with exactly the state that was taken.
func FuzzDecodeSnapshot(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeWholeSnapshot(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode %.64x: error %v does not wrap ErrCorrupt", data, err)
			}
			return
		}
		again, err := decodeWholeSnapshot(got.state().Encode())
		if err != nil {
			t.Fatalf("decode %.64x: re-encoded content does not decode: %v", data, err)
		}
		if !again.equal(got) {
			t.Fatalf("decode %.64x: re-encoding changed the content: %v; then %v", data, got, again)
		}
	})
}

// TestSnapshotLeases proves a snapshot holds the leases and which lease
// each key lives by, and refuses one whose keys name a lease it does not
// hold, or that holds a lease twice or a lease 0.
func TestSnapshotLeases(t *testing.T) {
	keys := keyspace.New()
	keys.Set("svc/a", keyspace.Value{Data: "1", Version: keyspace.Version{CreateIndex: 5, ModIndex: 5}, Lease: 4})
	keys.Set("svc/b", keyspace.Value{Data: "2", Version: keyspace.Version{CreateIndex: 6, ModIndex: 6}})
	st := State{
		Members: membership.NewTable(nil, nil),
		Keys:    keys,
		Leases: []lease.Saved{
			{ID: 4, TTL: 10 * time.Second, Hold: 2500*time.Millisecond + 1}, // rounded up to 2501 ms
			{ID: 9, TTL: 3 * time.Second},
		},
	}
	got, err := DecodeState(st.Encode())
	if err != nil {
		t.Fatal(err)
	}
	want := []lease.Saved{{ID: 4, TTL: 10 * time.Second, Hold: 2501 * time.Millisecond}, {ID: 9, TTL: 3 * time.Second}}
	if !slices.Equal(got.Leases, want) {
		t.Errorf("leases %+v, want %+v", got.Leases, want)
	}
	if v, _ := got.Keys.Get("svc/a"); v.Lease != 4 {
		t.Errorf("svc/a's lease %d, want 4", v.Lease)
	}
	if v, _ := got.Keys.Get("svc/b"); v.Lease != 0 {
		t.Errorf("svc/b's lease %d, want none", v.Lease)
	}
	for name, bad := range map[string][]lease.Saved{
		"a key's lease missing": {{ID: 9, TTL: time.Second}},
		"a lease twice":         {{ID: 4, TTL: time.Second}, {ID: 4, TTL: time.Second}},
		"lease 0":               {{ID: 4, TTL: time.Second}, {ID: 0, TTL: time.Second}},
		"a TTL of 0":            {{ID: 4}},
	} {
		st.Leases = bad
		if _, err := DecodeState(st.Encode()); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}
