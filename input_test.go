package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Input is never silently misread: query parameters a route does not take,
// preconditions raftkv cannot evaluate, headers that change what a PUT's
// body means, and paths no route takes all get a one-line 4xx naming what
// was wrong, and change nothing.

// inputTestServe sends one request with headers to h.
func inputTestServe(h http.Handler, method, target, body string, header map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// inputTestCase is one request, the answer it must get and the text its
// error body must contain.
type inputTestCase struct {
	method, target, body string
	header               map[string]string
	code                 int
	reason               string // for a 4xx: what the one-line body names
}

// inputTestRun sends each case to h, where key "a" holds "v" and key
// "absent" does not exist, and fails unless each gets its answer, and
// those refused leave both keys and the applied index as they were. A
// case that deletes or overwrites key "a" is followed by one restoring it.
func inputTestRun(t *testing.T, c *testCluster, h http.Handler, cases []inputTestCase) {
	t.Helper()
	if rec := httpTestServe(h, "PUT", "/keys/a", "v", false); rec.Code != http.StatusCreated {
		t.Fatalf("PUT /keys/a: %d %q", rec.Code, rec.Body.String())
	}
	applied := httpTestSettle(t, h, 0)
	for _, tc := range cases {
		what := fmt.Sprintf("%s %s %v", tc.method, tc.target, tc.header)
		rec := inputTestServe(h, tc.method, tc.target, tc.body, tc.header)
		if rec.Code != tc.code {
			t.Errorf("%s: %d %q, want %d", what, rec.Code, rec.Body.String(), tc.code)
			continue
		}
		if tc.code < 400 {
			if v := rec.Header().Get("X-Raft-Index"); v != "" {
				index, _ := strconv.ParseUint(v, 10, 64)
				applied = httpTestSettle(t, h, index)
			}
			continue
		}
		httpTestOneLine(t, what, rec.Body.String())
		if !strings.Contains(rec.Body.String(), tc.reason) {
			t.Errorf("%s: %d %q does not name %q", what, rec.Code, rec.Body.String(), tc.reason)
		}
		if v := rec.Header().Get("X-Raft-Index"); tc.code == http.StatusPreconditionFailed {
			// Evaluated where it applied (a write) or was read: an index
			// that changed nothing.
			index, _ := strconv.ParseUint(v, 10, 64)
			applied = max(applied, httpTestSettle(t, h, index))
		} else if v != "" {
			t.Errorf("%s: X-Raft-Index %q on a refused request", what, v)
		}
		if v, ok := testValue(c.server(1).store, "a"); !ok || string(v) != "v" {
			t.Errorf("%s: key a holds %q (present %t) after a refused request, want \"v\"", what, v, ok)
		}
		if v, ok := testValue(c.server(1).store, "absent"); ok {
			t.Errorf("%s: key absent holds %q after a refused request", what, v)
		}
		if got := httpTestGetStatus(t, h).AppliedIndex; got != applied {
			t.Errorf("%s: appliedIndex %d after a refused request, was %d", what, got, applied)
		}
	}
}

// TestHTTPQueryParameters proves every route refuses, with a 400 naming it, a query parameter it does not take, one given twice or a query that does not parse, and changes nothing.
func TestHTTPQueryParameters(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	existing := fmt.Sprintf(`{"id":1,"peerURL":%q}`, c.peerURLs[0]) // would be a 409
	inputTestRun(t, c, h, []inputTestCase{
		{method: "GET", target: "/keys/a?levle=consistent", code: 400, reason: `unknown query parameter "levle": this route takes level`},
		{method: "GET", target: "/keys/a?level=stale&recursive=true", code: 400, reason: `unknown query parameter "recursive"`},
		{method: "HEAD", target: "/keys/a?wait=true", code: 400, reason: `"wait"`},
		{method: "PUT", target: "/keys/absent?ttl=2", body: "x", code: 400, reason: `unknown query parameter "ttl": this route takes none`},
		{method: "PUT", target: "/keys/a?prevExist=false", body: "x", code: 400, reason: `"prevExist"`},
		{method: "PUT", target: "/keys/absent?level=consistent", body: "x", code: 400, reason: `"level"`},
		{method: "DELETE", target: "/keys/a?recursive=true", code: 400, reason: `"recursive"`},
		{method: "DELETE", target: "/keys/a?", code: 204},
		{method: "PUT", target: "/keys/a?&", body: "v", code: 201}, // empty pairs, as url.ParseQuery skips them
		{method: "GET", target: "/keys/a?level=stale&level=stale", code: 400, reason: `query parameter given more than once: "level"`},
		{method: "GET", target: "/keys/a?level=stale&le%76el=consistent", code: 400, reason: "more than once"},
		{method: "GET", target: "/keys/a?level=consistent;", code: 400, reason: "';'"},
		{method: "GET", target: "/keys/a?level=stale;x=1", code: 400, reason: "';'"},
		{method: "GET", target: "/keys/a?lev%zzel=stale", code: 400, reason: `invalid URL escape "%zz"`},
		{method: "GET", target: "/keys/a?level=st%2", code: 400, reason: "invalid URL escape"},
		{method: "GET", target: "/keys/a?level", code: 400, reason: `unknown level ""`},
		{method: "GET", target: "/keys/a?level=", code: 400, reason: `unknown level ""`},
		{method: "GET", target: "/keys/a?=stale", code: 400, reason: `unknown query parameter ""`},
		{method: "GET", target: "/keys/a?level=Stale", code: 400, reason: `unknown level "Stale"`},
		{method: "GET", target: "/keys/a?&level=stale&", code: 200},
		{method: "GET", target: "/keys/a?le%76el=st%61le", code: 200},
		{method: "GET", target: "/status?verbose=1", code: 400, reason: `"verbose": this route takes none`},
		{method: "GET", target: "/health?serializable=true", code: 400, reason: `"serializable"`},
		{method: "GET", target: "/members?level=stale", code: 400, reason: `"level"`},
		{method: "POST", target: "/members?dry-run=1", body: existing, code: 400, reason: `"dry-run"`},
		{method: "DELETE", target: "/members/1?force=true", code: 400, reason: `"force"`},
	})
}

// TestQueryCheckAllocs proves checking and reading the queries clients send to GET /keys/{key} allocates nothing.
func TestQueryCheckAllocs(t *testing.T) {
	params := []string{"level"}
	for _, q := range []string{"", "level=stale", "level=default", "level=consistent"} {
		allocs := testing.AllocsPerRun(100, func() {
			if err := checkQuery(q, params); err != nil {
				t.Fatalf("checkQuery(%q): %v", q, err)
			}
			if _, err := readLevel(q); err != nil {
				t.Fatalf("readLevel(%q): %v", q, err)
			}
		})
		if allocs != 0 {
			t.Errorf("query %q: %.0f allocations, want 0", q, allocs)
		}
	}
}

// TestHTTPPreconditions proves malformed If-Match and If-None-Match, If-Unmodified-Since (every method), conditions on routes without entity tags and a bad or misplaced Idempotency-Key are refused with a 400 naming the header, changing nothing; a false If-Match is a 412; cache validators on reads are evaluated; and a PUT with Content-Range or Content-Encoding is refused.
func TestHTTPPreconditions(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	date := time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
	inputTestRun(t, c, h, []inputTestCase{
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"If-Match": `"1"`}, code: 412, reason: "precondition failed"},
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"If-Match": `W/"1"`}, code: 412, reason: "precondition failed"},
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"If-Match": `abc`}, code: 400, reason: "If-Match: \"abc\" is not an entity tag"},
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"If-Match": `"x1"`}, code: 400, reason: "If-Match"},
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"If-Match": `*, "1"`}, code: 400, reason: "* cannot be combined"},
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"If-Match": ` , `}, code: 400, reason: "If-Match: empty"},
		{method: "PUT", target: "/keys/absent", body: "x", header: map[string]string{"If-None-Match": `"-1"`}, code: 400, reason: "If-None-Match"},
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"If-None-Match": "*"}, code: 412, reason: "precondition failed"},
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"If-Unmodified-Since": date}, code: 400, reason: "If-Unmodified-Since"},
		{method: "DELETE", target: "/keys/a", header: map[string]string{"If-Match": `"1"`}, code: 412, reason: "precondition failed"},
		{method: "DELETE", target: "/keys/absent", header: map[string]string{"If-Match": `*`}, code: 412, reason: "precondition failed"},
		{method: "DELETE", target: "/members/1", header: map[string]string{"If-Match": `"1"`}, code: 400, reason: "If-Match: this route evaluates no such condition"},
		{method: "POST", target: "/members", body: "{}", header: map[string]string{"If-None-Match": `*`}, code: 400, reason: "If-None-Match"},
		{method: "GET", target: "/keys/a", header: map[string]string{"If-Match": `"1"`}, code: 412, reason: "precondition failed"},
		{method: "GET", target: "/keys/a", header: map[string]string{"If-Match": `"1`}, code: 400, reason: "If-Match"},
		{method: "GET", target: "/members", header: map[string]string{"If-Match": `"1"`}, code: 400, reason: "If-Match"},
		{method: "GET", target: "/keys/a?level=stale", header: map[string]string{"If-Unmodified-Since": date}, code: 400, reason: "If-Unmodified-Since"},
		{method: "GET", target: "/keys/a", header: map[string]string{"If-None-Match": `"1"`}, code: 200},
		{method: "GET", target: "/keys/a", header: map[string]string{"If-Modified-Since": date}, code: 200},
		{method: "GET", target: "/keys/a", header: map[string]string{"Range": "bytes=0-0", "If-Range": `"1"`}, code: 200},
		{method: "GET", target: "/keys/a", header: map[string]string{"Idempotency-Key": "k"}, code: 400, reason: "Idempotency-Key: only PUT and DELETE /keys/{key} and POST /members take one"},
		{method: "DELETE", target: "/members/1", header: map[string]string{"Idempotency-Key": "k"}, code: 400, reason: "Idempotency-Key"},
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"Idempotency-Key": strings.Repeat("k", 129)}, code: 400, reason: "bad Idempotency-Key: must be 1 to 128 characters"},
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"Idempotency-Key": "a b"}, code: 400, reason: "bad Idempotency-Key: only visible ASCII"},
		{method: "PUT", target: "/keys/a", body: "x", header: map[string]string{"Idempotency-Key": ""}, code: 400, reason: "bad Idempotency-Key"},
		{method: "PUT", target: "/keys/absent", body: "0123", header: map[string]string{"Content-Range": "bytes 0-3/8"}, code: 400, reason: "Content-Range"},
		{method: "PUT", target: "/keys/absent", body: "\x1f\x8b", header: map[string]string{"Content-Encoding": "gzip"}, code: 415, reason: `Content-Encoding "gzip"`},
		{method: "PUT", target: "/keys/a", body: "v", header: map[string]string{"Content-Encoding": "identity"}, code: 204},
		{method: "PUT", target: "/keys/a", body: "v", header: map[string]string{"If-Modified-Since": date}, code: 204},
	})
	if rec := inputTestServe(h, "GET", "/keys/a", "", map[string]string{"If-None-Match": `"1"`}); rec.Body.String() != "v" {
		t.Errorf("GET with If-None-Match: body %q, want the value \"v\"", rec.Body.String())
	}
}

