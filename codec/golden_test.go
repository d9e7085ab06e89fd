package codec

import (
	"bytes"
	"encoding/hex"
	"testing"

	"raftkv/idempotency"
	"raftkv/keyspace"
	"raftkv/membership"
)

// goldenHex is b in hex, failing the test if it is not.
func goldenHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEntryFormatGolden proves the entries raftkv writes are byte for byte
// those it wrote before, and that those bytes decode to the commands they
// were made from: every member decodes the same WAL, including entries an
// older raftkv wrote, so the format may grow but never change. (The bytes
// are what raftkv wrote before its code was split into packages.)
func TestEntryFormatGolden(t *testing.T) {
	cond := keyspace.Condition{IfMatch: &keyspace.TagList{Indexes: []uint64{5, 6}, Weak: []bool{false, true}}, IfNoneMatch: &keyspace.TagList{Any: true}}
	idem := idempotency.Key{Name: "retry", Fingerprint: 0x0102030405060708, Window: 100}
	put, del := encodePut(1, "k", []byte("v")), encodeDelete(2, "a/b")
	for _, tc := range []struct {
		name   string
		golden string
		data   []byte
		want   Command
	}{
		{"put", "0101016b76", put, Command{Op: OpPut, RequestID: 1, Key: []byte("k"), Value: []byte("v")}},
		{"delete", "0202612f62", del, Command{Op: OpDelete, RequestID: 2, Key: []byte("a/b")}},
		{"advertise", "030307687474703a2f2f3132372e302e302e313a32333739", EncodeAdvertise(3, 7, "http://127.0.0.1:2379"),
			Command{Op: OpAdvertise, RequestID: 3, MemberID: 7, ClientURL: "http://127.0.0.1:2379"}},
		{"put with conditions and a key", "05041d020a0d057265747279010203040506070864016b76", EncodeWrite(4, true, "k", []byte("v"), cond, idem, 0),
			Command{Op: OpPutWith, RequestID: 4, Key: []byte("k"), Value: []byte("v"), Cond: cond, Idem: idem}},
		{"delete with If-None-Match", "06050401126b",
			EncodeWrite(5, false, "k", nil, keyspace.Condition{IfNoneMatch: &keyspace.TagList{Indexes: []uint64{9}, Weak: []bool{false}}}, idempotency.Key{}, 0),
			Command{Op: OpDeleteWith, RequestID: 5, Key: []byte("k"), Cond: keyspace.Condition{IfNoneMatch: &keyspace.TagList{Indexes: []uint64{9}, Weak: []bool{false}}}}},
		{"delete with a key", "06061001640000000000000001016b", EncodeWrite(6, false, "k", nil, keyspace.Condition{}, idempotency.Key{Name: "d", Fingerprint: 1, Window: 1}, 0),
			Command{Op: OpDeleteWith, RequestID: 6, Key: []byte("k"), Idem: idempotency.Key{Name: "d", Fingerprint: 1, Window: 1}}},
	} {
		golden := goldenHex(t, tc.golden)
		if !bytes.Equal(tc.data, golden) {
			t.Errorf("%s: encoded as %x, want %s", tc.name, tc.data, tc.golden)
		}
		got, err := DecodeCommand(golden)
		if err != nil {
			t.Errorf("%s: decoding %s: %v", tc.name, tc.golden, err)
		} else if diff := commandDiff(got, tc.want); diff != "" {
			t.Errorf("%s: %s decodes to a different command: %s", tc.name, tc.golden, diff)
		}
	}
	const batch = "0402050101016b76050202612f62"
	if got := EncodeBatch([][]byte{put, del}); !bytes.Equal(got, goldenHex(t, batch)) {
		t.Errorf("batch: encoded as %x, want %s", got, batch)
	}
	var commands [][]byte
	if err := ForEachCommand(goldenHex(t, batch), func(c []byte) { commands = append(commands, c) }); err != nil || len(commands) != 2 ||
		!bytes.Equal(commands[0], put) || !bytes.Equal(commands[1], del) {
		t.Errorf("batch %s gave %x, %v; want the put and the delete", batch, commands, err)
	}
}

