package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// What a request is refused for before its handler runs: a query
// parameter its route does not take, a precondition raftkv cannot evaluate,
// a path ServeMux would rewrite, or no route at all. Each is answered with
// a one-line reason, never silently ignored: a client that sent
// ?levle=consistent or If-Match meant something, and serving it as if it
// had not is a misread it cannot see.

// Errors in a request's query.
var (
	ErrBadQuery          = errors.New("bad query")
	ErrUnknownParameter  = errors.New("unknown query parameter")
	ErrRepeatedParameter = errors.New("query parameter given more than once")
)

// ErrConditionalRequest is a request carrying a precondition (If-Match and
// the like) that its route cannot evaluate.
var ErrConditionalRequest = errors.New("this route evaluates no such condition")

// ErrNoLease is a Lease header on a request that attaches no key to one.
var ErrNoLease = errors.New("only PUT /keys/{key} attaches a key to a lease")

// ErrNotIdempotent is an Idempotency-Key on a route that takes none.
var ErrNotIdempotent = errors.New("only PUT and DELETE /keys/{key}, POST /members and POST /leases take one")

// Takes says which request headers a route evaluates, beyond the ones
// every route does.
type Takes uint8

const (
	TakesConditions     Takes = 1 << iota // If-Match and If-None-Match (package keyspace)
	TakesIdempotencyKey                   // Idempotency-Key (package idempotency)
	TakesLease                            // Lease (package lease)
)

// CheckQuery refuses a query that does not parse, names a parameter not in
// params, or gives one twice. It parses as url.ParseQuery does (empty
// pairs between '&'s are skipped), but strictly: ParseQuery drops a pair
// it cannot decode and goes on, so "level=consistent;" would quietly be a
// read at the default level. It allocates nothing for a query without
// escapes, which is every query clients normally send.
func CheckQuery(rawQuery string, params []string) error {
	var given uint64 // bit i: params[i] was given
	for rest := rawQuery; rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		if pair == "" {
			continue
		}
		if strings.Contains(pair, ";") {
			return fmt.Errorf("%w: ';' does not separate parameters, '&' does", ErrBadQuery)
		}
		rawName, rawValue, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(rawName)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadQuery, err)
		}
		if _, err := url.QueryUnescape(rawValue); err != nil {
			return fmt.Errorf("%w: %w", ErrBadQuery, err)
		}
		i := slices.Index(params, name)
		switch {
		case i < 0 && len(params) == 0:
			return fmt.Errorf("%w %q: this route takes none", ErrUnknownParameter, name)
		case i < 0:
			return fmt.Errorf("%w %q: this route takes %s", ErrUnknownParameter, name, strings.Join(params, ", "))
		case given&(1<<i) != 0:
			return fmt.Errorf("%w: %q", ErrRepeatedParameter, name)
		}
		given |= 1 << i
	}
	return nil
}

// QueryValue returns the value of parameter name in a query that
// CheckQuery accepted, and whether it was given. Accepted means every
// name and value decodes, so the decoding errors cannot happen here.
func QueryValue(rawQuery, name string) (string, bool) {
	for rest := rawQuery; rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		rawName, rawValue, _ := strings.Cut(pair, "=")
		if n, _ := url.QueryUnescape(rawName); n == name {
			v, _ := url.QueryUnescape(rawValue)
			return v, true
		}
	}
	return "", false
}

// CheckPreconditions refuses the preconditions a route cannot evaluate,
// and an Idempotency-Key on a route that takes none.
//
// RFC 9110 §13.1 requires an origin server to evaluate If-Match,
// If-None-Match and If-Unmodified-Since before performing the method, and
// not to perform it when the condition is false. Keys have entity tags
// (package keyspace), so the key routes evaluate If-Match and If-None-Match.
// No route keeps modification dates, and members have no tags: there
// these are refused rather than ignored, which would turn "write only if
// unchanged" (If-Match) into an unconditional one.
//
// The refusal is 400 Bad Request. 412 Precondition Failed would claim the
// condition was evaluated and is false: a client retrying an If-Match
// update on 412 would re-read and retry for ever, and one that sent
// If-None-Match: * would conclude that the key exists. 428 Precondition
// Required means the opposite (a precondition is missing); 501 Not
// Implemented fits best but is a 5xx, which clients retry as a server
// fault. 400 says this request, as sent, will not be processed; the
// reason names the header.
//
// On GET and HEAD of a route without tags (members, status) and of keys
// for If-Modified-Since, which has no dates, If-None-Match and
// If-Modified-Since ask "send it unless it is the one I have". Without the
// validator, the server never knows the client has it, so the condition holds
// (RFC 9110 §13.2.2: a tag list matches no representation that has no
// entity tag, and a representation without a modification date is never
// "not modified since"): answering with the value is evaluating them, not
// ignoring them. If-Modified-Since on other methods, and If-Range without
// a Range (raftkv serves no ranges, and RFC 9110 §14.2 lets a server
// ignore Range), are to be ignored by RFC 9110 §13.1.3 and §13.1.5.
func CheckPreconditions(r *http.Request, t Takes) error {
	refused := []string{"If-Unmodified-Since"}
	switch {
	case t&TakesConditions != 0:
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		refused = append(refused, "If-Match")
	default:
		refused = append(refused, "If-Match", "If-None-Match")
	}
	for _, name := range refused {
		if _, ok := r.Header[name]; ok {
			return fmt.Errorf("%s: %w", name, ErrConditionalRequest)
		}
	}
	if _, ok := r.Header["Idempotency-Key"]; ok && t&TakesIdempotencyKey == 0 {
		return fmt.Errorf("Idempotency-Key: %w", ErrNotIdempotent)
	}
	if _, ok := r.Header["Lease"]; ok && (t&TakesLease == 0 || r.Method != http.MethodPut) {
		return fmt.Errorf("Lease: %w", ErrNoLease)
	}
	return nil
}

// UncleanPath describes what ServeMux would clean away in path (empty, "."
// or ".." segments; for a key, a trailing '/' as well), or returns "".
// ServeMux answers such a path with a redirect to its cleaned form, which
// a client may follow with its PUT to a key it did not name; refusing it
// leaves nothing for ServeMux to redirect. A trailing '/' elsewhere is a
// path of its own (and /keys/ is the empty key), so it is let through.
func UncleanPath(path string) string {
	for _, root := range []string{"/keys/", "/watch/"} {
		if key, ok := strings.CutPrefix(path, root); ok && key != "" {
			// One trailing '/' names a prefix, to list or watch.
			if key = strings.TrimSuffix(key, "/"); key == "" || !cleanSegments(key) {
				return "key must not contain empty, '.' or '..' path segments"
			}
			return ""
		}
	}
	if rest := strings.TrimSuffix(strings.TrimPrefix(path, "/"), "/"); strings.Contains(path, "//") || (rest != "" && !cleanSegments(rest)) {
		return fmt.Sprintf("path %q must not contain empty, '.' or '..' segments", path)
	}
	return ""
}

// cleanSegments reports whether s has no empty, "." or ".." segments (so
// no leading or trailing slash either). It is path.Clean's test without
// building the cleaned path on every request.
func cleanSegments(s string) bool {
	for seg := range strings.SplitSeq(s, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}
