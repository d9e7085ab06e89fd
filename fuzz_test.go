package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Fuzz targets for bad input (FuzzDecodeCommand is in encoding_test.go).
// Their seed corpora are in testdata/fuzz/<name>/: plain `go test` runs the
// seeds, `go test -run '^$' -fuzz '^FuzzHTTPAPI$' -fuzztime 20s .` explores.

// FuzzDecodeSnapshot proves that no input makes the snapshot decoder panic
// or fail with a foreign error, and that whatever it accepts re-encodes to a
// snapshot with the same content: a member restoring from a snapshot must
// end up with exactly the state that was taken.
func FuzzDecodeSnapshot(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeWholeSnapshot(data)
		if err != nil {
			if !errors.Is(err, ErrCorruptEntry) {
				t.Fatalf("decode %.64x: error %v does not wrap ErrCorruptEntry", data, err)
			}
			return
		}
		again, err := decodeWholeSnapshot(encodeSnapshot(got.members, got.removed, got.kv, got.records))
		if err != nil {
			t.Fatalf("decode %.64x: re-encoded content does not decode: %v", data, err)
		}
		if !maps.EqualFunc(again.members, got.members, snapMemberEqual) || !maps.Equal(again.removed, got.removed) ||
			!maps.EqualFunc(again.kv, got.kv, snapKVEqual) || !snapRecordsEqual(again.records, got.records) {
			t.Fatalf("decode %.64x: re-encoding changed the content: members %v, removed %v, %d keys; then members %v, removed %v, %d keys",
				data, snapMemberList(got.members), got.removed, len(got.kv), snapMemberList(again.members), again.removed, len(again.kv))
		}
	})
}

const (
	// fuzzMaxKeys is how many keys FuzzHTTPAPI lets accepted PUTs leave
	// before it deletes them all, so that comparing states stays cheap.
	fuzzMaxKeys = 64
	// fuzzMaxBody caps a grown body: far above every limit the API has.
	fuzzMaxBody = 4 << 20
)

// FuzzHTTPAPI sends arbitrary requests (method, path with any bytes, query,
// body of any size, framed with a right, wrong or missing length, and a
// header line from a list) to the handler of a healthy one-member cluster, and
// proves that every answer is a documented one: never a panic, a redirect
// or a 5xx; every 4xx a one-line reason that changed nothing (DELETE of an
// absent key excepted: it is applied, so the log grows, and the keys stay
// as they were); every 2xx right for the request, and changing exactly
// what it reports. A 2xx needs a query of only the parameters its route
// takes, each once, and no header the route refuses.
//
// The request is parsed with http.ReadRequest from the bytes a client would
// send, so the handler sees only what the real server can hand it.
// Requests that could add a member are not sent: a voter that never runs
// would cost the cluster its quorum (TestHTTPMembers covers the 201).
func FuzzHTTPAPI(f *testing.F) {
	c := newTestCluster(f, 1, func(cfg *config) { cfg.maxValueBytes = httpTestMaxValue })
	s := c.server(1)
	// The header lines a request may carry: none, the preconditions, and
	// the headers that change what a PUT's body means.
	headers := []string{
		"",
		"If-Match: \"1\"",
		"If-None-Match: *",
		"If-Unmodified-Since: Mon, 02 Jan 2006 15:04:05 GMT",
		"If-Modified-Since: Mon, 02 Jan 2006 15:04:05 GMT",
		"If-None-Match: \"1\"",
		"Range: bytes=0-0",
		"Content-Range: bytes 0-0/1",
		"Content-Encoding: gzip",
		"Content-Encoding: identity",
	}
	f.Fuzz(func(t *testing.T, method, path, query string, body []byte, framing, grow, header uint8) {
		if method == "" || strings.ContainsFunc(method, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
			return // not a method but more of the request line, or headers
		}
		// Large bodies come from doubling small ones, so that the corpus
		// stays small and cheap to mutate and minimize; most values of
		// grow are out of range and leave the body alone.
		if grow > 0 && grow < 32 && len(body)<<grow <= fuzzMaxBody {
			body = bytes.Repeat(body, 1<<grow)
		}
		raw, value, complete := fuzzRequest(method, path, query, headers[int(header)%len(headers)], body, framing)
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil || (req.Method == http.MethodOptions && req.RequestURI == "*") {
			return // the server answers itself; the handler never sees it
		}
		if req.Method == http.MethodPost && req.URL.Path == "/members" && fuzzMightAddMember(s, value) {
			return
		}
		before := fuzzCapture(s)
		rec := httptest.NewRecorder()
		s.http.Handler.ServeHTTP(rec, req)
		after := fuzzCapture(s)
		fuzzCheck(t, req, value, complete, rec, before, after)
		if len(after.kv) > fuzzMaxKeys {
			fuzzDeleteAll(t, s.http.Handler, after.kv)
		}
	})
}

