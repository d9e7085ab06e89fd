package e2e

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"raftkv/api"
	"raftkv/codec"
	"raftkv/idempotency"
	"raftkv/keyspace"
	"raftkv/membership"
)

const (
	// fuzzMaxKeys is how many keys FuzzHTTPAPI lets accepted PUTs leave
	// before it deletes them all, so that comparing states stays cheap.
	fuzzMaxKeys = 64
	// fuzzMaxBody caps a grown body: far above every limit the API has.
	fuzzMaxBody = 4 << 20
)

// fuzzHeaders are the header lines a FuzzHTTPAPI request may carry, picked
// by its header byte: none, the preconditions, the headers that change
// what a PUT's body means, and idempotency keys. The seed corpus names
// them by position, so new ones go at the end. In a line, {etag} stands
// for the named key's current ETag ("0" if it is absent), {etag63} for
// that index plus 2^63 (a tag no key has, whose index needs all 64 bits),
// and {fresh} for an Idempotency-Key no request has carried; a request
// with a fresh key is sent twice, so the second must be a replay.
var fuzzHeaders = []string{
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
	// 10: preconditions on the key's version.
	"If-Match: {etag}",
	"If-Match: *",
	"If-Match: \"1\", {etag}",
	"If-Match: W/{etag}", // weak: If-Match never matches it
	"If-None-Match: {etag}",
	"If-None-Match: W/{etag}", // weak comparison: matches
	"If-None-Match: \"1\", W/\"2\", {etag}",
	"If-Match: {etag},", // an empty list element (RFC 9110 §5.6.1)
	"If-Match: *\r\nIf-None-Match: *",
	"If-Match: {etag}\r\nIf-None-Match: \"1\"",
	"If-Match: \"1\"\r\nIf-Match: {etag}", // two lines, one list
	"If-Match: {etag63}",
	"If-None-Match: {etag63}",
	// 23: malformed preconditions.
	"If-Match: 1",
	"If-Match: \"x1\"",
	"If-Match: *, {etag}",
	"If-None-Match: ,",
	"If-Match: \"18446744073709551616\"",
	"If-None-Match: w/{etag}",
	"If-Match:",
	// 30: idempotency keys.
	"Idempotency-Key: {fresh}",
	"Idempotency-Key: {fresh}\r\nIf-Match: {etag}",
	"Idempotency-Key: {fresh}\r\nIf-None-Match: *",
	"Idempotency-Key: fuzz-a", // reused by every input that picks it
	"Idempotency-Key: fuzz-b\r\nIf-Match: {etag}",
	"Idempotency-Key: " + strings.Repeat("k", idempotency.MaxKeyBytes),
	"Idempotency-Key: " + strings.Repeat("k", idempotency.MaxKeyBytes+1),
	"Idempotency-Key: a b",
	"Idempotency-Key:",
	"Idempotency-Key: \u043a\u043b\u044e\u0447",
	"Idempotency-Key: fuzz-a\r\nIdempotency-Key: fuzz-a",
}

