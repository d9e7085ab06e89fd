package codec

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"raftkv/idempotency"
	"raftkv/keyspace"
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
		want Command
	}{
		{"put empty value", encodePut(1, "k", nil),
			Command{Op: OpPut, RequestID: 1, Key: []byte("k")}},
		{"put empty key", encodePut(2, "", []byte("v")),
			Command{Op: OpPut, RequestID: 2, Value: []byte("v")}},
		{"put binary value with zero bytes", encodePut(3, "bin", []byte{0, 0, 1, 0, 0xff, 0}),
			Command{Op: OpPut, RequestID: 3, Key: []byte("bin"), Value: []byte{0, 0, 1, 0, 0xff, 0}}},
		{"put key with slashes", encodePut(300, "/a/b/", []byte("v")),
			Command{Op: OpPut, RequestID: 300, Key: []byte("/a/b/"), Value: []byte("v")}},
		{"put 4096-byte key", encodePut(math.MaxUint64, longKey, []byte("v")),
			Command{Op: OpPut, RequestID: math.MaxUint64, Key: []byte(longKey), Value: []byte("v")}},
		{"put 1 MiB value", encodePut(5, "big", largeValue),
			Command{Op: OpPut, RequestID: 5, Key: []byte("big"), Value: largeValue}},
		{"delete", encodeDelete(6, "a/b"),
			Command{Op: OpDelete, RequestID: 6, Key: []byte("a/b")}},
		{"delete binary key", encodeDelete(7, "\x00k\x00"),
			Command{Op: OpDelete, RequestID: 7, Key: []byte("\x00k\x00")}},
		{"delete 4096-byte key", encodeDelete(8, longKey),
			Command{Op: OpDelete, RequestID: 8, Key: []byte(longKey)}},
		{"advertise", EncodeAdvertise(9, 3, "http://127.0.0.1:2379"),
			Command{Op: OpAdvertise, RequestID: 9, MemberID: 3, ClientURL: "http://127.0.0.1:2379"}},
		{"advertise empty URL, max ids", EncodeAdvertise(math.MaxUint64, math.MaxUint64, ""),
			Command{Op: OpAdvertise, RequestID: math.MaxUint64, MemberID: math.MaxUint64}},
		{"EncodeWrite put without options is a plain put", EncodeWrite(10, true, "k", []byte("v"), keyspace.Condition{}, idempotency.Key{}, 0),
			Command{Op: OpPut, RequestID: 10, Key: []byte("k"), Value: []byte("v")}},
		{"EncodeWrite delete without options is a plain delete", EncodeWrite(11, false, "k", nil, keyspace.Condition{}, idempotency.Key{}, 0),
			Command{Op: OpDelete, RequestID: 11, Key: []byte("k")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeCommand(tt.data)
			if err != nil {
				t.Fatalf("DecodeCommand: %v", err)
			}
			if diff := commandDiff(got, tt.want); diff != "" {
				t.Errorf("decoded command differs: %s", diff)
			}
		})
	}
}

