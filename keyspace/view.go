package keyspace

import (
	"encoding/base64"
	"unicode/utf8"
)

// View is a key as JSON shows it: one key of a listing, or the data of a
// watch event. Keys and values that are valid UTF-8, as config mostly is,
// come as JSON strings; others in base64 (keyBase64, valueBase64), byte
// for byte.
type View struct {
	Key         string  `json:"key,omitempty"`
	KeyBase64   string  `json:"keyBase64,omitempty"`
	CreateIndex uint64  `json:"createIndex,omitempty"`
	ModIndex    uint64  `json:"modIndex,omitempty"`
	Value       *string `json:"value,omitempty"`
	ValueBase64 *string `json:"valueBase64,omitempty"`
	Lease       uint64  `json:"lease,omitempty"` // the lease the key lives by
}

// ViewOf is key as a listing or an event shows it: its name only if
// namesOnly; else with its versions, and with its value if withValue.
func ViewOf(key string, v Value, namesOnly, withValue bool) View {
	var view View
	view.Key, view.KeyBase64 = TextOrBase64(key)
	if namesOnly {
		return view
	}
	view.CreateIndex, view.ModIndex, view.Lease = v.CreateIndex, v.ModIndex, v.Lease
	if withValue {
		text, b64 := TextOrBase64(v.Data)
		if b64 == "" {
			view.Value = &text
		} else {
			view.ValueBase64 = &b64
		}
	}
	return view
}

// TextOrBase64 is s as a JSON string when it is valid UTF-8 (and "" for
// base64), or else "" and its base64.
func TextOrBase64(s string) (text, b64 string) {
	if utf8.ValidString(s) {
		return s, ""
	}
	return "", base64.StdEncoding.EncodeToString([]byte(s))
}
