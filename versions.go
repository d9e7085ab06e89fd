package main

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Versions and conditional writes.
//
// Raft gives every entry a unique, ordered number, its log index, so that
// is a key's version: modIndex is the index of the entry that last wrote
// the key, createIndex the index of the one that created it (since it was
// last absent), as Consul's ModifyIndex and etcd's mod_revision. The
// proposer never puts two writes to one key into one entry (takeWaiting),
// so a modIndex names exactly one value of a key. The version is the
// key's entity tag (RFC 9110 §8.8.3): ETag: "<modIndex>".
//
// A conditional write (If-Match, If-None-Match) carries its condition in
// the log entry, and the condition is evaluated when the entry is applied,
// on every member, against the state the entries before it left. Only the
// log order decides which of two racing writes wins: the check and the
// write are one step of the state machine, so no other write can come
// between them, and every member reaches the same verdict.

// ErrPreconditionFailed is a conditional write whose condition was false
// when its entry applied: it changed nothing.
var ErrPreconditionFailed = errors.New("precondition failed")

// ErrBadPrecondition is an If-Match or If-None-Match header that does not
// parse, or names a tag this server never gives.
var ErrBadPrecondition = errors.New("bad precondition")

// keyVersion is where a key stands in the log.
type keyVersion struct {
	createIndex uint64 // the entry that created the key, since it was last absent
	modIndex    uint64 // the entry that last wrote it
}

// keyValue is one key's value and version.
type keyValue struct {
	value string // a string, not a []byte: 8 bytes less per key, and immutable
	keyVersion
}

// etag is the entity tag of a key at modIndex.
func etag(modIndex uint64) string { return `"` + strconv.FormatUint(modIndex, 10) + `"` }

// setVersion sets the headers that give a key's keyVersion.
func setVersion(w http.ResponseWriter, v keyVersion) {
	w.Header().Set("ETag", etag(v.modIndex))
	w.Header().Set("X-Create-Index", strconv.FormatUint(v.createIndex, 10))
}

// tagList is an If-Match or If-None-Match header: any (*) or a list of
// modIndexes. weak marks the indexes that came as weak tags (W/"N"),
// which only If-None-Match's weak comparison lets match.
type tagList struct {
	any     bool
	indexes []uint64
	weak    []bool
}

// given reports whether the header was sent at all.
func (l *tagList) given() bool { return l != nil }

// String is the list in one canonical form, whatever spacing and lines it
// came in: "" when not given.
func (l *tagList) String() string {
	switch {
	case !l.given():
		return ""
	case l.any:
		return "*"
	}
	var b strings.Builder
	for i, index := range l.indexes {
		if i > 0 {
			b.WriteByte(',')
		}
		if l.weak[i] {
			b.WriteString("W/")
		}
		b.WriteString(etag(index))
	}
	return b.String()
}

// matches reports whether the list matches a key at modIndex; strong
// comparison (If-Match) lets no weak tag match.
func (l *tagList) matches(modIndex uint64, strong bool) bool {
	if l.any {
		return true
	}
	for i, index := range l.indexes {
		if index == modIndex && !(strong && l.weak[i]) {
			return true
		}
	}
	return false
}

// parseTagList parses the header name of r: nil if absent. Several
// header lines are one list (RFC 9110 §5.3). Every tag must be one this
// server gives, "N" for a decimal index N (or W/"N"): anything else
// cannot name a version of a key, and is refused rather than left never
// to match.
func parseTagList(h http.Header, name string) (*tagList, error) {
	lines, ok := h[name]
	if !ok {
		return nil, nil
	}
	list := &tagList{}
	for _, line := range lines {
		for part := range strings.SplitSeq(line, ",") {
			tag := strings.TrimSpace(part)
			switch {
			case tag == "":
				continue
			case tag == "*":
				list.any = true
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
				return nil, fmt.Errorf("%w: %s: %q is not an entity tag this server gives (\"N\", N a key's modIndex, or *)", ErrBadPrecondition, name, strings.TrimSpace(part))
			}
			list.indexes = append(list.indexes, index)
			list.weak = append(list.weak, weak)
		}
	}
	if list.any && len(list.indexes) > 0 {
		return nil, fmt.Errorf("%w: %s: * cannot be combined with tags", ErrBadPrecondition, name)
	}
	if !list.any && len(list.indexes) == 0 {
		return nil, fmt.Errorf("%w: %s: empty", ErrBadPrecondition, name)
	}
	return list, nil
}

// precondition is what a conditional request asks of a key's state.
type precondition struct {
	ifMatch     *tagList // nil: not given
	ifNoneMatch *tagList
}

// parsePrecondition reads If-Match and If-None-Match.
func parsePrecondition(h http.Header) (precondition, error) {
	var p precondition
	var err error
	if p.ifMatch, err = parseTagList(h, "If-Match"); err != nil {
		return precondition{}, err
	}
	if p.ifNoneMatch, err = parseTagList(h, "If-None-Match"); err != nil {
		return precondition{}, err
	}
	return p, nil
}

// given reports whether the request has any condition.
func (p precondition) given() bool { return p.ifMatch.given() || p.ifNoneMatch.given() }

// holds evaluates the condition against a key's state, in RFC 9110 §13.2.2's
// order: If-Match (strong comparison; false for an absent key), then
// If-None-Match (weak comparison; true for an absent key).
func (p precondition) holds(v keyVersion, exists bool) bool {
	if p.ifMatch.given() && !(exists && p.ifMatch.matches(v.modIndex, true)) {
		return false
	}
	if p.ifNoneMatch.given() && exists && p.ifNoneMatch.matches(v.modIndex, false) {
		return false
	}
	return true
}