// TestEncodeWriteOptionsRoundTrip proves that a put or a delete carrying a
// condition, an idempotency key or both is an OpPutWith or OpDeleteWith
// entry that decodes to exactly the condition and key it was built with:
// every member evaluates the condition, and records the key, from the
// entry alone.
func TestEncodeWriteOptionsRoundTrip(t *testing.T) {
	tags := &keyspace.TagList{Indexes: []uint64{0, 7, 1<<63 - 1}, Weak: []bool{false, true, false}}
	idem := idempotency.Key{Name: "retry-1", Fingerprint: math.MaxUint64, Window: 100000}
	longKey := strings.Repeat("k", keyspace.MaxKeyBytes)
	for _, tc := range []struct {
		name  string
		put   bool
		key   string
		value []byte
		cond  keyspace.Condition
		idem  idempotency.Key
	}{
		{"put If-Match tags", true, "a/b", []byte("v"), keyspace.Condition{IfMatch: tags}, idempotency.Key{}},
		{"put If-None-Match *", true, "a", []byte{0, 1, 0}, keyspace.Condition{IfNoneMatch: &keyspace.TagList{Any: true}}, idempotency.Key{}},
		{"put If-Match * and If-None-Match tags", true, "", nil,
			keyspace.Condition{IfMatch: &keyspace.TagList{Any: true}, IfNoneMatch: &keyspace.TagList{Indexes: []uint64{3}, Weak: []bool{true}}}, idempotency.Key{}},
		{"put with an idempotency key only", true, longKey, []byte("value"), keyspace.Condition{}, idem},
		{"put with a condition and a key", true, "k", []byte("v"), keyspace.Condition{IfMatch: tags, IfNoneMatch: &keyspace.TagList{Any: true}}, idem},
		{"delete If-Match", false, "k", nil, keyspace.Condition{IfMatch: &keyspace.TagList{Indexes: []uint64{12}, Weak: []bool{false}}}, idempotency.Key{}},
		{"delete with a key, window 0", false, "\x00k", nil, keyspace.Condition{}, idempotency.Key{Name: "x", Fingerprint: 0}},
		{"delete with a condition and a key", false, "k", nil, keyspace.Condition{IfNoneMatch: tags}, idem},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := EncodeWrite(42, tc.put, tc.key, tc.value, tc.cond, tc.idem, 0)
			want := Command{Op: OpDeleteWith, RequestID: 42, Key: []byte(tc.key), Cond: tc.cond, Idem: tc.idem}
			if tc.put {
				want.Op, want.Value = OpPutWith, tc.value
			}
			got, err := DecodeCommand(data)
			if err != nil {
				t.Fatalf("DecodeCommand: %v", err)
			}
			if diff := commandDiff(got, want); diff != "" {
				t.Errorf("decoded command differs: %s", diff)
			}
		})
	}
}

// TestDecodeCommandCorrupt proves that malformed entries are rejected with
// ErrCorrupt instead of panicking, since a panic in the apply loop would
// take the whole member down.
func TestDecodeCommandCorrupt(t *testing.T) {
	maxVarint := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}
	overflowVarint := bytes.Repeat([]byte{0xff}, 11)
	keyed := EncodeWrite(1, true, "k", []byte("v"), keyspace.Condition{}, idempotency.Key{Name: "n", Fingerprint: 1, Window: 1}, 0)
	tests := []struct {
		name string
		data []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"unknown op 0", []byte{0, 1}},
		{"unknown op 4", append([]byte{4}, encodePut(1, "k", []byte("v"))[1:]...)},
		{"unknown op 255", []byte{255, 1, 1, 'k'}},
		{"put without request id", []byte{byte(OpPut)}},
		{"put truncated request id", []byte{byte(OpPut), 0x80}},
		{"put overflowing request id", append([]byte{byte(OpPut)}, overflowVarint...)},
		{"put without key length", []byte{byte(OpPut), 5}},
		{"put truncated key length", []byte{byte(OpPut), 5, 0x80}},
		{"put key length beyond input", []byte{byte(OpPut), 5, 10, 'a', 'b'}},
		{"put key length max uint64", append([]byte{byte(OpPut), 5}, maxVarint...)},
		{"delete truncated request id", []byte{byte(OpDelete), 0x80, 0x80}},
		{"advertise without member id", []byte{byte(OpAdvertise), 5}},
		{"advertise truncated member id", []byte{byte(OpAdvertise), 5, 0x81}},
		{"put with options, no options", []byte{byte(OpPutWith), 5}},
		{"delete with options, unknown flag", []byte{byte(OpDeleteWith), 5, 1 << 5, 'k'}},
		{"If-Match * without If-Match", []byte{byte(OpDeleteWith), 5, optIfMatchAny, 'k'}},
		{"If-None-Match * without If-None-Match", []byte{byte(OpDeleteWith), 5, optIfNoneMatchAny, 'k'}},
		{"tag count beyond input", []byte{byte(OpDeleteWith), 5, optIfMatch, 9, 2}},
		{"truncated tag", []byte{byte(OpDeleteWith), 5, optIfMatch, 1, 0x80}},
		{"empty idempotency key", []byte{byte(OpDeleteWith), 5, optIdempotencyKey, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 'k'}},
		{"truncated fingerprint", []byte{byte(OpDeleteWith), 5, optIdempotencyKey, 1, 'n', 0, 0, 0}},
		{"keyed put cut in its fingerprint", keyed[:6]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			catchPanic(t, func() { _, err = DecodeCommand(tt.data) })
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("DecodeCommand(%x) error = %v, want one wrapping ErrCorrupt", tt.data, err)
			}
		})
	}
}

