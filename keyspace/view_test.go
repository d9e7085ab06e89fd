package keyspace

import (
	"encoding/json"
	"testing"
)

// TestTextOrBase64 proves valid UTF-8 stays text and anything else is
// base64, byte for byte.
func TestTextOrBase64(t *testing.T) {
	for _, tc := range []struct{ in, text, b64 string }{
		{"", "", ""},
		{"config/db", "config/db", ""},
		{"héllo ✓", "héllo ✓", ""},
		{"\x00\n", "\x00\n", ""},
		{"\xff", "", "/w=="},
		{"a\xc3", "", "YcM="},
		{"\xed\xa0\x80", "", "7aCA"}, // a surrogate half: not valid UTF-8
	} {
		if text, b64 := TextOrBase64(tc.in); text != tc.text || b64 != tc.b64 {
			t.Errorf("TextOrBase64(%q) = %q, %q; want %q, %q", tc.in, text, b64, tc.text, tc.b64)
		}
	}
}

// TestViewOf proves how a listing or a watch event shows a key, as JSON:
// its name alone, or with its versions, and its value when asked for;
// names and values that are not UTF-8 in base64, and an empty value as an
// empty string, not left out.
func TestViewOf(t *testing.T) {
	v := Value{Data: "v1", Version: Version{CreateIndex: 3, ModIndex: 8}}
	for _, tc := range []struct {
		name                 string
		key                  string
		v                    Value
		namesOnly, withValue bool
		want                 string
	}{
		{"name only", "a/b", v, true, true, `{"key":"a/b"}`},
		{"versions", "a/b", v, false, false, `{"key":"a/b","createIndex":3,"modIndex":8}`},
		{"value", "a/b", v, false, true, `{"key":"a/b","createIndex":3,"modIndex":8,"value":"v1"}`},
		{"empty value", "e", Value{Version: Version{CreateIndex: 1, ModIndex: 1}}, false, true, `{"key":"e","createIndex":1,"modIndex":1,"value":""}`},
		{"binary key and value", "k\xff", Value{Data: "\x00\xff", Version: Version{CreateIndex: 2, ModIndex: 2}}, false, true,
			`{"keyBase64":"a/8=","createIndex":2,"modIndex":2,"valueBase64":"AP8="}`},
		{"binary key, name only", "\xff", v, true, false, `{"keyBase64":"/w=="}`},
		{"a deleted key", "gone", Value{Version: Version{CreateIndex: 4, ModIndex: 9}}, false, false, `{"key":"gone","createIndex":4,"modIndex":9}`},
	} {
		got, err := json.Marshal(ViewOf(tc.key, tc.v, tc.namesOnly, tc.withValue))
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: %s, %v; want %s", tc.name, got, err, tc.want)
		}
	}
}