// fuzzRequest builds the bytes of a request, escaping only the bytes of path
// and query that cannot appear in a request line (so "%2e%2e" stays for the
// server to decode), with header if it is not "". framing picks how the
// body is sent; fuzzRequest returns the bytes the handler can read from the
// body and whether reading them ends cleanly, rather than with an error.
func fuzzRequest(method, path, query, header string, body []byte, framing uint8) (raw, value []byte, complete bool) {
	target := fuzzEscape(path, "?#")
	if query != "" {
		target += "?" + fuzzEscape(query, "#")
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: fuzz\r\n", method, target)
	if header != "" {
		b.WriteString(header + "\r\n")
	}
	switch framing % 6 {
	case 0: // the right Content-Length
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
		return b.Bytes(), body, true
	case 1: // chunked
		b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		cw := httputil.NewChunkedWriter(&b)
		cw.Write(body)
		cw.Close()
		b.WriteString("\r\n")
		return b.Bytes(), body, true
	case 2: // no length: an HTTP/1.1 request without one has no body
		fmt.Fprintf(&b, "\r\n%s", body)
		return b.Bytes(), nil, true
	case 3: // a Content-Length the body never reaches
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body)+1+int(framing), body)
		return b.Bytes(), body, false
	case 4: // a Content-Length that cuts the body short
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body)/2, body)
		return b.Bytes(), body[:len(body)/2], true
	default: // chunked, with the body as the chunk stream, likely malformed
		fmt.Fprintf(&b, "Transfer-Encoding: chunked\r\n\r\n%s", body)
		value, err := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(body)))
		return b.Bytes(), value, err == nil
	}
}