// FuzzDecodeCommand proves that no input makes DecodeCommand panic or fail
// with a foreign error, and that an encodePut entry built from arbitrary
// bytes always decodes back to its key and value.
func FuzzDecodeCommand(f *testing.F) {
	f.Add(encodePut(1, "k", []byte("v")))
	f.Add(encodePut(math.MaxUint64, "a/b", []byte{0, 0, 0}))
	f.Add(encodeDelete(2, "k"))
	f.Add(EncodeAdvertise(3, 1, "http://127.0.0.1:2379"))
	f.Add([]byte{})
	f.Add([]byte{byte(OpPut), 0x80})
	f.Add(EncodeBatch([][]byte{encodePut(4, "k", []byte("v")), encodeDelete(5, "k")}))
	f.Add([]byte{byte(OpBatch), 2, 1})
	f.Add(EncodeWrite(6, true, "k", []byte("v"),
		keyspace.Condition{IfMatch: &keyspace.TagList{Indexes: []uint64{3}, Weak: []bool{true}}, IfNoneMatch: &keyspace.TagList{Any: true}},
		idempotency.Key{Name: "n", Fingerprint: 9, Window: 10}, 4))
	f.Add(EncodeGrant(7, 10, idempotency.Key{Name: "g", Fingerprint: 1, Window: 2}))
	f.Add(EncodeRevoke(8, 7, ReasonExpired))
	f.Add(EncodeWindow(9, 1, 2, []uint64{7, 8}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := DecodeCommand(data); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("DecodeCommand(%x) error %v does not wrap ErrCorrupt", data, err)
		}
		err := ForEachCommand(data, func(c []byte) {
			if _, err := DecodeCommand(c); err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeCommand(%x), a command of %x: error %v does not wrap ErrCorrupt", c, data, err)
			}
		})
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("ForEachCommand(%x) error %v does not wrap ErrCorrupt", data, err)
		}
		key, value := string(data[:len(data)/2]), data[len(data)/2:]
		want := Command{Op: OpPut, RequestID: uint64(len(data)), Key: []byte(key), Value: value}
		got, err := DecodeCommand(encodePut(want.RequestID, key, value))
		if err != nil {
			t.Fatalf("decoding encodePut(%d, %q, %x): %v", want.RequestID, key, value, err)
		}
		if diff := commandDiff(got, want); diff != "" {
			t.Fatalf("encodePut(%d, %q, %x) round trip: %s", want.RequestID, key, value, diff)
		}
	})
}

