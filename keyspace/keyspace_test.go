package keyspace

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

// ifMatch and ifNoneMatch are conditions on one header, as ParseCondition
// gives them; "*" or strong tags N.
func ifMatch(indexes ...uint64) Condition { return Condition{IfMatch: tags(indexes)} }

func ifNoneMatch(indexes ...uint64) Condition { return Condition{IfNoneMatch: tags(indexes)} }

// anyTag is the list "*".
var anyTag = []uint64(nil)

// tags is the list of strong tags indexes, or "*" if there are none.
func tags(indexes []uint64) *TagList {
	if len(indexes) == 0 {
		return &TagList{Any: true}
	}
	return &TagList{Indexes: indexes, Weak: make([]bool, len(indexes))}
}

// TestPutVersions proves what a put does to a key's version: a put that
// creates the key sets both indexes to its entry's and says it did not
// exist; a later put keeps CreateIndex, moves ModIndex, and says it did; a
// put after a delete creates the key afresh.
func TestPutVersions(t *testing.T) {
	s := New()
	put := func(index uint64, data string, wantExisted bool, want Version) {
		t.Helper()
		v, existed, err := s.Put(index, "k", data, Condition{}, 0)
		if err != nil || existed != wantExisted || v != (Value{Data: data, Version: want}) {
			t.Fatalf("Put(%d, %q) = %+v, existed %v, %v; want %+v, existed %v", index, data, v, existed, err, Value{Data: data, Version: want}, wantExisted)
		}
		if got, ok := s.Get("k"); !ok || got != v {
			t.Fatalf("Get after Put(%d) = %+v, %v; want %+v", index, got, ok, v)
		}
	}
	put(3, "a", false, Version{CreateIndex: 3, ModIndex: 3})
	put(5, "b", true, Version{CreateIndex: 3, ModIndex: 5})
	put(9, "", true, Version{CreateIndex: 3, ModIndex: 9})
	v, existed, err := s.Delete(10, "k", Condition{})
	if err != nil || !existed || v != (Value{Version: Version{CreateIndex: 3, ModIndex: 10}}) {
		t.Fatalf("Delete(10) = %+v, existed %v, %v; want no data, CreateIndex 3, ModIndex 10", v, existed, err)
	}
	if got, ok := s.Get("k"); ok || s.Len() != 0 {
		t.Fatalf("Get after Delete = %+v, %v, %d keys; want none", got, ok, s.Len())
	}
	put(12, "c", false, Version{CreateIndex: 12, ModIndex: 12})
}

