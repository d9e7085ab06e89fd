package keyspace

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Conditional writes (If-Match, If-None-Match).
//
// A conditional write carries its condition in the log entry, and the
// condition is evaluated when the entry is applied (Space.Put and Delete),
// on every member, against the state the entries before it left. Only the
// log order decides which of two racing writes wins: the check and the
// write are one step of the state machine, so no other write can come
// between them, and every member reaches the same verdict.

// ErrBadCondition is an If-Match or If-None-Match header that does not
// parse, or names a tag this server never gives.
var ErrBadCondition = errors.New("bad precondition")

// ETag is the entity tag of a key at modIndex.
func ETag(modIndex uint64) string { return `"` + strconv.FormatUint(modIndex, 10) + `"` }

// TagList is an If-Match or If-None-Match header: any (*) or a list of
// modIndexes. Weak marks the indexes that came as weak tags (W/"N"),
// which only If-None-Match's weak comparison lets match.
type TagList struct {
	Any     bool
	Indexes []uint64
	Weak    []bool
}

// Given reports whether the header was sent at all.
func (l *TagList) Given() bool { return l != nil }

// String is the list in one canonical form, whatever spacing and lines it
// came in: "" when not given.
func (l *TagList) String() string {
	switch {
	case !l.Given():
		return ""
	case l.Any:
		return "*"
	}
	var b strings.Builder
	for i, index := range l.Indexes {
		if i > 0 {
			b.WriteByte(',')
		}
		if l.Weak[i] {
			b.WriteString("W/")
		}
		b.WriteString(ETag(index))
	}
	return b.String()
}

// Matches reports whether the list matches a key at modIndex; strong
// comparison (If-Match) lets no weak tag match.
func (l *TagList) Matches(modIndex uint64, strong bool) bool {
	if l.Any {
		return true
	}
	for i, index := range l.Indexes {
		if index == modIndex && !(strong && l.Weak[i]) {
			return true
		}
	}
	return false
}

// parseTagList parses the header name of h: nil if absent. Several
// header lines are one list (RFC 9110 §5.3). Every tag must be one this
// server gives, "N" for a decimal index N (or W/"N"): anything else
// cannot name a version of a key, and is refused rather than left never
// to match.
func parseTagList(h http.Header, name string) (*TagList, error) {
	lines, ok := h[name]
	if !ok {
		return nil, nil
	}
	list := &TagList{}
	for _, line := range lines {
		for part := range strings.SplitSeq(line, ",") {
			tag := strings.TrimSpace(part)
			switch {
			case tag == "":
				continue
			case tag == "*":
				list.Any = true
				continue
			}
			weak := false
			if rest, ok := strings.CutPrefix(tag, "W/"); ok {
				tag, weak = rest, true
			}
			n, ok := strings.CutPrefix(tag, `"`)
			n, ok2 := strings.CutSuffix(n, `"`)
			index, err := strconv.ParseUint(n, 10, 63) // the log entry packs a tag in 63 bits
			if !ok || !ok2 || err != nil {
				return nil, fmt.Errorf("%w: %s: %q is not an entity tag this server gives (\"N\", N a key's modIndex, or *)", ErrBadCondition, name, strings.TrimSpace(part))
			}
			list.Indexes = append(list.Indexes, index)
			list.Weak = append(list.Weak, weak)
		}
	}
	if list.Any && len(list.Indexes) > 0 {
		return nil, fmt.Errorf("%w: %s: * cannot be combined with tags", ErrBadCondition, name)
	}
	if !list.Any && len(list.Indexes) == 0 {
		return nil, fmt.Errorf("%w: %s: empty", ErrBadCondition, name)
	}
	return list, nil
}

// Condition is what a conditional request asks of a key's state.
type Condition struct {
	IfMatch     *TagList // nil: not given
	IfNoneMatch *TagList
}

// ParseCondition reads If-Match and If-None-Match.
func ParseCondition(h http.Header) (Condition, error) {
	var c Condition
	var err error
	if c.IfMatch, err = parseTagList(h, "If-Match"); err != nil {
		return Condition{}, err
	}
	if c.IfNoneMatch, err = parseTagList(h, "If-None-Match"); err != nil {
		return Condition{}, err
	}
	return c, nil
}

// Given reports whether the request has any condition.
func (c Condition) Given() bool { return c.IfMatch.Given() || c.IfNoneMatch.Given() }

// Holds evaluates the condition against a key's state, in RFC 9110 §13.2.2's
// order: If-Match (strong comparison; false for an absent key), then
// If-None-Match (weak comparison; true for an absent key).
func (c Condition) Holds(v Version, exists bool) bool {
	if c.IfMatch.Given() && !(exists && c.IfMatch.Matches(v.ModIndex, true)) {
		return false
	}
	if c.IfNoneMatch.Given() && exists && c.IfNoneMatch.Matches(v.ModIndex, false) {
		return false
	}
	return true
}