// TestBatchRoundTrip proves a batch entry yields its commands in order,
// that a plain entry is its own single command, and that a corrupt batch
// is reported, not half-read silently: the commands before the damage are
// all that is handed out.
func TestBatchRoundTrip(t *testing.T) {
	commands := [][]byte{encodePut(1, "a", []byte("1")), encodeDelete(2, "b"), EncodeAdvertise(3, 1, "http://127.0.0.1:1"), encodePut(4, "", nil)}
	var got [][]byte
	collect := func(c []byte) { got = append(got, c) }
	if err := ForEachCommand(EncodeBatch(commands), collect); err != nil {
		t.Fatalf("batch: %v", err)
	}
	if !slices.EqualFunc(got, commands, bytes.Equal) {
		t.Fatalf("batch gave %x, want %x", got, commands)
	}
	got = nil
	if err := ForEachCommand(commands[0], collect); err != nil || len(got) != 1 || !bytes.Equal(got[0], commands[0]) {
		t.Fatalf("plain entry gave %x, %v; want itself", got, err)
	}
	whole := EncodeBatch(commands)
	for _, bad := range [][]byte{whole[:len(whole)-1], append(slices.Clone(whole), 0), {byte(OpBatch)}, {byte(OpBatch), 3, 1, 0}} {
		if err := ForEachCommand(bad, func([]byte) {}); !errors.Is(err, ErrCorrupt) {
			t.Errorf("ForEachCommand(%x) = %v, want ErrCorrupt", bad, err)
		}
	}
	got = nil
	if err := ForEachCommand(whole[:len(whole)-1], collect); !errors.Is(err, ErrCorrupt) || !slices.EqualFunc(got, commands[:3], bytes.Equal) {
		t.Errorf("a batch cut in its last command gave %x, %v; want the first three commands and ErrCorrupt", got, err)
	}
}

// commandDiff describes how got differs from want, or returns "".
func commandDiff(got, want Command) string {
	var diffs []string
	if got.Op != want.Op || got.RequestID != want.RequestID || got.MemberID != want.MemberID {
		diffs = append(diffs, fmt.Sprintf("op/requestID/memberID = %d/%d/%d, want %d/%d/%d",
			got.Op, got.RequestID, got.MemberID, want.Op, want.RequestID, want.MemberID))
	}
	if !bytes.Equal(got.Key, want.Key) {
		diffs = append(diffs, fmt.Sprintf("key = %.40q (%d bytes), want %.40q (%d bytes)", got.Key, len(got.Key), want.Key, len(want.Key)))
	}
	if !bytes.Equal(got.Value, want.Value) {
		diffs = append(diffs, fmt.Sprintf("value = %.40x (%d bytes), want %.40x (%d bytes)", got.Value, len(got.Value), want.Value, len(want.Value)))
	}
	if got.ClientURL != want.ClientURL {
		diffs = append(diffs, fmt.Sprintf("clientURL = %q, want %q", got.ClientURL, want.ClientURL))
	}
	if !tagListEqual(got.Cond.IfMatch, want.Cond.IfMatch) || !tagListEqual(got.Cond.IfNoneMatch, want.Cond.IfNoneMatch) {
		diffs = append(diffs, fmt.Sprintf("condition = If-Match %q If-None-Match %q (given %v, %v), want %q %q (given %v, %v)",
			got.Cond.IfMatch, got.Cond.IfNoneMatch, got.Cond.IfMatch.Given(), got.Cond.IfNoneMatch.Given(),
			want.Cond.IfMatch, want.Cond.IfNoneMatch, want.Cond.IfMatch.Given(), want.Cond.IfNoneMatch.Given()))
	}
	if got.Idem != want.Idem {
		diffs = append(diffs, fmt.Sprintf("idempotency key = %+v, want %+v", got.Idem, want.Idem))
	}
	if got.TTL != want.TTL || got.Lease != want.Lease || got.Reason != want.Reason || got.Origin != want.Origin || !slices.Equal(got.Leases, want.Leases) {
		diffs = append(diffs, fmt.Sprintf("ttl/lease/reason/origin/leases = %d/%d/%d/%v/%v, want %d/%d/%d/%v/%v",
			got.TTL, got.Lease, got.Reason, got.Origin, got.Leases, want.TTL, want.Lease, want.Reason, want.Origin, want.Leases))
	}
	return strings.Join(diffs, "; ")
}