// TestWriteConditions proves a conditional put or delete applies only if
// its condition holds for the key as it is when the entry applies:
// If-Match (strong: a weak tag never matches; false for an absent key),
// If-None-Match (weak; true for an absent key). A write refused with
// ErrPreconditionFailed, or a delete of an absent key (ErrKeyNotFound),
// changes nothing and returns the key as it is.
func TestWriteConditions(t *testing.T) {
	weak := func(indexes ...uint64) *TagList {
		l := tags(indexes)
		for i := range l.Weak {
			l.Weak[i] = true
		}
		return l
	}
	for _, tc := range []struct {
		name   string
		exists bool // the key exists, at ModIndex 5
		cond   Condition
		holds  bool
	}{
		{"none, present", true, Condition{}, true},
		{"none, absent", false, Condition{}, true},
		{"If-Match its tag", true, ifMatch(5), true},
		{"If-Match one of its tags", true, ifMatch(1, 5, 9), true},
		{"If-Match another tag", true, ifMatch(4), false},
		{"If-Match its tag, weak", true, Condition{IfMatch: weak(5)}, false},
		{"If-Match *, present", true, ifMatch(anyTag...), true},
		{"If-Match *, absent", false, ifMatch(anyTag...), false},
		{"If-Match a tag, absent", false, ifMatch(5), false},
		{"If-None-Match *, present", true, ifNoneMatch(anyTag...), false},
		{"If-None-Match *, absent", false, ifNoneMatch(anyTag...), true},
		{"If-None-Match its tag", true, ifNoneMatch(5), false},
		{"If-None-Match its tag, weak", true, Condition{IfNoneMatch: weak(5)}, false},
		{"If-None-Match another tag", true, ifNoneMatch(4), true},
		{"If-None-Match a tag, absent", false, ifNoneMatch(5), true},
		{"both, If-Match false", true, Condition{IfMatch: tags([]uint64{4}), IfNoneMatch: tags([]uint64{4})}, false},
		{"both, If-None-Match false", true, Condition{IfMatch: tags([]uint64{5}), IfNoneMatch: tags([]uint64{5})}, false},
		{"both hold", true, Condition{IfMatch: tags([]uint64{5}), IfNoneMatch: tags([]uint64{4})}, true},
	} {
		for _, op := range []string{"put", "delete"} {
			t.Run(op+" "+tc.name, func(t *testing.T) {
				s := New()
				cur := Value{Data: "old", Version: Version{CreateIndex: 2, ModIndex: 5}}
				if tc.exists {
					s.Set("k", cur)
				} else {
					cur = Value{}
				}
				var v Value
				var existed bool
				var err error
				if op == "put" {
					v, existed, err = s.Put(7, "k", "new", tc.cond, 0)
				} else {
					v, existed, err = s.Delete(7, "k", tc.cond)
				}
				got, ok := s.Get("k")
				switch {
				case !tc.holds:
					if !errors.Is(err, ErrPreconditionFailed) || v != cur || existed != tc.exists || got != cur || ok != tc.exists {
						t.Errorf("= %+v, existed %v, %v, then the key is %+v, %v; want ErrPreconditionFailed with the key as it was, %+v, unchanged",
							v, existed, err, got, ok, cur)
					}
				case op == "delete" && !tc.exists:
					if !errors.Is(err, ErrKeyNotFound) || existed || ok {
						t.Errorf("= %+v, existed %v, %v, then the key is %+v, %v; want ErrKeyNotFound", v, existed, err, got, ok)
					}
				case op == "put":
					want := Value{Data: "new", Version: Version{CreateIndex: 7, ModIndex: 7}}
					if tc.exists {
						want.CreateIndex = 2
					}
					if err != nil || existed != tc.exists || v != want || got != want {
						t.Errorf("= %+v, existed %v, %v, then the key is %+v; want %+v", v, existed, err, got, want)
					}
				default:
					if err != nil || !existed || v != (Value{Version: Version{CreateIndex: 2, ModIndex: 7}}) || ok {
						t.Errorf("= %+v, existed %v, %v, then the key is %+v, %v; want it deleted", v, existed, err, got, ok)
					}
				}
			})
		}
	}
}

// listKeys is the keys of a page.
func listKeys(page []Listed) []string {
	var keys []string
	for _, l := range page {
		keys = append(keys, l.Key)
	}
	return keys
}

