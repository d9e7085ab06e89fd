package main

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
)

// TestEncodeDecodeCommandRoundTrip proves that each encoder's entry decodes to exactly
// the command it was built from, since every member must apply the same bytes
// the same way.
func TestEncodeDecodeCommandRoundTrip(t *testing.T) {
	longKey := strings.Repeat("k/", 2048) // 4096 bytes
	largeValue := bytes.Repeat([]byte{0xde, 0x00, 0xad, 0xff}, 256<<10)
	tests := []struct {
		name string
		data []byte
		want command
	}{
		{"put empty value", encodePut(1, "k", nil),
			command{op: opPut, requestID: 1, key: []byte("k")}},
		{"put empty key", encodePut(2, "", []byte("v")),
			command{op: opPut, requestID: 2, value: []byte("v")}},
		{"put binary value with zero bytes", encodePut(3, "bin", []byte{0, 0, 1, 0, 0xff, 0}),
			command{op: opPut, requestID: 3, key: []byte("bin"), value: []byte{0, 0, 1, 0, 0xff, 0}}},
		{"put key with slashes", encodePut(300, "/a/b/", []byte("v")),
			command{op: opPut, requestID: 300, key: []byte("/a/b/"), value: []byte("v")}},
		{"put 4096-byte key", encodePut(math.MaxUint64, longKey, []byte("v")),
			command{op: opPut, requestID: math.MaxUint64, key: []byte(longKey), value: []byte("v")}},
		{"put 1 MiB value", encodePut(5, "big", largeValue),
			command{op: opPut, requestID: 5, key: []byte("big"), value: largeValue}},
		{"delete", encodeDelete(6, "a/b"),
			command{op: opDelete, requestID: 6, key: []byte("a/b")}},
		{"delete binary key", encodeDelete(7, "\x00k\x00"),
			command{op: opDelete, requestID: 7, key: []byte("\x00k\x00")}},
		{"delete 4096-byte key", encodeDelete(8, longKey),
			command{op: opDelete, requestID: 8, key: []byte(longKey)}},
		{"advertise", encodeAdvertise(9, 3, "http://127.0.0.1:2379"),
			command{op: opAdvertise, requestID: 9, memberID: 3, clientURL: "http://127.0.0.1:2379"}},
		{"advertise empty URL, max ids", encodeAdvertise(math.MaxUint64, math.MaxUint64, ""),
			command{op: opAdvertise, requestID: math.MaxUint64, memberID: math.MaxUint64}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeCommand(tt.data)
			if err != nil {
				t.Fatalf("decodeCommand: %v", err)
			}
			if diff := commandDiff(got, tt.want); diff != "" {
				t.Errorf("decoded command differs: %s", diff)
			}
		})
	}
}

// TestDecodeCommandCorrupt proves that malformed entries are rejected with
// ErrCorruptEntry instead of panicking, since a panic in the apply loop would
// take the whole member down.
func TestDecodeCommandCorrupt(t *testing.T) {
	maxVarint := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}
	overflowVarint := bytes.Repeat([]byte{0xff}, 11)
	tests := []struct {
		name string
		data []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"unknown op 0", []byte{0, 1}},
		{"unknown op 4", append([]byte{4}, encodePut(1, "k", []byte("v"))[1:]...)},
		{"unknown op 255", []byte{255, 1, 1, 'k'}},
		{"put without request id", []byte{byte(opPut)}},
		{"put truncated request id", []byte{byte(opPut), 0x80}},
		{"put overflowing request id", append([]byte{byte(opPut)}, overflowVarint...)},
		{"put without key length", []byte{byte(opPut), 5}},
		{"put truncated key length", []byte{byte(opPut), 5, 0x80}},
		{"put key length beyond input", []byte{byte(opPut), 5, 10, 'a', 'b'}},
		{"put key length max uint64", append([]byte{byte(opPut), 5}, maxVarint...)},
		{"delete truncated request id", []byte{byte(opDelete), 0x80, 0x80}},
		{"advertise without member id", []byte{byte(opAdvertise), 5}},
		{"advertise truncated member id", []byte{byte(opAdvertise), 5, 0x81}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			catchPanic(t, func() { _, err = decodeCommand(tt.data) })
			if !errors.Is(err, ErrCorruptEntry) {
				t.Errorf("decodeCommand(%x) error = %v, want one wrapping ErrCorruptEntry", tt.data, err)
			}
		})
	}
}

// snapshotContent is everything a snapshot carries.
type snapshotContent struct {
	members map[uint64]*member
	removed map[uint64]bool
	kv      map[string]keyValue
	records []*dedupRecord
}