// TestLeaseCommandsRoundTrip proves the lease commands, and a put that
// attaches its key to a lease, decode to what was encoded; and that a
// damaged one is refused, not misread.
func TestLeaseCommandsRoundTrip(t *testing.T) {
	idem := idempotency.Key{Name: "g-1", Fingerprint: 7, Window: 100}
	for _, tc := range []struct {
		name string
		data []byte
		want Command
	}{
		{"grant", EncodeGrant(1, 30, idempotency.Key{}), Command{Op: OpGrant, RequestID: 1, TTL: 30}},
		{"grant with a key", EncodeGrant(2, math.MaxInt32, idem), Command{Op: OpGrant, RequestID: 2, TTL: math.MaxInt32, Idem: idem}},
		{"revoke", EncodeRevoke(3, 41, ReasonRevoked), Command{Op: OpRevoke, RequestID: 3, Lease: 41, Reason: ReasonRevoked}},
		{"expire", EncodeRevoke(4, math.MaxUint64, ReasonExpired), Command{Op: OpRevoke, RequestID: 4, Lease: math.MaxUint64, Reason: ReasonExpired}},
		{"window", EncodeWindow(5, 2, 99, []uint64{7, 1 << 40}), Command{Op: OpWindow, RequestID: 5, Origin: [2]uint64{2, 99}, Leases: []uint64{7, 1 << 40}}},
		{"empty window", EncodeWindow(6, 1, 0, nil), Command{Op: OpWindow, RequestID: 6, Origin: [2]uint64{1, 0}}},
		{"put with a lease", EncodeWrite(7, true, "svc/a", []byte("v"), keyspace.Condition{}, idempotency.Key{}, 41),
			Command{Op: OpPutWith, RequestID: 7, Key: []byte("svc/a"), Value: []byte("v"), Lease: 41}},
		{"put with everything", EncodeWrite(8, true, "k", nil, keyspace.Condition{IfNoneMatch: &keyspace.TagList{Any: true}}, idem, 9),
			Command{Op: OpPutWith, RequestID: 8, Key: []byte("k"), Cond: keyspace.Condition{IfNoneMatch: &keyspace.TagList{Any: true}}, Idem: idem, Lease: 9}},
	} {
		got, err := DecodeCommand(tc.data)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if diff := commandDiff(got, tc.want); diff != "" {
			t.Errorf("%s: %s", tc.name, diff)
		}
	}
	grant := EncodeGrant(2, 30, idem)
	for _, bad := range [][]byte{
		grant[:len(grant)-1],                          // the window cut short
		append(slices.Clone(grant), 0),                // a byte after it
		grant[:len(grant)-10],                         // the fingerprint cut short
		EncodeRevoke(3, 41, 3),                        // no such reason
		EncodeRevoke(3, 41, 1)[:3],                    // no reason
		append(EncodeRevoke(3, 41, 1), 1),             // two
		append(EncodeWindow(5, 2, 9, []uint64{7}), 1), // a byte after the ids
		EncodeWindow(5, 2, 9, []uint64{7, 300})[:6],   // an id cut short
		{byte(OpPutWith), 1, optLease, 0, 'k'},        // lease 0
		{byte(OpDeleteWith), 1, optLease, 5, 'k'},     // a delete with a lease
		{byte(OpPutWith), 1, optLease},                // no lease id
	} {
		if _, err := DecodeCommand(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("DecodeCommand(%x) = %v, want ErrCorrupt", bad, err)
		}
	}
}

// tagListEqual reports whether two tag lists are the same header: both
// absent, or both given with the same tags.
func tagListEqual(a, b *keyspace.TagList) bool {
	if a.Given() != b.Given() {
		return false
	}
	return !a.Given() || a.Any == b.Any && slices.Equal(a.Indexes, b.Indexes) && slices.Equal(a.Weak, b.Weak)
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
