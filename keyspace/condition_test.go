package keyspace

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestParseCondition proves If-Match and If-None-Match parse into the tag
// lists a log entry carries: absent is nil, "*" is any, and a list of
// strong ("N") and weak (W/"N") tags, however spaced, split over commas
// and header lines, keeps its order; and that anything else is refused
// with ErrBadCondition naming the header: a tag this server never gives
// (unquoted, not a decimal index, beyond 63 bits), "*" with tags, or no
// tag at all.
func TestParseCondition(t *testing.T) {
	header := func(name string, lines ...string) http.Header { return http.Header{name: lines} }
	if c, err := ParseCondition(http.Header{"Other": {"x"}}); err != nil || c.Given() || c.IfMatch != nil || c.IfNoneMatch != nil {
		t.Errorf("ParseCondition without either header = %+v, %v; want no condition", c, err)
	}
	for _, name := range []string{"If-Match", "If-None-Match"} {
		for _, tc := range []struct {
			lines   []string
			any     bool
			indexes []uint64
			weak    []bool
			str     string
		}{
			{[]string{"*"}, true, nil, nil, "*"},
			{[]string{" * "}, true, nil, nil, "*"},
			{[]string{`"5"`}, false, []uint64{5}, []bool{false}, `"5"`},
			{[]string{`W/"5"`}, false, []uint64{5}, []bool{true}, `W/"5"`},
			{[]string{` "1" , W/"2",,"3" `}, false, []uint64{1, 2, 3}, []bool{false, true, false}, `"1",W/"2","3"`},
			{[]string{`"3"`, `W/"1"`}, false, []uint64{3, 1}, []bool{false, true}, `"3",W/"1"`},
			{[]string{`"0"`}, false, []uint64{0}, []bool{false}, `"0"`},
			{[]string{`"9223372036854775807"`}, false, []uint64{1<<63 - 1}, []bool{false}, `"9223372036854775807"`},
			{[]string{`"007"`}, false, []uint64{7}, []bool{false}, `"7"`},
			{[]string{"*", ""}, true, nil, nil, "*"},
		} {
			c, err := ParseCondition(header(name, tc.lines...))
			l, other := c.IfMatch, c.IfNoneMatch
			if name == "If-None-Match" {
				l, other = other, l
			}
			if err != nil || !c.Given() || other != nil || !l.Given() || l.Any != tc.any || !slices.Equal(l.Indexes, tc.indexes) || !slices.Equal(l.Weak, tc.weak) {
				t.Errorf("%s: %q = %+v, %v; want any %v, tags %v, weak %v", name, tc.lines, l, err, tc.any, tc.indexes, tc.weak)
				continue
			}
			if got := l.String(); got != tc.str {
				t.Errorf("%s: %q: String() = %q, want %q", name, tc.lines, got, tc.str)
			}
			// The canonical form parses back to the same list.
			again, err := ParseCondition(header(name, l.String()))
			if err != nil || again.IfMatch.String()+again.IfNoneMatch.String() != tc.str {
				t.Errorf("%s: %q does not parse back: %+v, %v", name, l.String(), again, err)
			}
		}
		for _, lines := range [][]string{
			{""}, {","}, {" , "}, {"5"}, {`"5`}, {`5"`}, {`""`}, {`"abc"`}, {`"-1"`}, {`"+1"`}, {`"1.0"`}, {`w/"5"`}, {`W/5`}, {`W/ "5"`},
			{`"1" "2"`}, {`"9223372036854775808"`}, {`"18446744073709551616"`}, {`*, "1"`}, {"*", `"1"`}, {`"1"`, "**"},
		} {
			c, err := ParseCondition(header(name, lines...))
			if !errors.Is(err, ErrBadCondition) || !strings.Contains(err.Error(), name) || c.Given() {
				t.Errorf("%s: %q = %+v, %v; want ErrBadCondition naming %s, and no condition", name, lines, c, err, name)
			}
		}
	}
	c, err := ParseCondition(http.Header{"If-Match": {`"4"`}, "If-None-Match": {"*"}})
	if err != nil || c.IfMatch.String() != `"4"` || c.IfNoneMatch.String() != "*" {
		t.Errorf("both headers = If-Match %q, If-None-Match %q, %v", c.IfMatch, c.IfNoneMatch, err)
	}
	if _, err := ParseCondition(http.Header{"If-Match": {`"4"`}, "If-None-Match": {"x"}}); !errors.Is(err, ErrBadCondition) || !strings.Contains(err.Error(), "If-None-Match") {
		t.Errorf("a good If-Match and a bad If-None-Match: %v, want ErrBadCondition naming If-None-Match", err)
	}
}

// TestTagList proves how a tag list prints and matches: "" when not
// given, "*" matching every version, and tags matching the version they
// name; a weak tag only under weak comparison (If-None-Match), never under
// strong (If-Match).
func TestTagList(t *testing.T) {
	var absent *TagList
	if absent.Given() || absent.String() != "" {
		t.Errorf("an absent list: given %v, %q", absent.Given(), absent.String())
	}
	if got := ETag(42); got != `"42"` {
		t.Errorf("ETag(42) = %s, want \"42\"", got)
	}
	star := &TagList{Any: true}
	list := &TagList{Indexes: []uint64{3, 5}, Weak: []bool{false, true}}
	if got := list.String(); got != `"3",W/"5"` {
		t.Errorf("String() = %s", got)
	}
	for _, tc := range []struct {
		l        *TagList
		modIndex uint64
		strong   bool
		want     bool
	}{
		{star, 0, true, true},
		{star, 9, false, true},
		{list, 3, true, true},
		{list, 3, false, true},
		{list, 5, false, true},
		{list, 5, true, false},
		{list, 4, false, false},
		{list, 4, true, false},
		{&TagList{}, 0, false, false},
	} {
		if got := tc.l.Matches(tc.modIndex, tc.strong); got != tc.want {
			t.Errorf("%q.Matches(%d, strong %v) = %v, want %v", tc.l, tc.modIndex, tc.strong, got, tc.want)
		}
	}
}