// snapKV is kv with every key at version 0, as values only.
func snapKV(values map[string][]byte) map[string]keyValue {
	kv := make(map[string]keyValue, len(values))
	for k, v := range values {
		kv[k] = keyValue{value: string(v)}
	}
	return kv
}

// snapKVEqual reports whether two keys hold the same value and version.
func snapKVEqual(a, b keyValue) bool { return a == b }

// treeOf is kv as the kvstore holds it.
func treeOf(kv map[string]keyValue) *keySpace {
	t := newKeySpace()
	for k, v := range kv {
		t.Set(k, v)
	}
	return t
}

// mapOf is a key space as a map, for comparing.
func mapOf(t *keySpace) map[string]keyValue {
	kv := make(map[string]keyValue, t.Len())
	t.Scan(func(k string, v keyValue) bool {
		kv[k] = v
		return true
	})
	return kv
}

// snapRecordsEqual reports whether two idempotency records are the same,
// in the same order.
func snapRecordsEqual(a, b []*dedupRecord) bool {
	return slices.EqualFunc(a, b, func(x, y *dedupRecord) bool {
		return x.key == y.key && x.fingerprint == y.fingerprint && errors.Is(x.result.err, y.result.err) && (x.result.err == nil) == (y.result.err == nil) &&
			x.result.index == y.result.index && x.result.version == y.result.version &&
			x.result.hasVersion == y.result.hasVersion && x.result.created == y.result.created
	})
}

// fullSnapshotContent has every kind of content a snapshot can hold; small
// enough to decode once per byte offset.
func fullSnapshotContent() snapshotContent {
	return snapshotContent{
		members: map[uint64]*member{
			1:       {ID: 1, PeerURLs: []string{"http://10.0.0.1:2380"}, ClientURLs: []string{"http://10.0.0.1:2379"}},
			2:       {ID: 2, PeerURLs: []string{"http://10.0.0.2:2380", "http://[::1]:2380"}},
			4:       {ID: 4, PeerURLs: []string{"http://10.0.0.4:2380"}, ClientURLs: []string{"http://10.0.0.4:2379"}, IsLearner: true},
			1 << 40: {ID: 1 << 40, ClientURLs: []string{""}},
		},
		removed: map[uint64]bool{3: true, math.MaxUint64: true},
		kv: map[string]keyValue{
			"a":         {value: "1", keyVersion: keyVersion{createIndex: 4, modIndex: 9}},
			"empty":     {value: "", keyVersion: keyVersion{createIndex: 5, modIndex: 5}},
			"dir/key":   {value: "\x00\x01\x00\x02", keyVersion: keyVersion{createIndex: math.MaxUint64, modIndex: math.MaxUint64}},
			"":          {value: "empty key"},
			"\x00\xff/": {value: strings.Repeat("\x00", 300), keyVersion: keyVersion{createIndex: 1, modIndex: 1 << 40}},
		},
		records: []*dedupRecord{
			{key: "k1", fingerprint: 1, result: outcome{index: 9, version: keyVersion{createIndex: 4, modIndex: 9}, hasVersion: true}},
			{key: "k2", fingerprint: math.MaxUint64, result: outcome{index: 5, created: true, version: keyVersion{createIndex: 5, modIndex: 5}, hasVersion: true}},
			{key: "!~", result: outcome{index: 10, err: ErrPreconditionFailed}},
			{key: "member", result: outcome{index: 11, err: ErrMemberExists}},
		},
	}
}

// decodeWholeSnapshot runs the whole decoding sequence the kvstore runs.
func decodeWholeSnapshot(data []byte) (snapshotContent, error) {
	d, err := newSnapshotDecoder(data)
	if err != nil {
		return snapshotContent{}, err
	}
	var st snapshotContent
	if st.members, st.removed, err = d.decodeMembers(); err != nil {
		return snapshotContent{}, err
	}
	kv, err := d.decodeKeys()
	if err != nil {
		return snapshotContent{}, err
	}
	st.kv = mapOf(kv)
	records, err := d.decodeRecords()
	if err != nil {
		return snapshotContent{}, err
	}
	st.records = records.records()
	return st, nil
}