// TestSnapshotFormatGolden proves a snapshot is written byte for byte as
// the format says (version 4: version 3's, with a lease per key and a last
// section of leases), and that one written by an older raftkv (version 3)
// decodes to the state it was taken from, every recorded answer's error
// included: its code is its position in answerErrors, which may grow but
// never be reordered. (The version 3 bytes are what raftkv wrote before
// its code was split into packages, when the last error was
// ErrCorruptEntry: a conf change it could not read, now
// membership.ErrBadChange.)
func TestSnapshotFormatGolden(t *testing.T) {
	const golden = "0402010114687474703a2f2f31302e302e302e313a323338300114687474703a2f2f31302e302e302e313a3233373900" +
		"040114687474703a2f2f31302e302e302e343a3233383000010103020161013104090001620005050006026f6b00000000000000010009030409026e66" +
		"0000000000000002010a0000000270660000000000000003020b020409026d650000000000000004030c000000026d6e0000000000000005040d00000002" +
		"62630000000000000006050e00000000"
	const goldenV3 = "0302010114687474703a2f2f31302e302e302e313a323338300114687474703a2f2f31302e302e302e313a3233373900" +
		"040114687474703a2f2f31302e302e302e343a3233383000010103020161013104090162000505" +
		"06026f6b00000000000000010009030409026e660000000000000002010a0000000270660000000000000003020b020409" +
		"026d650000000000000004030c000000026d6e0000000000000005040d0000000262630000000000000006050e000000"
	want := snapshotContent{
		members: []membership.Member{
			{ID: 1, PeerURLs: []string{"http://10.0.0.1:2380"}, ClientURLs: []string{"http://10.0.0.1:2379"}},
			{ID: 4, PeerURLs: []string{"http://10.0.0.4:2380"}, IsLearner: true},
		},
		removed: []uint64{3},
		kv: map[string]keyspace.Value{
			"a": {Data: "1", Version: keyspace.Version{CreateIndex: 4, ModIndex: 9}},
			"b": {Data: "", Version: keyspace.Version{CreateIndex: 5, ModIndex: 5}},
		},
		records: []*idempotency.Record{
			{Name: "ok", Fingerprint: 1, Answer: idempotency.Answer{Index: 9, Version: keyspace.Version{CreateIndex: 4, ModIndex: 9}, HasVersion: true, Created: true}},
			{Name: "nf", Fingerprint: 2, Answer: idempotency.Answer{Index: 10, Err: keyspace.ErrKeyNotFound}},
			{Name: "pf", Fingerprint: 3, Answer: idempotency.Answer{Index: 11, Err: keyspace.ErrPreconditionFailed, Version: keyspace.Version{CreateIndex: 4, ModIndex: 9}, HasVersion: true}},
			{Name: "me", Fingerprint: 4, Answer: idempotency.Answer{Index: 12, Err: membership.ErrMemberExists}},
			{Name: "mn", Fingerprint: 5, Answer: idempotency.Answer{Index: 13, Err: membership.ErrMemberNotFound}},
			{Name: "bc", Fingerprint: 6, Answer: idempotency.Answer{Index: 14, Err: membership.ErrBadChange}},
		},
	}
	if got := want.state().Encode(); !bytes.Equal(got, goldenHex(t, golden)) {
		t.Errorf("encoded as\n%x\nwant\n%s", got, golden)
	}
	for _, g := range []string{golden, goldenV3} {
		got, err := decodeWholeSnapshot(goldenHex(t, g))
		if err != nil {
			t.Fatalf("decoding the golden snapshot version %s: %v", g[:2], err)
		}
		if !got.equal(want) { // errors compared with errors.Is
			t.Errorf("the golden snapshot version %s decodes to %v, want %v", g[:2], got, want)
		}
	}
}
