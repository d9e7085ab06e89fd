package idempotency

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"

	"raftkv/keyspace"
)

// TestParse proves the Idempotency-Key header is read as given, one to
// MaxKeyBytes visible ASCII characters, once; absent is ""; and anything
// else is refused with ErrBadKey.
func TestParse(t *testing.T) {
	if key, err := Parse(http.Header{"Other": {"x"}}); key != "" || err != nil {
		t.Errorf("Parse without the header = %q, %v; want none", key, err)
	}
	for _, key := range []string{"a", "retry-1", "!~", strings.Repeat("k", MaxKeyBytes), `"quoted",and;more`} {
		if got, err := Parse(http.Header{"Idempotency-Key": {key}}); got != key || err != nil {
			t.Errorf("Parse(%q) = %q, %v; want it as given", key, got, err)
		}
	}
	for _, lines := range [][]string{
		{""}, {"a b"}, {" a"}, {"a\t"}, {"\x7f"}, {"é"}, {"a\x00"}, {strings.Repeat("k", MaxKeyBytes+1)}, {"a", "a"}, {"a", "b"}, {},
	} {
		if got, err := Parse(http.Header{"Idempotency-Key": lines}); !errors.Is(err, ErrBadKey) || got != "" {
			t.Errorf("Parse(%q) = %q, %v; want ErrBadKey", lines, got, err)
		}
	}
}

// TestKeyOf proves a request's Key carries its Idempotency-Key, the
// fingerprint of its parts and the proposer's window, and that a request
// without the header has the zero Key, as one with a bad header does,
// with the error.
func TestKeyOf(t *testing.T) {
	parts := [][]byte{[]byte("PUT"), []byte("/keys/a"), []byte("v")}
	k, err := KeyOf(http.Header{"Idempotency-Key": {"retry-1"}}, 500, parts...)
	if want := (Key{Name: "retry-1", Fingerprint: Fingerprint(parts...), Window: 500}); err != nil || k != want {
		t.Errorf("KeyOf = %+v, %v; want %+v", k, err, want)
	}
	if k, err := KeyOf(http.Header{}, 500, parts...); err != nil || k != (Key{}) {
		t.Errorf("KeyOf without the header = %+v, %v; want the zero Key", k, err)
	}
	if k, err := KeyOf(http.Header{"Idempotency-Key": {"a b"}}, 500, parts...); !errors.Is(err, ErrBadKey) || k != (Key{}) {
		t.Errorf("KeyOf with a bad header = %+v, %v; want ErrBadKey and the zero Key", k, err)
	}
}

// TestFingerprint proves a fingerprint is the same for the same parts, in
// this process and in every other (it is computed by the proposer and
// compared by every member), and differs when a part does, when parts
// move between one another, or when they come in another order.
func TestFingerprint(t *testing.T) {
	of := func(parts ...string) uint64 {
		var bs [][]byte
		for _, s := range parts {
			bs = append(bs, []byte(s))
		}
		return Fingerprint(bs...)
	}
	// Values computed once and fixed here: a change of algorithm would
	// make members of one cluster fingerprint one request differently.
	for _, tc := range []struct {
		parts []string
		want  uint64
	}{
		{nil, 0xcbf29ce484222325}, // FNV-1a's offset basis: no parts, nothing hashed
		{[]string{""}, fnv1a([]byte{0})},
		{[]string{"PUT", "/keys/a", "v"}, fnv1a([]byte("\x03PUT\x07/keys/a\x01v"))},
	} {
		if got := of(tc.parts...); got != tc.want {
			t.Errorf("Fingerprint(%q) = %#x, want %#x", tc.parts, got, tc.want)
		}
	}
	base := of("PUT", "/keys/a", "v")
	if of("PUT", "/keys/a", "v") != base {
		t.Error("one request fingerprints two ways")
	}
	for _, other := range [][]string{
		{"PUT", "/keys/a", "w"},
		{"PUT", "/keys/b", "v"},
		{"DELETE", "/keys/a", "v"},
		{"PUT", "/keys/av", ""},
		{"PUT", "/keys/", "av"},
		{"PUT", "/keys/a", "v", ""},
		{"/keys/a", "PUT", "v"},
		{"PUT/keys/av"},
	} {
		if of(other...) == base {
			t.Errorf("Fingerprint(%q) = Fingerprint of PUT /keys/a v", other)
		}
	}
}

// fnv1a is 64-bit FNV-1a, written out: the fingerprint's definition.
func fnv1a(b []byte) uint64 {
	h := uint64(0xcbf29ce484222325)
	for _, c := range b {
		h ^= uint64(c)
		h *= 0x100000001b3
	}
	return h
}

// recordNames is the names of records, oldest first.
func recordNames(rs *Records) []string {
	var names []string
	for _, r := range rs.List() {
		names = append(names, r.Name)
	}
	return names
}