// TestSnapshotRoundTrip proves that a snapshot restores members, removed ids
// and keys exactly, since a member that recovers from a snapshot must end up
// with the same state as the members that applied the log.
func TestSnapshotRoundTrip(t *testing.T) {
	large := snapshotContent{
		members: map[uint64]*member{7: {ID: 7, PeerURLs: []string{"http://p"}, ClientURLs: []string{"http://c"}}},
		removed: map[uint64]bool{},
		kv:      snapKV(map[string][]byte{"large": bytes.Repeat([]byte{0xab, 0}, 512<<10)}),
	}
	for i := range 100 {
		large.kv[fmt.Sprintf("key-%03d", i)] = keyValue{value: strings.Repeat("v", i), keyVersion: keyVersion{uint64(i), uint64(2 * i)}}
	}
	tests := []struct {
		name string
		in   snapshotContent
	}{
		{"empty state", snapshotContent{members: map[uint64]*member{}, removed: map[uint64]bool{}, kv: map[string]keyValue{}}},
		{"every kind of content", fullSnapshotContent()},
		{"many keys and a large value", large},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := encodeSnapshot(tt.in.members, tt.in.removed, treeOf(tt.in.kv), tt.in.records)
			got, err := decodeWholeSnapshot(data)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !maps.EqualFunc(got.members, tt.in.members, snapMemberEqual) {
				t.Errorf("members = %v, want %v", snapMemberList(got.members), snapMemberList(tt.in.members))
			}
			if !maps.Equal(got.removed, tt.in.removed) {
				t.Errorf("removed = %v, want %v", got.removed, tt.in.removed)
			}
			if !maps.EqualFunc(got.kv, tt.in.kv, snapKVEqual) {
				t.Errorf("decoded %d keys, want %d, or some value or version differs", len(got.kv), len(tt.in.kv))
			}
			if !snapRecordsEqual(got.records, tt.in.records) {
				t.Errorf("decoded %d idempotency records, want %d, or some differ", len(got.records), len(tt.in.records))
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
	for id := range st.removed {
		b = binary.AppendUvarint(b, id)
	}
	b = binary.AppendUvarint(b, uint64(len(st.kv)))
	for _, k := range slices.Sorted(maps.Keys(st.kv)) {
		b = appendString(b, k)
		b = appendString(b, st.kv[k].value)
		if version == snapshotVersionV2 {
			b = binary.AppendUvarint(b, st.kv[k].createIndex)
			b = binary.AppendUvarint(b, st.kv[k].modIndex)
		}
	}
	if version == snapshotVersionV2 {
		b = appendRecords(b, st.records)
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
	for _, m := range st.members {
		m.IsLearner = false
	}
	v1 := st
	v1.kv = make(map[string]keyValue)
	for k, v := range st.kv {
		v1.kv[k] = keyValue{value: v.value}
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
				if !maps.EqualFunc(got.members, tt.want.members, snapMemberEqual) || !maps.Equal(got.removed, tt.want.removed) ||
					!maps.EqualFunc(got.kv, tt.want.kv, snapKVEqual) || !snapRecordsEqual(got.records, tt.want.records) {
					t.Fatalf("version %d decoded to members %v, removed %v, %d keys, %d records; want members %v, removed %v, %d keys, %d records",
						data[0], snapMemberList(got.members), got.removed, len(got.kv), len(got.records),
						snapMemberList(tt.want.members), tt.want.removed, len(tt.want.kv), len(tt.want.records))
				}
				data = encodeSnapshot(got.members, got.removed, treeOf(got.kv), got.records)
			}
		})
	}
}

// TestSnapshotCorrupt proves that a damaged snapshot (wrong version,
// truncated anywhere, trailing bytes, absurd counts) is rejected with
// ErrCorruptEntry and never panics, since loading half a state would
// silently diverge a member from its cluster.
func TestSnapshotCorrupt(t *testing.T) {
	st := fullSnapshotContent()
	valid := encodeSnapshot(st.members, st.removed, treeOf(st.kv), st.records)
	if _, err := decodeWholeSnapshot(valid); err != nil {
		t.Fatalf("valid snapshot does not decode: %v", err)
	}
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
	if !errors.Is(err, ErrCorruptEntry) {
		return fmt.Errorf("decode error = %v, want one wrapping ErrCorruptEntry", err)
	}
	return nil
}