// FuzzHTTPAPI sends arbitrary requests (method, path with any bytes, query,
// body of any size, framed with a right, wrong or missing length, and a
// header line from fuzzHeaders) to a healthy one-member cluster, a raftkv
// process started once for the whole run and reused across inputs, and
// proves that every answer is a documented one: never a crash, a redirect
// or a 5xx; every 4xx a one-line reason that changed nothing (a DELETE of
// an absent key, a 412 to a write and a 422 are applied, so the log grows,
// and the keys stay as they were); every 2xx, 304 and 412 right for the
// request and the key's version, and changing exactly what it reports. A
// 2xx needs a query of only the parameters its route takes, each once, no
// header the route refuses, and well-formed preconditions and
// Idempotency-Key. A write with an Idempotency-Key that was applied is
// recorded: the same request again must be answered as the first one was,
// marked Idempotent-Replayed, and another request with the key 422,
// neither changing anything.
//
// The request goes to the member as the bytes a client would send, on a
// connection of its own, kept alive between requests while the member
// keeps it: the bytes of one request as http.ReadRequest parses it, the
// rest of the input left unsent, so that nothing more is taken for a
// second request. A body that ends before its framing says it
// does is followed by the end of the connection's writing side, as a
// client that gives up would leave it. What the member holds before and
// after each request is read over HTTP too (fuzzMember.capture): GET
// /snapshot?level=stale, the whole replicated state (keys with their
// versions, members, removed ids, idempotency records), and GET /status,
// its commit and applied indexes. Requests that could add a member are
// not sent: a voter that never runs would cost the cluster its quorum
// (the root package's TestHTTPMembers covers the 201).
//
// Each fuzzing worker is a process of its own with a member of its own.
// CI runs it as
//
//	go test -run '^$' -fuzz '^FuzzHTTPAPI$' -fuzztime 40000x -fuzzminimizetime 2s ./e2e
func FuzzHTTPAPI(f *testing.F) {
	if testing.Short() {
		f.Skip("builds and runs a raftkv process")
	}
	m := startFuzzMember(f)
	used := make(map[string]fuzzFirst) // Idempotency-Key -> the applied request that first carried it
	fresh := 0
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
		line := fuzzHeaders[int(header)%len(fuzzHeaders)]
		raw, value, complete := fuzzRequest(method, path, query, line, body, framing)
		req, _, _, err := fuzzParse(raw)
		if err != nil || (req.Method == http.MethodOptions && req.RequestURI == "*") {
			return // the server answers itself; the handler never sees it
		}
		before := m.capture(t)
		if req.Method == http.MethodPost && req.URL.Path == "/members" && fuzzMightAddMember(before, value) {
			return
		}
		sends := 1
		if strings.Contains(line, "{") {
			if strings.Contains(line, "{fresh}") {
				fresh++
				line = strings.ReplaceAll(line, "{fresh}", fmt.Sprintf("fuzz-fresh-%d", fresh))
				sends = 2
			}
			key, _ := strings.CutPrefix(req.URL.Path, "/keys/")
			kv := before.kv[key]
			line = strings.ReplaceAll(line, "{etag63}", keyspace.ETag(kv.ModIndex+1<<63))
			line = strings.ReplaceAll(line, "{etag}", keyspace.ETag(kv.ModIndex))
			raw, value, complete = fuzzRequest(method, path, query, line, body, framing)
		}
		for i := range sends {
			req, sent, incomplete, err := fuzzParse(raw)
			if err != nil {
				t.Fatalf("%q parsed once, and then: %v", raw, err)
			}
			if i > 0 {
				before = m.capture(t)
			}
			rec, handled := m.send(t, req, sent, incomplete)
			after := m.capture(t)
			if !handled {
				// The server answered without the handler: a request its
				// own checks refuse. It must say so with a 4xx and change
				// nothing.
				if rec.Code < 400 || rec.Code >= 500 {
					t.Fatalf("%s %.200q: %d %q from the server, not the handler", req.Method, req.RequestURI, rec.Code, rec.Body.String())
				}
				if d := after.diff(before); d != "" {
					t.Fatalf("%s %.200q: %d from the server, and then %s", req.Method, req.RequestURI, rec.Code, d)
				}
				continue
			}
			fuzzCheck(t, req, value, complete, rec, before, after, used)
			if len(after.kv) > fuzzMaxKeys {
				m.deleteAll(t, after.kv)
			}
		}
	})
}

// fuzzMaxValue is the --max-value-bytes of FuzzHTTPAPI's member: small,
// so oversized values are cheap to send.
const fuzzMaxValue = 64

// fuzzMember is FuzzHTTPAPI's one-member cluster: a raftkv process, the
// client the harness reads its state with, and the connection the fuzzed
// requests go on, kept while the member keeps it.
type fuzzMember struct {
	url, addr string
	hc        *http.Client // keeps its connection alive
	conn      net.Conn     // nil until the next request dials
	br        *bufio.Reader
}