// fuzzEscape percent-encodes the bytes of s that a request line cannot
// carry as they are, and those in special.
func fuzzEscape(s, special string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(special, c) >= 0 {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// fuzzMightAddMember reports whether POST /members with body could pass the
// handler's checks and add a member. It errs on the side of yes: it
// decodes leniently, and leaves out only ids that are members already,
// which the handler refuses with 409 before proposing anything.
func fuzzMightAddMember(s *server, body []byte) bool {
	var req addMemberRequest
	if json.NewDecoder(bytes.NewReader(body)).Decode(&req) != nil {
		return false
	}
	if _, err := req.validate(); err != nil {
		return false
	}
	_, exists := s.store.lookupMember(req.ID)
	return !exists
}

// fuzzState is everything a request could change on the lone member.
type fuzzState struct {
	applied, committed uint64
	kv                 map[string][]byte
	members            []member
	removed            map[uint64]bool
}

// fuzzCapture reads s's state. Values are never modified in place (a put
// stores a new slice), so a shallow copy of the map is a snapshot.
func fuzzCapture(s *server) fuzzState {
	st := fuzzState{applied: s.store.appliedIndex.Load(), committed: s.raft.committedIndex(), members: s.store.memberList()}
	s.store.mu.RLock()
	defer s.store.mu.RUnlock()
	st.kv, st.removed = make(map[string][]byte, len(s.store.kv)), maps.Clone(s.store.removed)
	for k, v := range s.store.kv {
		st.kv[k] = v.value
	}
	return st
}

// diff describes how got differs from want, or returns "".
func (got fuzzState) diff(want fuzzState) string {
	var d []string
	if got.applied != want.applied || got.committed != want.committed {
		d = append(d, fmt.Sprintf("applied/committed index %d/%d, want %d/%d", got.applied, got.committed, want.applied, want.committed))
	}
	for _, k := range slices.Sorted(maps.Keys(got.kv)) {
		if w, ok := want.kv[k]; !ok || !bytes.Equal(got.kv[k], w) {
			d = append(d, fmt.Sprintf("key %.60q holds %.40q, want %.40q (present %t)", k, got.kv[k], w, ok))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(want.kv)) {
		if _, ok := got.kv[k]; !ok {
			d = append(d, fmt.Sprintf("key %.60q is missing", k))
		}
	}
	if !reflect.DeepEqual(got.members, want.members) || !maps.Equal(got.removed, want.removed) {
		d = append(d, fmt.Sprintf("members %+v removed %v, want %+v removed %v", got.members, got.removed, want.members, want.removed))
	}
	return strings.Join(d, "; ")
}

// fuzzCheck fails t unless rec is a documented answer to req, whose body
// reads as value (cleanly if complete), and the state went from before to
// after only as the answer says.
func fuzzCheck(t *testing.T, req *http.Request, value []byte, complete bool, rec *httptest.ResponseRecorder, before, after fuzzState) {
	t.Helper()
	what := fmt.Sprintf("%s %.200q (%d-byte body)", req.Method, req.RequestURI, len(value))
	key, isKey := strings.CutPrefix(req.URL.Path, "/keys/")
	read := req.Method == http.MethodGet || req.Method == http.MethodHead
	if rec.Code < 300 {
		params := []string{}
		if isKey && read {
			params = []string{"level"}
		}
		if why := fuzzRefusal(req, params); why != "" {
			t.Fatalf("%s: %d %q, though %s", what, rec.Code, rec.Body.String(), why)
		}
	}
	want := before // what the state must be afterwards
	wrote := func() {
		index, err := strconv.ParseUint(rec.Header().Get("X-Raft-Index"), 10, 64)
		if err != nil || index <= before.applied {
			t.Fatalf("%s: %d with X-Raft-Index %q, want an index past %d", what, rec.Code, rec.Header().Get("X-Raft-Index"), before.applied)
		}
		want.applied, want.committed, want.kv = index, index, maps.Clone(before.kv)
	}
	switch code := rec.Code; {
	case code >= 500:
		t.Fatalf("%s: %d %q from a healthy lone member", what, code, rec.Body.String())
	case slices.Contains([]int{400, 404, 405, 409, 412, 413, 415, 422}, code):
		httpTestOneLine(t, what, rec.Body.String())
		if index := rec.Header().Get("X-Raft-Index"); index != "" {
			switch {
			case isKey && read && (code == http.StatusNotFound || code == http.StatusPreconditionFailed):
				// The applied index the answer reflects.
			case isKey && !read && (code == http.StatusNotFound || code == http.StatusPreconditionFailed || code == http.StatusUnprocessableEntity):
				wrote() // applied, changing nothing
			default:
				t.Fatalf("%s: %d with X-Raft-Index %q", what, code, index)
			}
		}
	case code == http.StatusNotModified && isKey && read:
		if _, ok := before.kv[key]; !ok || req.Header.Get("If-None-Match") == "" {
			t.Fatalf("%s: 304 for key %.60q (present %t)", what, key, ok)
		}
	case (code == http.StatusNoContent || code == http.StatusCreated) && isKey && req.Method == http.MethodPut:
		if !fuzzValidKey(key) || !complete || len(value) > httpTestMaxValue {
			t.Fatalf("%s: %d for key %.60q, value %.40q (read cleanly %t)", what, code, key, value, complete)
		}
		if _, existed := before.kv[key]; existed != (code == http.StatusNoContent) {
			t.Fatalf("%s: %d for key %.60q, which existed: %t", what, code, key, existed)
		}
		wrote()
		want.kv[key] = value
	case code == http.StatusNoContent && isKey && req.Method == http.MethodDelete:
		if _, ok := before.kv[key]; !ok {
			t.Fatalf("%s: 204 for absent key %.60q", what, key)
		}
		wrote()
		delete(want.kv, key)
	case code == http.StatusOK && isKey && read:
		v, ok := before.kv[key]
		if req.Method == http.MethodHead {
			v = nil // the same answer as a GET, without the body
		}
		if !fuzzValidLevel(req.URL.RawQuery) || !ok || !bytes.Equal(rec.Body.Bytes(), v) {
			t.Fatalf("%s: 200 %.40q; key %.60q holds %.40q (present %t)", what, rec.Body.Bytes(), key, v, ok)
		}
		if got, want := rec.Header().Get("Content-Length"), strconv.Itoa(len(before.kv[key])); got != want {
			t.Fatalf("%s: 200 with Content-Length %q, want %s", what, got, want)
		}
	case code == http.StatusOK && read && slices.Contains([]string{"/status", "/members", "/health"}, req.URL.Path):
	case code == http.StatusOK && read && fuzzIsMember(before, req.URL.Path):
	default:
		t.Fatalf("%s: unexpected %d %q", what, code, rec.Body.String())
	}
	if d := after.diff(want); d != "" {
		t.Fatalf("%s: %d %q, and then %s", what, rec.Code, rec.Body.String(), d)
	}
}

// fuzzIsMember reports whether path is /members/{id} for a member in st.
func fuzzIsMember(st fuzzState, path string) bool {
	id, ok := strings.CutPrefix(path, "/members/")
	n, err := strconv.ParseUint(id, 10, 64)
	return ok && err == nil && slices.ContainsFunc(st.members, func(m member) bool { return m.ID == n })
}

// fuzzValidKey is the README's rule for keys: 1 to 4096 bytes, and no
// empty, "." or ".." segments. A trailing "/" is allowed: ServeMux would
// not clean it away, so it names a key of its own.
func fuzzValidKey(key string) bool {
	if len(key) == 0 || len(key) > maxKeyBytes {
		return false
	}
	for seg := range strings.SplitSeq(strings.TrimSuffix(key, "/"), "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// fuzzRefusal says why req must not be answered with a 2xx, by the README's
// rules, on a route taking the query parameters params; or returns "".
// url.ParseQuery is the reference for what a query says: one it cannot
// parse may have meant something the server cannot see.
func fuzzRefusal(req *http.Request, params []string) string {
	q, err := url.ParseQuery(req.URL.RawQuery)
	if err != nil {
		return fmt.Sprintf("the query does not parse: %v", err)
	}
	for name, values := range q {
		if !slices.Contains(params, name) || len(values) > 1 {
			return fmt.Sprintf("the query gives %q %d times, and the route takes %v", name, len(values), params)
		}
	}
	refused := []string{"If-Unmodified-Since"}
	_, isKey := strings.CutPrefix(req.URL.Path, "/keys/")
	switch {
	case isKey:
	case req.Method == http.MethodGet || req.Method == http.MethodHead:
		refused = append(refused, "If-Match")
	default:
		refused = append(refused, "If-Match", "If-None-Match")
	}
	if req.Method == http.MethodPut {
		if coding := req.Header.Get("Content-Encoding"); coding != "" && coding != "identity" {
			return "the value is encoded"
		}
		refused = append(refused, "Content-Range")
	}
	for _, name := range refused {
		if req.Header.Get(name) != "" {
			return "the request has " + name
		}
	}
	return ""
}

// fuzzValidLevel reports whether a GET /keys query (one fuzzRefusal let
// through) asks for a documented read level, or for none.
func fuzzValidLevel(rawQuery string) bool {
	q, _ := url.ParseQuery(rawQuery)
	level, ok := q["level"]
	return !ok || slices.Contains([]string{levelStale, levelDefault, levelConsistent}, level[0])
}

// fuzzDeleteAll deletes keys through h, so that the fuzz target's state
// stays small.
func fuzzDeleteAll(t *testing.T, h http.Handler, kv map[string][]byte) {
	for key := range kv {
		req := httptest.NewRequest(http.MethodDelete, "/", nil)
		req.URL.Path = "/keys/" + key // EscapedPath escapes what it must
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusNoContent {
			t.Fatalf("DELETE key %.60q: %d %q, want 204", key, rec.Code, rec.Body.String())
		}
	}
}