// FuzzDecodeCommand proves that no input makes decodeCommand panic or fail
// with a foreign error, and that an encodePut entry built from arbitrary
// bytes always decodes back to its key and value.
func FuzzDecodeCommand(f *testing.F) {
	f.Add(encodePut(1, "k", []byte("v")))
	f.Add(encodePut(math.MaxUint64, "a/b", []byte{0, 0, 0}))
	f.Add(encodeDelete(2, "k"))
	f.Add(encodeAdvertise(3, 1, "http://127.0.0.1:2379"))
	f.Add([]byte{})
	f.Add([]byte{byte(opPut), 0x80})
	f.Add(encodeBatch([][]byte{encodePut(4, "k", []byte("v")), encodeDelete(5, "k")}))
	f.Add([]byte{byte(opBatch), 2, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := decodeCommand(data); err != nil && !errors.Is(err, ErrCorruptEntry) {
			t.Fatalf("decodeCommand(%x) error %v does not wrap ErrCorruptEntry", data, err)
		}
		err := batchCommands(data, func(c []byte) error {
			_, err := decodeCommand(c)
			return err
		})
		if err != nil && !errors.Is(err, ErrCorruptEntry) {
			t.Fatalf("batchCommands(%x) error %v does not wrap ErrCorruptEntry", data, err)
		}
		key, value := string(data[:len(data)/2]), data[len(data)/2:]
		want := command{op: opPut, requestID: uint64(len(data)), key: []byte(key), value: value}
		got, err := decodeCommand(encodePut(want.requestID, key, value))
		if err != nil {
			t.Fatalf("decoding encodePut(%d, %q, %x): %v", want.requestID, key, value, err)
		}
		if diff := commandDiff(got, want); diff != "" {
			t.Fatalf("encodePut(%d, %q, %x) round trip: %s", want.requestID, key, value, diff)
		}
	})
}

// TestBatchRoundTrip proves a batch entry yields its commands in order,
// that a plain entry is its own single command, and that a corrupt batch
// is reported, not half-read silently.
func TestBatchRoundTrip(t *testing.T) {
	commands := [][]byte{encodePut(1, "a", []byte("1")), encodeDelete(2, "b"), encodeAdvertise(3, 1, "http://127.0.0.1:1"), encodePut(4, "", nil)}
	var got [][]byte
	collect := func(c []byte) error { got = append(got, c); return nil }
	if err := batchCommands(encodeBatch(commands), collect); err != nil {
		t.Fatalf("batch: %v", err)
	}
	if !slices.EqualFunc(got, commands, bytes.Equal) {
		t.Fatalf("batch gave %x, want %x", got, commands)
	}
	got = nil
	if err := batchCommands(commands[0], collect); err != nil || len(got) != 1 || !bytes.Equal(got[0], commands[0]) {
		t.Fatalf("plain entry gave %x, %v; want itself", got, err)
	}
	whole := encodeBatch(commands)
	for _, bad := range [][]byte{whole[:len(whole)-1], append(slices.Clone(whole), 0), {byte(opBatch)}, {byte(opBatch), 3, 1, 0}} {
		if err := batchCommands(bad, func([]byte) error { return nil }); !errors.Is(err, ErrCorruptEntry) {
			t.Errorf("batchCommands(%x) = %v, want ErrCorruptEntry", bad, err)
		}
	}
	stop := errors.New("stop")
	calls := 0
	if err := batchCommands(whole, func([]byte) error { calls++; return stop }); err != stop || calls != 1 {
		t.Errorf("an error from fn: %v after %d calls, want it back after 1", err, calls)
	}
}

// commandDiff describes how got differs from want, or returns "".
func commandDiff(got, want command) string {
	var diffs []string
	if got.op != want.op || got.requestID != want.requestID || got.memberID != want.memberID {
		diffs = append(diffs, fmt.Sprintf("op/requestID/memberID = %d/%d/%d, want %d/%d/%d",
			got.op, got.requestID, got.memberID, want.op, want.requestID, want.memberID))
	}
	if !bytes.Equal(got.key, want.key) {
		diffs = append(diffs, fmt.Sprintf("key = %.40q (%d bytes), want %.40q (%d bytes)", got.key, len(got.key), want.key, len(want.key)))
	}
	if !bytes.Equal(got.value, want.value) {
		diffs = append(diffs, fmt.Sprintf("value = %.40x (%d bytes), want %.40x (%d bytes)", got.value, len(got.value), want.value, len(want.value)))
	}
	if got.clientURL != want.clientURL {
		diffs = append(diffs, fmt.Sprintf("clientURL = %q, want %q", got.clientURL, want.clientURL))
	}
	return strings.Join(diffs, "; ")
}

// snapMemberEqual compares members, treating nil and empty URL lists alike (the
// snapshot decoder returns empty lists; GET /members shows both as []).
func snapMemberEqual(a, b *member) bool {
	return a.ID == b.ID && slices.Equal(a.PeerURLs, b.PeerURLs) && slices.Equal(a.ClientURLs, b.ClientURLs) && a.IsLearner == b.IsLearner
}

// snapMemberList makes a member table printable.
func snapMemberList(ms map[uint64]*member) []member {
	var list []member
	for _, id := range slices.Sorted(maps.Keys(ms)) {
		list = append(list, *ms[id])
	}
	return list
}

// catchPanic runs fn and fails the test, rather than crashing the binary, if
// fn panics.
func catchPanic(t *testing.T, fn func()) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("panic: %v", r)
		}
	}()
	fn()
}