// TestHTTPRouteErrors proves the answers ServeMux would give itself (404, 405, redirects to /keys/ and to cleaned paths) are one-line plain-text reasons, with Allow on a 405.
func TestHTTPRouteErrors(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	inputTestRun(t, c, h, []inputTestCase{
		{method: "GET", target: "/keys", code: 400, reason: "no key in path: use /keys/{key}"},
		{method: "PUT", target: "/keys", body: "x", code: 400, reason: "no key in path"},
		{method: "GET", target: "/keys?level=stale", code: 400, reason: "no key in path"},
		{method: "GET", target: "/keys/", code: 200}, // a listing of every key
		{method: "DELETE", target: "/keys/", code: 400, reason: "no key in path"},
		{method: "GET", target: "/nope", code: 404, reason: `unknown path "/nope"`},
		{method: "GET", target: "/", code: 404, reason: `unknown path "/"`},
		{method: "GET", target: "http://elsewhere", code: 404, reason: `unknown path ""`},
		{method: "GET", target: "/status/", code: 404, reason: `unknown path "/status/"`},
		{method: "GET", target: "/x/../status", code: 400, reason: `path "/x/../status" must not contain empty, '.' or '..' segments`},
		{method: "GET", target: "//status", code: 400, reason: "segments"},
		{method: "GET", target: "/members/./1", code: 400, reason: "segments"},
		{method: "DELETE", target: "/members//1", code: 400, reason: "segments"},
		{method: "PUT", target: "/x/../keys/a", body: "x", code: 400, reason: "segments"},
		{method: "PUT", target: "/keys/absent/", body: "x", code: 400, reason: "key must not"},
		{method: "POST", target: "/keys/a", code: 405, reason: `POST is not allowed on "/keys/a": use GET, HEAD, PUT, DELETE`},
		{method: "OPTIONS", target: "/status", code: 405, reason: "use GET, HEAD"},
		{method: "PUT", target: "/members", code: 405, reason: "use GET, HEAD, POST"},
		{method: "PUT", target: "/members/1", code: 405, reason: "use GET, HEAD, DELETE"},
	})
	for _, tc := range []struct {
		method, target, allow string
	}{
		{"POST", "/keys/a", "GET, HEAD, PUT, DELETE"},
		{"PATCH", "/status", "GET, HEAD"},
		{"PUT", "/members/1", "GET, HEAD, DELETE"},
	} {
		rec := inputTestServe(h, tc.method, tc.target, "", nil)
		if got := rec.Header().Get("Allow"); rec.Code != 405 || got != tc.allow {
			t.Errorf("%s %s: %d with Allow %q, want 405 with Allow %q", tc.method, tc.target, rec.Code, got, tc.allow)
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Errorf("%s %s: Content-Type %q, want text/plain", tc.method, tc.target, ct)
		}
	}
}