// TestRecords proves the record answers a retry exactly as the first
// attempt was answered, refuses a key reused for another request with
// ErrKeyReused, answers nothing for a key it does not hold or no key, and
// keeps the newest window records, evicting the oldest first, by the
// window each entry carries.
func TestRecords(t *testing.T) {
	rs := NewRecords()
	key := func(name string, fingerprint, window uint64) Key {
		return Key{Name: name, Fingerprint: fingerprint, Window: window}
	}
	created := Answer{Index: 7, Version: keyspace.Version{CreateIndex: 7, ModIndex: 7}, HasVersion: true, Created: true}
	if _, ok := rs.Replay(key("a", 1, 3)); ok {
		t.Fatal("an empty record replays a")
	}
	rs.Remember(key("a", 1, 3), created)
	if got, ok := rs.Replay(key("a", 1, 3)); !ok || got != created {
		t.Errorf("Replay(a) = %+v, %v; want %+v", got, ok, created)
	}
	if got, ok := rs.Replay(key("a", 1, 100)); !ok || got != created {
		t.Errorf("Replay(a) with another window = %+v, %v; want the same answer", got, ok)
	}
	if got, ok := rs.Replay(key("a", 2, 3)); !ok || !errors.Is(got.Err, ErrKeyReused) {
		t.Errorf("Replay(a) with another fingerprint = %+v, %v; want ErrKeyReused", got, ok)
	}
	if got, ok := rs.Replay(Key{}); ok {
		t.Errorf("Replay without a key = %+v, want nothing", got)
	}
	failed := Answer{Index: 8, Err: keyspace.ErrPreconditionFailed}
	rs.Remember(key("b", 2, 3), failed)
	if got, ok := rs.Replay(key("b", 2, 3)); !ok || !errors.Is(got.Err, keyspace.ErrPreconditionFailed) || got.Index != 8 {
		t.Errorf("Replay(b) = %+v, %v; want the failure it was answered", got, ok)
	}
	rs.Remember(key("c", 3, 3), Answer{Index: 9})
	if got := recordNames(rs); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("records %q, want a, b, c", got)
	}
	rs.Remember(key("d", 4, 3), Answer{Index: 10})
	if got := recordNames(rs); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Fatalf("records after a fourth in a window of 3: %q, want the oldest, a, gone", got)
	}
	if _, ok := rs.Replay(key("a", 1, 3)); ok {
		t.Error("an evicted key still replays")
	}
	// An entry with a smaller window evicts down to it.
	rs.Remember(key("e", 5, 2), Answer{Index: 11})
	if got := recordNames(rs); !slices.Equal(got, []string{"d", "e"}) {
		t.Fatalf("records after an entry with window 2: %q, want d, e", got)
	}
	// A window of 0 keeps the newest record.
	rs.Remember(key("f", 6, 0), Answer{Index: 12})
	if got := recordNames(rs); !slices.Equal(got, []string{"f"}) {
		t.Fatalf("records after an entry with window 0: %q, want f alone", got)
	}
	// Many more, in a larger window: the oldest go first, in order.
	var want []string
	for i := range 100 {
		name := string(rune('A'+i%26)) + strings.Repeat("x", i/26)
		rs.Remember(key(name, uint64(i), 10), Answer{Index: uint64(100 + i)})
		want = append(want, name)
	}
	if got := recordNames(rs); !slices.Equal(got, want[90:]) {
		t.Fatalf("records after 100 in a window of 10: %q, want %q", got, want[90:])
	}
	for _, name := range want[:90] {
		if _, ok := rs.Replay(key(name, 0, 10)); ok {
			t.Fatalf("evicted %s still replays", name)
		}
	}
	for i, name := range want[90:] {
		if got, ok := rs.Replay(key(name, uint64(90+i), 10)); !ok || got.Index != uint64(190+i) {
			t.Fatalf("Replay(%s) = %+v, %v; want index %d", name, got, ok, 190+i)
		}
	}
}

// TestNewRecords proves a record made from a snapshot's list keeps it
// oldest first, answers from it, and keeps the first of a name given
// twice, which Remember does too.
func TestNewRecords(t *testing.T) {
	rs := NewRecords(
		&Record{Name: "a", Fingerprint: 1, Answer: Answer{Index: 1}},
		&Record{Name: "b", Fingerprint: 2, Answer: Answer{Index: 2}},
		&Record{Name: "a", Fingerprint: 3, Answer: Answer{Index: 3}},
	)
	if got := recordNames(rs); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("records %q, want a, b", got)
	}
	if got, ok := rs.Replay(Key{Name: "a", Fingerprint: 1}); !ok || got.Index != 1 {
		t.Errorf("Replay(a) = %+v, %v; want the first a's answer", got, ok)
	}
	if got, ok := rs.Replay(Key{Name: "a", Fingerprint: 3}); !ok || !errors.Is(got.Err, ErrKeyReused) {
		t.Errorf("Replay(a) with the second a's fingerprint = %+v, %v; want ErrKeyReused", got, ok)
	}
	rs.Remember(Key{Name: "b", Fingerprint: 9, Window: 10}, Answer{Index: 9})
	if got, ok := rs.Replay(Key{Name: "b", Fingerprint: 2}); !ok || got.Index != 2 || len(rs.List()) != 2 {
		t.Errorf("after remembering b again: Replay(b) = %+v, %v, %d records; want the first b's answer, 2 records", got, ok, len(rs.List()))
	}
	if got := len(NewRecords().List()); got != 0 {
		t.Errorf("NewRecords() holds %d records, want none", got)
	}
	// A request without a key is never a replay, whatever the record holds.
	if got, ok := NewRecords(&Record{Answer: Answer{Index: 1}}).Replay(Key{}); ok {
		t.Errorf("Replay without a key = %+v from a record with an empty name, want nothing", got)
	}
}