// TestList proves a listing pages through the keys under a prefix in key
// order: after names the last key of the previous page (which need not
// exist, nor start with the prefix), limit bounds the page, and more says
// whether keys under the prefix follow it.
func TestList(t *testing.T) {
	s := New()
	for i, k := range []string{"a", "a/1", "a/2", "a/3", "a/3/x", "a0", "b", "b/1"} {
		s.Put(uint64(i+1), k, "v"+k, Condition{}, 0)
	}
	for _, tc := range []struct {
		prefix, after string
		limit         int
		want          []string
		more          bool
	}{
		{"", "", 100, []string{"a", "a/1", "a/2", "a/3", "a/3/x", "a0", "b", "b/1"}, false},
		{"a/", "", 100, []string{"a/1", "a/2", "a/3", "a/3/x"}, false},
		{"a/", "", 2, []string{"a/1", "a/2"}, true},
		{"a/", "a/2", 2, []string{"a/3", "a/3/x"}, false}, // a full page, and no key under a/ after it
		{"a/", "a/3/x", 2, nil, false},
		{"a/", "a/20", 1, []string{"a/3"}, true},
		{"a/", "0", 1, []string{"a/1"}, true},
		{"a/", "z", 10, nil, false},
		{"a", "", 3, []string{"a", "a/1", "a/2"}, true},
		{"b/", "", 1, []string{"b/1"}, false},
		{"c/", "", 10, nil, false},
		{"a/3", "", 10, []string{"a/3", "a/3/x"}, false},
		{"a/", "", 4, []string{"a/1", "a/2", "a/3", "a/3/x"}, false},
	} {
		page, more := s.List(tc.prefix, tc.after, tc.limit)
		if got := listKeys(page); !slices.Equal(got, tc.want) || more != tc.more {
			t.Errorf("List(%q, after %q, limit %d) = %q, more %v; want %q, more %v", tc.prefix, tc.after, tc.limit, got, more, tc.want, tc.more)
		}
		for _, l := range page {
			if v, _ := s.Get(l.Key); l.Value != v {
				t.Errorf("List(%q): %q listed as %+v, is %+v", tc.prefix, l.Key, l.Value, v)
			}
		}
	}
}

// TestCopyIsolated proves a Copy is the space as it was: writes to the
// space after it do not show in the copy, nor the copy's in the space.
func TestCopyIsolated(t *testing.T) {
	s := New()
	for i := range 1000 { // enough keys for a tree of several levels
		s.Put(uint64(i+1), fmt.Sprintf("k%04d", i), "v", Condition{}, 0)
	}
	c := s.Copy()
	s.Put(2000, "k0000", "changed", Condition{}, 0)
	s.Delete(2001, "k0500", Condition{})
	s.Put(2002, "new", "v", Condition{}, 0)
	c.Put(3000, "k0999", "copy's", Condition{}, 0)
	if v, _ := c.Get("k0000"); v.Data != "v" || v.ModIndex != 1 {
		t.Errorf("the copy's k0000 after the space changed it: %+v", v)
	}
	if _, ok := c.Get("k0500"); !ok {
		t.Error("the copy lost k0500 when the space deleted it")
	}
	if _, ok := c.Get("new"); ok || c.Len() != 1000 {
		t.Errorf("the copy has %d keys, new %v; want the 1000 it was taken with", c.Len(), ok)
	}
	if v, _ := s.Get("k0999"); v.Data != "v" {
		t.Errorf("the space's k0999 after the copy changed it: %+v", v)
	}
	if s.Len() != 1000 {
		t.Errorf("the space has %d keys, want 1000", s.Len())
	}
}

// TestLoadAndScan proves keys loaded in order and set in any order are
// scanned in key order, and that Scan stops when told.
func TestLoadAndScan(t *testing.T) {
	s := New()
	for i, k := range []string{"a", "b", "c"} {
		s.Load(k, Value{Data: k, Version: Version{CreateIndex: uint64(i), ModIndex: uint64(i)}})
	}
	s.Set("0", Value{Data: "0"})
	s.Set("bb", Value{Data: "bb"})
	var got []string
	s.Scan(func(k string, v Value) bool {
		if v.Data != k {
			t.Errorf("%q holds %q", k, v.Data)
		}
		got = append(got, k)
		return true
	})
	if want := []string{"0", "a", "b", "bb", "c"}; !slices.Equal(got, want) || s.Len() != len(want) {
		t.Errorf("scanned %q (%d keys), want %q", got, s.Len(), want)
	}
	got = nil
	s.Scan(func(k string, _ Value) bool { got = append(got, k); return len(got) < 2 })
	if !slices.Equal(got, []string{"0", "a"}) {
		t.Errorf("a scan told to stop after 2 keys saw %q", got)
	}
}