// TestHTTPHead proves HEAD /keys/{key} answers a GET's status and headers, with the value's Content-Length however long it is, and no body.
func TestHTTPHead(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	long := strings.Repeat("v", 100_000) // more than the server buffers before it sends
	for key, value := range map[string]string{"short": "v", "long": long} {
		if got := do(t, "PUT", c.clients[0]+"/keys/"+key, value); got.code != http.StatusCreated {
			t.Fatalf("PUT /keys/%s: %d %q", key, got.code, got.body)
		}
	}
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(c.clients[0], "http://"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	// A HEAD answered with a body would leave it in front of the next
	// answer on the connection, which would then not parse.
	steps := []struct {
		method, key string
		code        int
		length      int
	}{
		{"HEAD", "long?level=consistent", 200, len(long)},
		{"HEAD", "short", 200, 1},
		{"HEAD", "absent", 404, -1},
		{"GET", "long", 200, len(long)},
	}
	for _, s := range steps {
		fmt.Fprintf(conn, "%s /keys/%s HTTP/1.1\r\nHost: raftkv\r\n\r\n", s.method, s.key)
	}
	br := bufio.NewReader(conn)
	for _, s := range steps {
		what := s.method + " /keys/" + s.key
		resp, err := http.ReadResponse(br, &http.Request{Method: s.method})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s: read body: %v", what, err)
		}
		if resp.StatusCode != s.code {
			t.Errorf("%s: %d, want %d", what, resp.StatusCode, s.code)
		}
		if s.length >= 0 && resp.Header.Get("Content-Length") != strconv.Itoa(s.length) {
			t.Errorf("%s: Content-Length %q, want %d", what, resp.Header.Get("Content-Length"), s.length)
		}
		if s.method == "HEAD" && len(body) != 0 {
			t.Errorf("%s: %d body bytes", what, len(body))
		}
		if s.method == "GET" && string(body) != long {
			t.Errorf("%s: %d body bytes, want the %d of the value", what, len(body), len(long))
		}
	}
}