// startFuzzMember starts a one-member cluster on plain http (the fuzzer
// sends raw bytes, whatever RAFTKV_TLS says) with a 64-byte value limit
// and waits until it serves.
func startFuzzMember(f *testing.F) *fuzzMember {
	f.Helper()
	c := newE2ECluster(f, e2eBuild(f))
	c.pki = nil
	c.deadline = time.Now().Add(24 * time.Hour) // the fuzz run bounds itself
	id := c.allocate()
	c.start(id, "raftkv1", append(c.args(id, 1), "--max-value-bytes", strconv.Itoa(fuzzMaxValue))...)
	c.eventually(30*time.Second, "member 1 to answer GET /health with 200", func() bool {
		r, err := e2eTry(e2eClient, "GET", c.url(id, "/health"), "")
		return err == nil && r.code == http.StatusOK
	})
	tr := &http.Transport{MaxIdleConnsPerHost: 1}
	m := &fuzzMember{url: c.url(id, ""), addr: hostPort(c.url(id, "")), hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
	f.Cleanup(func() {
		tr.CloseIdleConnections()
		m.hangUp()
	})
	return m
}

// fuzzParse parses raw as the member does, and returns the request (its
// body read), the bytes to send and whether its body ends in an error: the
// bytes of this one request when its body reads to its end, or all of raw
// when it does not, since the member must then see the bytes run out (or
// the same malformed chunk) where the parser did.
func fuzzParse(raw []byte) (req *http.Request, sent []byte, incomplete bool, err error) {
	rd := bytes.NewReader(raw)
	br := bufio.NewReader(rd)
	if req, err = http.ReadRequest(br); err != nil {
		return nil, nil, false, err
	}
	if _, err := io.Copy(io.Discard, req.Body); err != nil {
		return req, raw, true, nil
	}
	return req, raw[:len(raw)-rd.Len()-br.Buffered()], false, nil
}

// fuzzAnswer is what the member answered a fuzzed request: for a watch
// that streams, the status and headers only.
type fuzzAnswer struct {
	Code   int
	header http.Header
	Body   *bytes.Buffer
	head   bool // an answer to HEAD, which has no body
}

// Header is the answer's header.
func (a *fuzzAnswer) Header() http.Header { return a.header }

// fuzzBodyEnd is how long a request may take to be answered: past the
// member's --request-timeout (5 s) and its body timeout (30 s).
const fuzzBodyEnd = 40 * time.Second

// send writes sent, the bytes of req, on the fuzzer's connection (a new
// one if the member closed the last), and reads the answer. A request
// whose body does not read to its end (incomplete) ends the connection's
// writing side after it. A watch answered 200 is read no further: the
// connection is closed 10 ms later, as a client gone. It reports whether the handler answered: every answer of its carries the
// cluster ID header, which the server's own refusals do not.
func (m *fuzzMember) send(t *testing.T, req *http.Request, sent []byte, incomplete bool) (*fuzzAnswer, bool) {
	t.Helper()
	if m.conn == nil {
		conn, err := net.DialTimeout("tcp", m.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connect to the member: %v", err)
		}
		m.conn, m.br = conn, bufio.NewReader(conn)
	}
	conn := m.conn
	conn.SetDeadline(time.Now().Add(fuzzBodyEnd))
	// The member may answer before it has read the whole request, and
	// close the connection: write beside reading the answer.
	wrote := make(chan error, 1)
	go func() {
		_, err := conn.Write(sent)
		if err == nil && incomplete {
			err = conn.(*net.TCPConn).CloseWrite()
		}
		wrote <- err
	}()
	what := fmt.Sprintf("%s %.200q", req.Method, req.RequestURI)
	resp, err := http.ReadResponse(m.br, req)
	if err != nil {
		m.hangUp()
		t.Fatalf("%s: no answer from the member: %v (its write: %v)", what, err, <-wrote)
	}
	a := &fuzzAnswer{Code: resp.StatusCode, header: resp.Header, Body: new(bytes.Buffer), head: req.Method == http.MethodHead}
	// A watch streams until its client goes (a HEAD too, with nothing to
	// show for it): this one goes soon. Closing the body would read the
	// stream to its end first.
	streaming := resp.StatusCode == http.StatusOK && strings.HasPrefix(req.URL.Path, "/watch/")
	if streaming {
		time.Sleep(10 * time.Millisecond)
		m.hangUp()
	} else if _, err := io.Copy(a.Body, resp.Body); err != nil {
		m.hangUp()
		t.Fatalf("%s: %d, and reading its body: %v", what, resp.StatusCode, err)
	}
	select {
	case err := <-wrote:
		if err != nil || incomplete || resp.Close || streaming {
			m.hangUp()
		}
	default:
		m.hangUp() // the member answered without reading the rest: the connection is done
		<-wrote
	}
	_, handled := resp.Header[api.ClusterIDHeader]
	return a, handled
}

// hangUp closes the fuzzer's connection; the next request dials again.
func (m *fuzzMember) hangUp() {
	if m.conn != nil {
		m.conn.Close()
		m.conn, m.br = nil, nil
	}
}

// fuzzCheckStream checks the answer to a listing or a watch, which change
// nothing: a listing is 200 with the keys under its prefix, in order, or a
// 4xx; a watch (cut short by the fuzzer's deadline) is 200 with an event
// stream, or a 4xx.
func fuzzCheckStream(t *testing.T, what string, req *http.Request, rec *fuzzAnswer, listing bool, before, after fuzzState) {
	t.Helper()
	params := []string{"from", "limit"}
	if listing {
		params = []string{"level", "limit", "after", "keys"}
	}
	switch code := rec.Code; {
	case code == http.StatusOK:
		if why := fuzzRefusal(req, params); why != "" {
			t.Fatalf("%s: 200, though %s", what, why)
		}
		if !listing {
			if ct := rec.Header().Get("Content-Type"); ct != "text/event-stream" {
				t.Fatalf("%s: 200 with Content-Type %q", what, ct)
			}
			break
		}
		if req.Method == http.MethodHead {
			break
		}
		var v listingView
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatalf("%s: 200 %.100q: %v", what, rec.Body.String(), err)
		}
		prefix := strings.TrimPrefix(req.URL.Path, "/keys/")
		for i, e := range v.Entries {
			k := e.Key
			if e.KeyBase64 != "" {
				b, _ := base64.StdEncoding.DecodeString(e.KeyBase64)
				k = string(b)
			}
			if _, ok := before.kv[k]; !ok || !strings.HasPrefix(k, prefix) || (i > 0 && k <= v.Entries[i-1].Key && e.KeyBase64 == "") {
				t.Fatalf("%s: lists %.60q (entry %d), not a key under %.60q in order", what, k, i, prefix)
			}
		}
	case slices.Contains([]int{400, 410}, code):
		fuzzOneLine(t, what, rec)
	default:
		t.Fatalf("%s: unexpected %d %q", what, code, rec.Body.String())
	}
	if d := after.diff(before); d != "" {
		t.Fatalf("%s: %d, and then %s", what, rec.Code, d)
	}
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
// handler's checks and add a member to the cluster in st. It errs on the
// side of yes: it decodes leniently, and leaves out only ids that are
// members already, which the handler refuses with 409 before proposing
// anything.
func fuzzMightAddMember(st fuzzState, body []byte) bool {
	var req membership.AddRequest
	if json.NewDecoder(bytes.NewReader(body)).Decode(&req) != nil {
		return false
	}
	if _, err := req.Validate(); err != nil {
		return false
	}
	return !slices.ContainsFunc(st.members, func(m membership.Member) bool { return m.ID == req.ID })
}

// fuzzMembersIdempotencyKey is the Idempotency-Key of a POST /members
// that carries one valid key, or "".
func fuzzMembersIdempotencyKey(req *http.Request) string {
	keys := req.Header["Idempotency-Key"]
	if req.Method != http.MethodPost || req.URL.Path != "/members" || len(keys) != 1 || !fuzzValidIdempotencyKey(keys[0]) {
		return ""
	}
	return keys[0]
}

// fuzzState is everything a request could change on the lone member.
type fuzzState struct {
	applied, committed uint64
	kv                 map[string]keyspace.Value
	members            []membership.Member
	removed            []uint64
	records            map[string]idempotency.Record // the idempotency keys recorded
}

// capture reads the member's state over HTTP: GET /snapshot?level=stale,
// a copy of all replicated state at its applied index, and GET /status,
// its commit index. The member is alone and only the fuzzer writes, so
// nothing moves between the two.
func (m *fuzzMember) capture(t *testing.T) fuzzState {
	t.Helper()
	file := m.get(t, "/snapshot?level=stale")
	hd, data, err := parseSnapshotFile(file)
	if err != nil {
		t.Fatalf("GET /snapshot: %v", err)
	}
	snap, err := codec.DecodeState(data)
	if err != nil {
		t.Fatalf("GET /snapshot: the snapshot does not decode: %v", err)
	}
	var status statusView
	if err := json.Unmarshal(m.get(t, "/status"), &status); err != nil {
		t.Fatalf("GET /status: %v", err)
	}
	if status.AppliedIndex != hd.index {
		t.Fatalf("GET /status: applied index %d, just after GET /snapshot at %d, with no request in between", status.AppliedIndex, hd.index)
	}
	st := fuzzState{
		applied: hd.index, committed: status.CommitIndex,
		kv:      make(map[string]keyspace.Value, snap.Keys.Len()),
		members: snap.Members.List(), removed: snap.Members.Removed(),
		records: make(map[string]idempotency.Record, len(snap.Records)),
	}
	snap.Keys.Scan(func(key string, v keyspace.Value) bool {
		st.kv[key] = v
		return true
	})
	for _, r := range snap.Records {
		st.records[r.Name] = *r
	}
	return st
}

// get answers GET path on the member, which must be 200, with its body.
func (m *fuzzMember) get(t *testing.T, path string) []byte {
	t.Helper()
	resp, err := m.hc.Get(m.url + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %.200q %v", path, resp.StatusCode, b, err)
	}
	return b
}

// diff describes how got differs from want, or returns "".
func (got fuzzState) diff(want fuzzState) string {
	var d []string
	if got.applied != want.applied || got.committed != want.committed {
		d = append(d, fmt.Sprintf("applied/committed index %d/%d, want %d/%d", got.applied, got.committed, want.applied, want.committed))
	}
	for _, k := range slices.Sorted(maps.Keys(got.kv)) {
		if w, ok := want.kv[k]; !ok || got.kv[k] != w {
			d = append(d, fmt.Sprintf("key %.60q holds %.40q at %+v, want %.40q at %+v (present %t)", k, got.kv[k].Data, got.kv[k].Version, w.Data, w.Version, ok))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(want.kv)) {
		if _, ok := got.kv[k]; !ok {
			d = append(d, fmt.Sprintf("key %.60q is missing", k))
		}
	}
	if !reflect.DeepEqual(got.members, want.members) || !slices.Equal(got.removed, want.removed) {
		d = append(d, fmt.Sprintf("members %+v removed %v, want %+v removed %v", got.members, got.removed, want.members, want.removed))
	}
	for _, k := range slices.Sorted(maps.Keys(got.records)) {
		if w, ok := want.records[k]; !ok || !reflect.DeepEqual(got.records[k], w) {
			d = append(d, fmt.Sprintf("Idempotency-Key %.40q recorded as %+v, want %+v (recorded %t)", k, got.records[k], w, ok))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(want.records)) {
		if _, ok := got.records[k]; !ok {
			d = append(d, fmt.Sprintf("Idempotency-Key %.40q is no longer recorded", k))
		}
	}
	return strings.Join(d, "; ")
}

// fuzzFirst is the first applied request with an Idempotency-Key, and
// the answer every later one with the same request must replay.
type fuzzFirst struct {
	fingerprint string
	code        int
	headers     [3]string // ETag, X-Create-Index, X-Raft-Index
}

// fuzzVersionHeaders are the headers a replay must repeat.
var fuzzVersionHeaders = [3]string{"ETag", "X-Create-Index", "X-Raft-Index"}

// fuzzAnswerHeaders is rec's version headers, for fuzzFirst.
func fuzzAnswerHeaders(rec *fuzzAnswer) [3]string {
	var h [3]string
	for i, name := range fuzzVersionHeaders {
		h[i] = rec.Header().Get(name)
	}
	return h
}

// fuzzCheck fails t unless rec is a documented answer to req, whose body
// reads as value (cleanly if complete), and the state went from before to
// after only as the answer says. used is the Idempotency-Keys applied so
// far; fuzzCheck adds req's if it was.
func fuzzCheck(t *testing.T, req *http.Request, value []byte, complete bool, rec *fuzzAnswer, before, after fuzzState, used map[string]fuzzFirst) {
	t.Helper()
	what := fmt.Sprintf("%s %.200q (%d-byte body, %s)", req.Method, req.RequestURI, len(value), fuzzShowHeaders(req.Header))
	key, isKey := strings.CutPrefix(req.URL.Path, "/keys/")
	read := req.Method == http.MethodGet || req.Method == http.MethodHead
	write := isKey && (req.Method == http.MethodPut || req.Method == http.MethodDelete)
	code := rec.Code
	params := []string{}
	if isKey && read {
		params = []string{"level"}
	}
	if listing := isKey && read && (key == "" || strings.HasSuffix(key, "/")); listing || (read && strings.HasPrefix(req.URL.Path, "/watch/")) {
		fuzzCheckStream(t, what, req, rec, listing, before, after)
		return
	}
	refusal := fuzzRefusal(req, params)
	if refusal != "" && (code < 300 || slices.Contains([]int{304, 412, 422}, code)) {
		t.Fatalf("%s: %d %q, though %s", what, code, rec.Body.String(), refusal)
	}
	cond := fuzzCondition(req.Header)
	cur, exists := before.kv[key]
	idemKey := ""
	if keys := req.Header["Idempotency-Key"]; write && len(keys) == 1 && fuzzValidIdempotencyKey(keys[0]) {
		idemKey = keys[0]
	}
	fp := fuzzFingerprint(req, key, value)
	first, reused := used[idemKey]
	replayed := rec.Header().Get("Idempotent-Replayed")
	if replayed != "" && (!reused || replayed != "true") {
		t.Fatalf("%s: %d with Idempotent-Replayed %q, for a request not seen before", what, code, replayed)
	}
	want := before // what the state must be afterwards
	index := func() uint64 {
		n, err := strconv.ParseUint(rec.Header().Get("X-Raft-Index"), 10, 64)
		if err != nil {
			t.Fatalf("%s: %d with X-Raft-Index %q", what, code, rec.Header().Get("X-Raft-Index"))
		}
		return n
	}
	// applied: the request's entry applied at the index the answer gives.
	applied := func() {
		if n := index(); n <= before.applied {
			t.Fatalf("%s: %d with X-Raft-Index %d, want an index past %d", what, code, n, before.applied)
		}
		want.applied, want.committed, want.kv = index(), index(), maps.Clone(before.kv)
		if idemKey != "" {
			used[idemKey] = fuzzFirst{fingerprint: fp, code: code, headers: fuzzAnswerHeaders(rec)}
			r, ok := after.records[idemKey]
			if !ok {
				t.Fatalf("%s: %d, applied, and Idempotency-Key %q is not recorded", what, code, idemKey)
			}
			want.records = maps.Clone(before.records)
			want.records[idemKey] = r
		}
	}
	// version: the answer shows the key's version before the request.
	version := func() {
		h := fuzzAnswerHeaders(rec)
		if wantTag, wantCreate := keyspace.ETag(cur.ModIndex), strconv.FormatUint(cur.CreateIndex, 10); exists && (h[0] != wantTag || h[1] != wantCreate) {
			t.Fatalf("%s: %d with ETag %q, X-Create-Index %q; the key is at %s, created at %s", what, code, h[0], h[1], wantTag, wantCreate)
		}
		if !exists && (h[0] != "" || h[1] != "") {
			t.Fatalf("%s: %d with ETag %q, X-Create-Index %q for an absent key", what, code, h[0], h[1])
		}
	}
	// readIndex: a read reflects the applied state.
	readIndex := func() {
		if n := index(); n != before.applied {
			t.Fatalf("%s: %d with X-Raft-Index %d; the member has applied %d", what, code, n, before.applied)
		}
	}
	refusedBefore := slices.Contains([]int{400, 404, 405, 409, 413, 415}, code) && rec.Header().Get("X-Raft-Index") == ""
	switch {
	case code >= 500:
		t.Fatalf("%s: %d %q from a healthy lone member", what, code, rec.Body.String())
	case refusedBefore:
		// Refused before it was proposed, whatever its Idempotency-Key.
		fuzzOneLine(t, what, rec)
	case reused && refusal == "" && first.fingerprint == fp && idemKey != "":
		// A retry: the first answer again, and no change but the entry.
		if code != first.code || fuzzAnswerHeaders(rec) != first.headers || replayed != "true" {
			t.Fatalf("%s: %d %v (Idempotent-Replayed %q), a retry of a request answered %d %v", what, code, fuzzAnswerHeaders(rec), replayed, first.code, first.headers)
		}
		want.applied, want.committed = max(after.applied, before.applied), max(after.applied, before.applied)
	case reused && refusal == "" && idemKey != "" && code != http.StatusUnprocessableEntity:
		t.Fatalf("%s: %d %q, though Idempotency-Key %q was used for another request", what, code, rec.Body.String(), idemKey)
	case code == http.StatusUnprocessableEntity:
		fuzzOneLine(t, what, rec)
		if !reused || idemKey == "" {
			// POST /members looks for its key's record before it checks
			// the member (an add that applied would fail the checks on
			// its retry), so a key a write used is 422 for it too.
			if _, usedByWrite := used[fuzzMembersIdempotencyKey(req)]; usedByWrite {
				break
			}
			t.Fatalf("%s: 422 %q for a key not used before", what, rec.Body.String())
		}
		want.applied, want.committed = max(after.applied, before.applied), max(after.applied, before.applied)
	case slices.Contains([]int{400, 404, 405, 409, 413, 415}, code):
		fuzzOneLine(t, what, rec)
		switch {
		case !isKey || code != http.StatusNotFound || refusal != "":
			t.Fatalf("%s: %d with X-Raft-Index %q", what, code, rec.Header().Get("X-Raft-Index"))
		case exists || cond.ifMatch != nil || !cond.holds(cur, exists):
			t.Fatalf("%s: 404; the key is present %t, condition %s", what, exists, cond)
		case req.Method == http.MethodDelete:
			applied() // the delete of an absent key is applied
		case read:
			readIndex()
		default:
			t.Fatalf("%s: %d with X-Raft-Index %q", what, code, rec.Header().Get("X-Raft-Index"))
		}
	case code == http.StatusPreconditionFailed && write:
		fuzzOneLine(t, what, rec)
		if cond.holds(cur, exists) || (cond.ifMatch == nil && cond.ifNoneMatch == nil) {
			t.Fatalf("%s: 412, but the condition %s holds for the key at %+v (present %t)", what, cond, cur.Version, exists)
		}
		version()
		applied()
	case code == http.StatusPreconditionFailed && isKey && read:
		fuzzOneLine(t, what, rec)
		if cond.ifMatch == nil || (exists && cond.ifMatch.matches(cur.ModIndex, true)) {
			t.Fatalf("%s: 412, but If-Match %s holds for the key at %+v (present %t)", what, cond.ifMatch, cur.Version, exists)
		}
		version()
		readIndex()
	case code == http.StatusNotModified && isKey && read:
		if !exists || !cond.holdsIfMatch(cur, exists) || cond.ifNoneMatch == nil || !cond.ifNoneMatch.matches(cur.ModIndex, false) || rec.Body.Len() != 0 {
			t.Fatalf("%s: 304 %q; the key is at %+v (present %t), condition %s", what, rec.Body.String(), cur.Version, exists, cond)
		}
		version()
		readIndex()
	case (code == http.StatusCreated || code == http.StatusNoContent) && write && req.Method == http.MethodPut:
		if !fuzzValidKey(key) || !complete || len(value) > fuzzMaxValue {
			t.Fatalf("%s: %d for key %.60q, value %.40q (read cleanly %t)", what, code, key, value, complete)
		}
		if !cond.holds(cur, exists) || (code == http.StatusCreated) == exists {
			t.Fatalf("%s: %d; the key is at %+v (present %t), condition %s", what, code, cur.Version, exists, cond)
		}
		applied()
		v := keyspace.Version{CreateIndex: index(), ModIndex: index()}
		if exists {
			v.CreateIndex = cur.CreateIndex
		}
		if h := fuzzAnswerHeaders(rec); h[0] != keyspace.ETag(v.ModIndex) || h[1] != strconv.FormatUint(v.CreateIndex, 10) {
			t.Fatalf("%s: %d with ETag %q, X-Create-Index %q; want %s, %d", what, code, h[0], h[1], keyspace.ETag(v.ModIndex), v.CreateIndex)
		}
		want.kv[key] = keyspace.Value{Data: string(value), Version: v}
	case code == http.StatusNoContent && write && req.Method == http.MethodDelete:
		if !exists || !cond.holds(cur, exists) {
			t.Fatalf("%s: 204; the key is at %+v (present %t), condition %s", what, cur.Version, exists, cond)
		}
		applied()
		delete(want.kv, key)
	case code == http.StatusOK && isKey && read:
		v := cur.Data
		if req.Method == http.MethodHead {
			v = "" // the same answer as a GET, without the body
		}
		if !fuzzValidLevel(req.URL.RawQuery) || !exists || rec.Body.String() != v {
			t.Fatalf("%s: 200 %.40q; key %.60q holds %.40q (present %t)", what, rec.Body.Bytes(), key, v, exists)
		}
		if !cond.holdsIfMatch(cur, exists) || (cond.ifNoneMatch != nil && cond.ifNoneMatch.matches(cur.ModIndex, false)) {
			t.Fatalf("%s: 200; the key is at %+v, condition %s", what, cur.Version, cond)
		}
		if got, want := rec.Header().Get("Content-Length"), strconv.Itoa(len(cur.Data)); got != want {
			t.Fatalf("%s: 200 with Content-Length %q, want %s", what, got, want)
		}
		version()
		readIndex()
	case code == http.StatusOK && read && slices.Contains([]string{"/status", "/members", "/health", "/metrics", "/version", "/snapshot"}, req.URL.Path):
	case code == http.StatusOK && read && fuzzIsMember(before, req.URL.Path):
	default:
		t.Fatalf("%s: unexpected %d %q", what, code, rec.Body.String())
	}
	if d := after.diff(want); d != "" {
		t.Fatalf("%s: %d %q, and then %s", what, code, rec.Body.String(), d)
	}
}

// fuzzShowHeaders lists the headers fuzzHeaders can set, for messages.
func fuzzShowHeaders(h http.Header) string {
	var shown []string
	for _, name := range []string{"If-Match", "If-None-Match", "Idempotency-Key", "If-Unmodified-Since", "Content-Range", "Content-Encoding"} {
		for _, v := range h[name] {
			shown = append(shown, fmt.Sprintf("%s: %.40q", name, v))
		}
	}
	if len(shown) == 0 {
		return "no precondition"
	}
	return strings.Join(shown, ", ")
}

// fuzzFingerprint is what makes two requests with one Idempotency-Key
// the same request: method, key, body (a DELETE's is not read) and the
// conditions as sent.
func fuzzFingerprint(req *http.Request, key string, value []byte) string {
	if req.Method == http.MethodDelete {
		value = nil
	}
	return fmt.Sprintf("%s %q %q %q %q", req.Method, key, value, strings.Join(req.Header["If-Match"], ","), strings.Join(req.Header["If-None-Match"], ","))
}

// fuzzValidIdempotencyKey is the contract's rule: 1 to 128 characters,
// each visible ASCII.
func fuzzValidIdempotencyKey(key string) bool {
	return len(key) >= 1 && len(key) <= idempotency.MaxKeyBytes && !strings.ContainsFunc(key, func(r rune) bool { return r < 0x21 || r > 0x7e })
}

// fuzzTags is an If-Match or If-None-Match list as the contract reads it,
// written apart from the server's parser so that each checks the other.
type fuzzTags struct {
	any  bool
	tags []uint64
	weak []bool
}

// matches compares the list with a key at modIndex: strongly (If-Match,
// a weak tag never matches) or weakly (If-None-Match).
func (l *fuzzTags) matches(modIndex uint64, strong bool) bool {
	if l.any {
		return true
	}
	for i, tag := range l.tags {
		if tag == modIndex && !(strong && l.weak[i]) {
			return true
		}
	}
	return false
}

// fuzzParseTags parses the lines of one header as a list: nil, false if
// malformed. Elements are "*", "N" or W/"N" for a decimal N of 64 bits,
// with optional whitespace around; empty elements are skipped (RFC 9110
// §5.6.1); "*" stands alone.
func fuzzParseTags(lines []string) (*fuzzTags, bool) {
	l := &fuzzTags{}
	n := 0
	for _, line := range lines {
		for elem := range strings.SplitSeq(line, ",") {
			elem = strings.Trim(elem, " \t")
			if elem == "" {
				continue
			}
			n++
			if elem == "*" {
				l.any = true
				continue
			}
			opaque, weak := strings.CutPrefix(elem, "W/")
			digits, ok := strings.CutPrefix(opaque, `"`)
			digits, ok2 := strings.CutSuffix(digits, `"`)
			tag, err := strconv.ParseUint(digits, 10, 64)
			if !ok || !ok2 || err != nil || strings.HasPrefix(digits, "+") {
				return nil, false
			}
			l.tags, l.weak = append(l.tags, tag), append(l.weak, weak)
		}
	}
	return l, n > 0 && !(l.any && n > 1)
}

// String shows the list as a header would.
func (l *fuzzTags) String() string {
	if l == nil {
		return "none"
	}
	if l.any {
		return "*"
	}
	var tags []string
	for i, tag := range l.tags {
		t := strconv.Quote(strconv.FormatUint(tag, 10))
		if l.weak[i] {
			t = "W/" + t
		}
		tags = append(tags, t)
	}
	return strings.Join(tags, ", ")
}

// String shows the preconditions, for messages.
func (c fuzzCond) String() string {
	return fmt.Sprintf("If-Match %s, If-None-Match %s", c.ifMatch, c.ifNoneMatch)
}

// fuzzCond is a request's preconditions; nil lists are headers not sent.
type fuzzCond struct {
	ifMatch, ifNoneMatch *fuzzTags
	malformed            bool
}

// fuzzCondition reads the preconditions of h.
func fuzzCondition(h http.Header) fuzzCond {
	var c fuzzCond
	for name, list := range map[string]**fuzzTags{"If-Match": &c.ifMatch, "If-None-Match": &c.ifNoneMatch} {
		if lines, ok := h[name]; ok {
			var valid bool
			if *list, valid = fuzzParseTags(lines); !valid {
				c.malformed = true
			}
		}
	}
	return c
}

// holdsIfMatch reports whether If-Match, if sent, holds for a key at cur.
func (c fuzzCond) holdsIfMatch(cur keyspace.Value, exists bool) bool {
	return c.ifMatch == nil || (exists && c.ifMatch.matches(cur.ModIndex, true))
}

// holds reports whether a write's conditions hold for a key at cur: If-Match
// (strong comparison, false for an absent key) and If-None-Match (weak,
// true for an absent key).
func (c fuzzCond) holds(cur keyspace.Value, exists bool) bool {
	return c.holdsIfMatch(cur, exists) && (c.ifNoneMatch == nil || !exists || !c.ifNoneMatch.matches(cur.ModIndex, false))
}

// fuzzIsMember reports whether path is /members/{id} for a member in st.
func fuzzIsMember(st fuzzState, path string) bool {
	id, ok := strings.CutPrefix(path, "/members/")
	n, err := strconv.ParseUint(id, 10, 64)
	return ok && err == nil && slices.ContainsFunc(st.members, func(m membership.Member) bool { return m.ID == n })
}

// fuzzValidKey is API.md's rule for keys: 1 to 4096 bytes, no empty, "."
// or ".." segments, and no trailing "/" (a path ending in "/" names a
// prefix, which GET lists and a write refuses).
func fuzzValidKey(key string) bool {
	if len(key) == 0 || len(key) > keyspace.MaxKeyBytes {
		return false
	}
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// fuzzRefusal says why req must not be answered with a 2xx, 304, 412 or
// 422, by the README's rules, on a route taking the query parameters
// params; or returns "". url.ParseQuery is the reference for what a query
// says: one it cannot parse may have meant something the server cannot
// see.
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
	isKey := strings.HasPrefix(req.URL.Path, "/keys/")
	read := req.Method == http.MethodGet || req.Method == http.MethodHead
	refused := []string{"If-Unmodified-Since"}
	if !isKey {
		refused = append(refused, "If-Match")
		if !read {
			refused = append(refused, "If-None-Match")
		}
	}
	idempotent := (isKey && (req.Method == http.MethodPut || req.Method == http.MethodDelete)) || (req.Method == http.MethodPost && req.URL.Path == "/members")
	if !idempotent {
		refused = append(refused, "Idempotency-Key")
	}
	if req.Method == http.MethodPut {
		if coding := req.Header.Get("Content-Encoding"); coding != "" && coding != "identity" {
			return "the value is encoded"
		}
		refused = append(refused, "Content-Range")
	}
	for _, name := range refused {
		if _, ok := req.Header[name]; ok {
			return "the request has " + name
		}
	}
	if isKey && fuzzCondition(req.Header).malformed {
		return "a precondition is malformed"
	}
	if keys, ok := req.Header["Idempotency-Key"]; ok && (len(keys) != 1 || !fuzzValidIdempotencyKey(keys[0])) {
		return fmt.Sprintf("the Idempotency-Key %q is not 1 to %d visible ASCII characters, once", keys, idempotency.MaxKeyBytes)
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

// deleteAll deletes the keys in kv over HTTP, so that the fuzz target's
// state stays small.
func (m *fuzzMember) deleteAll(t *testing.T, kv map[string]keyspace.Value) {
	t.Helper()
	for key := range kv {
		req, err := http.NewRequest(http.MethodDelete, m.url+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Path = "/keys/" + key // EscapedPath escapes what it must
		resp, err := m.hc.Do(req)
		if err != nil {
			t.Fatalf("DELETE key %.60q: %v", key, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("DELETE key %.60q: %d %q, want 204", key, resp.StatusCode, b)
		}
	}
}

// fuzzOneLine fails t unless rec's body is one non-empty line, as every
// error answer's reason is; an answer to HEAD has no body to carry it.
func fuzzOneLine(t *testing.T, what string, rec *fuzzAnswer) {
	t.Helper()
	if rec.head {
		return
	}
	body := rec.Body.String()
	line, ok := strings.CutSuffix(body, "\n")
	if !ok || strings.TrimSpace(line) == "" || strings.ContainsAny(line, "\r\n") {
		t.Errorf("%s: error body %q is not exactly one non-empty line", what, body)
	}
}
