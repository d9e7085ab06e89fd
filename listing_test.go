package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"testing"
)

// listingGet lists target on member 1 and decodes the answer.
func listingGet(t *testing.T, c *testCluster, target string) (listingView, response) {
	t.Helper()
	r := do(t, "GET", c.url(1, target), "")
	if r.code != 200 {
		t.Fatalf("GET %s: %d %q", target, r.code, r.body)
	}
	var v listingView
	if err := json.Unmarshal([]byte(r.body), &v); err != nil {
		t.Fatalf("GET %s: %v in %q", target, err, r.body)
	}
	if got := r.header.Get("X-Raft-Index"); got != strconv.FormatUint(v.Index, 10) {
		t.Errorf("GET %s: X-Raft-Index %q, body index %d", target, got, v.Index)
	}
	return v, r
}

// listingKeys is the keys a listing shows, decoded.
func listingKeys(t *testing.T, v listingView) []string {
	t.Helper()
	var keys []string
	for _, e := range v.Entries {
		k := e.Key
		if e.KeyBase64 != "" {
			b, err := base64.StdEncoding.DecodeString(e.KeyBase64)
			if err != nil {
				t.Fatal(err)
			}
			k = string(b)
		}
		keys = append(keys, k)
	}
	return keys
}

// TestListKeys proves GET /keys/{prefix}/ lists the keys under a prefix in
// key order with their versions and values, pages with limit and after,
// gives names only with ?keys, lists everything at /keys/, answers at every
// level with X-Raft-Index, carries binary keys and values in base64
// exactly, and refuses what is not a listing's.
func TestListKeys(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	binKey, binValue := "app/\xff\x00k", "\x00\x01\xfe"
	writes := map[string]string{"app/b": "2", "app/a": "1", "app/c/d": "3", "apple": "x", "b/1": "y", binKey: binValue}
	index := map[string]uint64{}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range writes {
			if !yield(k) {
				return
			}
		}
	}) {
		index[k] = clusterPut(t, c, 1, url.PathEscape(k), writes[k])
	}
	want := []string{"app/a", "app/b", "app/c/d", binKey}

	for _, level := range []string{"", "?level=stale", "?level=consistent"} {
		v, _ := listingGet(t, c, "/keys/app/"+level)
		if got := listingKeys(t, v); !slices.Equal(got, want) || v.More {
			t.Errorf("list app/%s: %q more %t, want %q", level, got, v.More, want)
		}
		if v.Index < index[binKey] {
			t.Errorf("list app/%s: index %d, before the last write %d", level, v.Index, index[binKey])
		}
	}
	v, _ := listingGet(t, c, "/keys/app/")
	for i, e := range v.Entries {
		k := want[i]
		if e.CreateIndex != index[k] || e.ModIndex != index[k] {
			t.Errorf("%q: createIndex %d modIndex %d, want %d", k, e.CreateIndex, e.ModIndex, index[k])
		}
		var value string
		switch {
		case e.Value != nil && e.ValueBase64 == nil:
			value = *e.Value
		case e.ValueBase64 != nil && e.Value == nil:
			b, err := base64.StdEncoding.DecodeString(*e.ValueBase64)
			if err != nil {
				t.Fatal(err)
			}
			value = string(b)
		default:
			t.Fatalf("%q: value %v, valueBase64 %v: want exactly one", k, e.Value, e.ValueBase64)
		}
		if value != writes[k] {
			t.Errorf("%q: value %q, want %q", k, value, writes[k])
		}
	}
	if e := v.Entries[3]; e.Key != "" || e.ValueBase64 == nil {
		t.Errorf("binary key and value not in base64: %+v", e)
	}

	// Pages.
	var got []string
	after := ""
	for page := 0; ; page++ {
		target := "/keys/app/?limit=2"
		if after != "" {
			target += "&after=" + url.QueryEscape(after)
		}
		v, _ := listingGet(t, c, target)
		got = append(got, listingKeys(t, v)...)
		if !v.More {
			break
		}
		after = v.Next
		if v.NextBase64 != "" {
			b, _ := base64.StdEncoding.DecodeString(v.NextBase64)
			after = string(b)
		}
		if page > 3 {
			t.Fatal("paging does not end")
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("paged listing %q, want %q", got, want)
	}

	v, _ = listingGet(t, c, "/keys/app/?keys")
	if got := listingKeys(t, v); !slices.Equal(got, want) || v.Entries[0].Value != nil || v.Entries[0].ModIndex != 0 {
		t.Errorf("names only: %+v", v.Entries)
	}
	v, _ = listingGet(t, c, "/keys/")
	if len(v.Entries) != len(writes) {
		t.Errorf("GET /keys/ lists %d keys, want %d", len(v.Entries), len(writes))
	}
	v, _ = listingGet(t, c, "/keys/none/")
	if len(v.Entries) != 0 || v.Entries == nil {
		t.Errorf("empty prefix: entries %v, want []", v.Entries)
	}

	for target, code := range map[string]int{
		"/keys/app/?limit=0":              400,
		"/keys/app/?limit=10001":          400,
		"/keys/app/?limit=x":              400,
		"/keys/app/?keys=no":              400,
		"/keys/app/?level=bogus":          400,
		"/keys/app/a?limit=1":             400,
		"/keys/app/a?after=x":             400,
		"/keys/app//":                     400,
		"/keys/app/?recursive=true":       400,
		fmt.Sprintf("/keys/app/?x=%d", 1): 400,
	} {
		if r := do(t, "GET", c.url(1, target), ""); r.code != code {
			t.Errorf("GET %s: %d %q, want %d", target, r.code, r.body, code)
		}
	}
	for _, method := range []string{"PUT", "DELETE"} {
		if r := do(t, method, c.url(1, "/keys/app/"), "v"); r.code != 400 {
			t.Errorf("%s /keys/app/: %d %q, want 400", method, r.code, r.body)
		}
	}
}
