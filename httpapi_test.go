package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The client API, driven through member 1's handler with httptest. Each
// test function runs its own one-member cluster (it elects itself in a few
// hundred milliseconds), except TestHTTPNoLeader, which needs a member that
// cannot reach a quorum.

// httpTestMaxValue is the --max-value-bytes of the clusters below: small,
// so oversized values are cheap to send.
const httpTestMaxValue = 64

// httpTestCluster starts a one-member cluster with a small value limit and
// returns it with its member's handler.
func httpTestCluster(t *testing.T, mutate func(*config)) (*testCluster, http.Handler) {
	t.Helper()
	c := newTestCluster(t, 1, func(cfg *config) {
		cfg.maxValueBytes = httpTestMaxValue
		if mutate != nil {
			mutate(cfg)
		}
	})
	return c, c.server(1).http.Handler
}

// httpTestServe sends one request to h. unknownLength sends the body as if
// chunked, with no Content-Length.
func httpTestServe(h http.Handler, method, target, body string, unknownLength bool) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if unknownLength {
		req.ContentLength = -1
		req.TransferEncoding = []string{"chunked"}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// httpTestOneLine fails unless body is exactly one non-empty line.
func httpTestOneLine(t *testing.T, what, body string) {
	t.Helper()
	line, ok := strings.CutSuffix(body, "\n")
	if !ok || strings.TrimSpace(line) == "" || strings.ContainsAny(line, "\r\n") {
		t.Errorf("%s: error body %q is not exactly one non-empty line", what, body)
	}
}

// httpTestRaftIndex returns the X-Raft-Index header, failing if it is
// missing or not a positive number.
func httpTestRaftIndex(t *testing.T, what string, rec *httptest.ResponseRecorder) uint64 {
	t.Helper()
	v := rec.Header().Get("X-Raft-Index")
	index, err := strconv.ParseUint(v, 10, 64)
	if err != nil || index == 0 {
		t.Errorf("%s: X-Raft-Index %q, want a positive index", what, v)
	}
	return index
}

// httpTestGetJSON fetches path and requires a 200 with a JSON content type.
func httpTestGetJSON(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httpTestServe(h, http.MethodGet, path, "", false)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d %q, want 200", path, rec.Code, rec.Body.String())
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q, want application/json", path, ct)
	}
	return rec
}

// httpTestGetStatus fetches GET /status and checks that it is JSON with
// every documented field.
func httpTestGetStatus(t *testing.T, h http.Handler) statusView {
	t.Helper()
	rec := httpTestGetJSON(t, h, "/status")
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &fields); err != nil {
		t.Fatalf("GET /status: %v in %q", err, rec.Body.String())
	}
	for _, f := range []string{"id", "leader", "term", "raftState", "commitIndex", "appliedIndex", "snapshotIndex"} {
		if _, ok := fields[f]; !ok {
			t.Errorf("GET /status: no %q field in %s", f, rec.Body.String())
		}
	}
	var st statusView
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("GET /status: %v in %q", err, rec.Body.String())
	}
	return st
}

// httpTestSettle waits until GET /status reports index applied and returns
// the applied index. A handler is woken while its entry's batch is applied,
// so appliedIndex may trail a just-answered write for a moment.
func httpTestSettle(t *testing.T, h http.Handler, index uint64) uint64 {
	t.Helper()
	var applied uint64
	eventually(t, 5*time.Second, fmt.Sprintf("appliedIndex to reach %d", index), func() bool {
		applied = httpTestGetStatus(t, h).AppliedIndex
		return applied >= index
	})
	return applied
}

// httpTestKeyCount is how many keys member s holds.
func httpTestKeyCount(s *server) int {
	s.store.mu.RLock()
	defer s.store.mu.RUnlock()
	return s.store.kv.Len()
}

// httpTestGetMembers fetches GET /members.
func httpTestGetMembers(t *testing.T, h http.Handler) []memberView {
	t.Helper()
	rec := httpTestGetJSON(t, h, "/members")
	var members []memberView
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&members); err != nil {
		t.Fatalf("GET /members: %v in %q", err, rec.Body.String())
	}
	return members
}

// TestHTTPKeys proves PUT (201 creating, 204 replacing), GET at every level and DELETE answer with the stored bytes, a growing X-Raft-Index on writes, and on reads the applied index they reflect.
func TestHTTPKeys(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	longKey := strings.Repeat("k", maxKeyBytes)
	maxValue := strings.Repeat("v", httpTestMaxValue)

	// The steps run in order, each on the state the ones before left.
	steps := []struct {
		name          string
		method        string
		target        string
		body          string
		unknownLength bool
		code          int
		want          string // the body of a 200
		index         bool   // X-Raft-Index expected
	}{
		{name: "absent key", method: "GET", target: "/keys/hello", code: 404},
		{name: "absent key stale", method: "GET", target: "/keys/hello?level=stale", code: 404},
		{name: "absent key consistent", method: "GET", target: "/keys/hello?level=consistent", code: 404},
		{name: "put", method: "PUT", target: "/keys/hello", body: "world", code: 201, index: true},
		{name: "get no level", method: "GET", target: "/keys/hello", code: 200, want: "world"},
		{name: "get default", method: "GET", target: "/keys/hello?level=default", code: 200, want: "world"},
		{name: "get stale", method: "GET", target: "/keys/hello?level=stale", code: 200, want: "world"},
		{name: "get consistent", method: "GET", target: "/keys/hello?level=consistent", code: 200, want: "world"},
		{name: "get unknown level", method: "GET", target: "/keys/hello?level=linearizable", code: 400},
		{name: "get malformed query", method: "GET", target: "/keys/hello?level=consistent;", code: 400},
		{name: "get level twice", method: "GET", target: "/keys/hello?level=stale&level=consistent", code: 400},
		{name: "overwrite", method: "PUT", target: "/keys/hello", body: "again", code: 204, index: true},
		{name: "get overwritten", method: "GET", target: "/keys/hello", code: 200, want: "again"},
		{name: "put empty value", method: "PUT", target: "/keys/empty", code: 201, index: true},
		{name: "get empty value", method: "GET", target: "/keys/empty", code: 200, want: ""},
		{name: "put key with slashes", method: "PUT", target: "/keys/a/b/c", body: "nested", code: 201, index: true},
		{name: "get key with slashes", method: "GET", target: "/keys/a/b/c", code: 200, want: "nested"},
		{name: "parent of key with slashes", method: "GET", target: "/keys/a/b", code: 404},
		{name: "put longest key", method: "PUT", target: "/keys/" + longKey, body: "long", code: 201, index: true},
		{name: "get longest key", method: "GET", target: "/keys/" + longKey, code: 200, want: "long"},
		{name: "put largest value", method: "PUT", target: "/keys/big", body: maxValue, code: 201, index: true},
		{name: "get largest value", method: "GET", target: "/keys/big", code: 200, want: maxValue},
		{name: "put largest value chunked", method: "PUT", target: "/keys/big2", body: maxValue, unknownLength: true, code: 201, index: true},
		{name: "get largest value chunked", method: "GET", target: "/keys/big2", code: 200, want: maxValue},
		{name: "binary value", method: "PUT", target: "/keys/bin", body: "\x00\xff\n\r", code: 201, index: true},
		{name: "get binary value", method: "GET", target: "/keys/bin?level=consistent", code: 200, want: "\x00\xff\n\r"},
		{name: "delete", method: "DELETE", target: "/keys/hello", code: 204, index: true},
		{name: "get deleted", method: "GET", target: "/keys/hello", code: 404},
		{name: "get deleted stale", method: "GET", target: "/keys/hello?level=stale", code: 404},
		{name: "delete again", method: "DELETE", target: "/keys/hello", code: 404, index: true},
		{name: "delete never written", method: "DELETE", target: "/keys/never", code: 404, index: true},
	}
	var lastIndex uint64
	for _, s := range steps {
		rec := httpTestServe(h, s.method, s.target, s.body, s.unknownLength)
		what := s.name + ": " + s.method + " " + s.target
		if len(what) > 80 {
			what = what[:80] + "..."
		}
		if rec.Code != s.code {
			t.Fatalf("%s: %d %q, want %d", what, rec.Code, rec.Body.String(), s.code)
		}
		switch {
		case s.code == 200:
			if got := rec.Body.String(); got != s.want {
				t.Errorf("%s: body %q, want %q", what, got, s.want)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/octet-stream" {
				t.Errorf("%s: Content-Type %q, want application/octet-stream", what, ct)
			}
		case s.code == 204, s.code == 201:
			if rec.Body.Len() != 0 {
				t.Errorf("%s: %d with body %q", what, s.code, rec.Body.String())
			}
		default:
			httpTestOneLine(t, what, rec.Body.String())
		}
		if s.index {
			index := httpTestRaftIndex(t, what, rec)
			if index <= lastIndex {
				t.Errorf("%s: X-Raft-Index %d, want more than the last write's %d", what, index, lastIndex)
			}
			lastIndex = index
		} else if s.method == "GET" && s.code != 400 {
			if index := httpTestRaftIndex(t, what, rec); index < lastIndex {
				t.Errorf("%s: X-Raft-Index %d, before the last write's %d", what, index, lastIndex)
			}
		} else if v := rec.Header().Get("X-Raft-Index"); v != "" {
			t.Errorf("%s: X-Raft-Index %q on a request that wrote nothing", what, v)
		}
	}

	// Every write applied, and nothing else did.
	if got := httpTestSettle(t, h, lastIndex); got != lastIndex {
		t.Errorf("appliedIndex %d after the last write at %d", got, lastIndex)
	}
	if n := httpTestKeyCount(c.server(1)); n != 6 {
		t.Errorf("member holds %d keys, want 6 (empty, a/b/c, the long key, big, big2, bin)", n)
	}
}

// TestHTTPRejectedWrites proves bad keys, unclean key paths and oversized values get a one-line 400/413 (never 301) and change nothing.
func TestHTTPRejectedWrites(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	applied := httpTestGetStatus(t, h).AppliedIndex
	if applied == 0 {
		t.Fatal("appliedIndex 0 on a member that has elected itself")
	}
	tooBig := strings.Repeat("x", httpTestMaxValue+1)

	cases := []struct {
		name          string
		method        string
		target        string
		body          string
		unknownLength bool
		code          int
		keys          []string // keys that must still be absent afterwards
	}{
		{"key too long", "PUT", "/keys/" + strings.Repeat("k", maxKeyBytes+1), "v", false, 400, []string{strings.Repeat("k", maxKeyBytes+1)}},
		{"empty key", "PUT", "/keys/", "v", false, 400, []string{""}},
		{"empty segment", "PUT", "/keys/a//b", "v", false, 400, []string{"a//b", "a/b"}},
		{"dot-dot segment", "PUT", "/keys/a/../b", "v", false, 400, []string{"a/../b", "b"}},
		{"escaped dot-dot segment", "PUT", "/keys/a/%2e%2e/b", "v", false, 400, []string{"a/../b", "b"}},
		{"dot segment", "PUT", "/keys/./a", "v", false, 400, []string{"./a", "a"}},
		{"leading empty segment", "PUT", "/keys//a", "v", false, 400, []string{"/a", "a"}},
		{"trailing dot", "PUT", "/keys/a/.", "v", false, 400, []string{"a/.", "a"}},
		{"trailing slash", "PUT", "/keys/a/", "v", false, 400, []string{"a/", "a"}},
		{"value too large", "PUT", "/keys/big", tooBig, false, 413, []string{"big"}},
		{"value too large chunked", "PUT", "/keys/big", tooBig, true, 413, []string{"big"}},
		{"value far too large chunked", "PUT", "/keys/big", strings.Repeat("x", 2<<20), true, 413, []string{"big"}},
		{"value too large with bad key", "PUT", "/keys/", tooBig, false, 400, []string{""}},
		{"delete empty key", "DELETE", "/keys/", "", false, 400, nil},
		{"delete key too long", "DELETE", "/keys/" + strings.Repeat("k", maxKeyBytes+1), "", false, 400, nil},
		{"delete unclean path", "DELETE", "/keys/a//b", "", false, 400, nil},
		{"get unclean path", "GET", "/keys/a/../b", "", false, 400, nil},
		{"get unclean prefix", "GET", "/keys/a//", "", false, 400, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := httpTestServe(h, tc.method, tc.target, tc.body, tc.unknownLength)
			if rec.Code != tc.code {
				t.Fatalf("%s %.60s: %d %q (Location %q), want %d", tc.method, tc.target, rec.Code, rec.Body.String(), rec.Header().Get("Location"), tc.code)
			}
			httpTestOneLine(t, tc.name, rec.Body.String())
			if v := rec.Header().Get("X-Raft-Index"); v != "" {
				t.Errorf("X-Raft-Index %q on a rejected request", v)
			}
			for _, k := range tc.keys {
				if v, ok := testValue(c.server(1).store, k); ok {
					t.Errorf("key %.40q holds %.40q after a rejected PUT", k, v)
				}
			}
			if n := httpTestKeyCount(c.server(1)); n != 0 {
				t.Errorf("member holds %d keys after only rejected writes", n)
			}
			if got := httpTestGetStatus(t, h).AppliedIndex; got != applied {
				t.Errorf("appliedIndex %d after a rejected request, was %d", got, applied)
			}
		})
	}
}

// TestHTTPRouting proves a wrong method gets 405 with an Allow header naming the right ones, and an unknown path 404.
func TestHTTPRouting(t *testing.T) {
	_, h := httpTestCluster(t, nil)
	cases := []struct {
		method, target string
		code           int
		allow          []string // methods the Allow header must name
	}{
		{"POST", "/keys/x", 405, []string{"GET", "PUT", "DELETE"}},
		{"PATCH", "/keys/x", 405, []string{"GET", "PUT", "DELETE"}},
		{"PUT", "/status", 405, []string{"GET"}},
		{"DELETE", "/status", 405, []string{"GET"}},
		{"POST", "/health", 405, []string{"GET"}},
		{"PUT", "/members", 405, []string{"GET", "POST"}},
		{"DELETE", "/members", 405, []string{"GET", "POST"}},
		{"POST", "/members/1", 405, []string{"GET", "DELETE"}},
		{"PUT", "/members/1", 405, []string{"GET", "DELETE"}},
		{"GET", "/nope", 404, nil},
		{"GET", "/", 404, nil},
		{"PUT", "/key/x", 404, nil},
		{"GET", "/statuses", 404, nil},
		{"DELETE", "/members/1/x", 404, nil},
	}
	for _, tc := range cases {
		rec := httpTestServe(h, tc.method, tc.target, "", false)
		what := tc.method + " " + tc.target
		if rec.Code != tc.code {
			t.Errorf("%s: %d %q, want %d", what, rec.Code, rec.Body.String(), tc.code)
			continue
		}
		httpTestOneLine(t, what, rec.Body.String())
		allow := rec.Header().Get("Allow")
		if tc.code == 405 && allow == "" {
			t.Errorf("%s: 405 without an Allow header", what)
		}
		for _, m := range tc.allow {
			if !slices.Contains(strings.Split(allow, ", "), m) {
				t.Errorf("%s: Allow %q does not name %s", what, allow, m)
			}
		}
		if slices.Contains(strings.Split(allow, ", "), tc.method) {
			t.Errorf("%s: Allow %q names the refused method", what, allow)
		}
	}
}

// TestHTTPMembers proves GET /members shows the table, bad or conflicting changes get 400/404/409 unproposed, and a valid POST 201.
func TestHTTPMembers(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	peer1, client1 := c.peerURLs[0], c.clients[0]

	members := httpTestGetMembers(t, h)
	want := []memberView{{member: member{ID: 1, PeerURLs: []string{peer1}, ClientURLs: []string{client1}}, IsLeader: true}}
	if fmt.Sprint(members) != fmt.Sprint(want) {
		t.Fatalf("GET /members: %+v, want %+v", members, want)
	}
	applied := httpTestGetStatus(t, h).AppliedIndex

	// Addresses nothing listens on: the new member never runs.
	newPeer, newClient := "http://"+freeAddr(t), "http://"+freeAddr(t)
	body := func(id uint64, peerURL, clientURL string) string {
		return fmt.Sprintf(`{"id":%d,"peerURL":%q,"clientURL":%q}`, id, peerURL, clientURL)
	}
	rejected := []struct {
		name   string
		method string
		target string
		body   string
		code   int
	}{
		{"bad JSON", "POST", "/members", `{"id":2,`, 400},
		{"not an object", "POST", "/members", `[2]`, 400},
		{"empty body", "POST", "/members", ``, 400},
		{"unknown field", "POST", "/members", `{"id":2,"peerURL":"` + newPeer + `","name":"two"}`, 400},
		{"two values", "POST", "/members", body(2, newPeer, newClient) + body(3, newPeer, newClient), 400},
		{"body too large", "POST", "/members", `{"id":2,"peerURL":"` + newPeer + `","clientURL":"` + strings.Repeat(" ", maxMemberBodyBytes) + `"}`, 413},
		{"id 0", "POST", "/members", body(0, newPeer, newClient), 400},
		{"id missing", "POST", "/members", `{"peerURL":"` + newPeer + `"}`, 400},
		{"id 70000", "POST", "/members", body(70000, newPeer, newClient), 400},
		{"negative id", "POST", "/members", `{"id":-2,"peerURL":"` + newPeer + `"}`, 400},
		{"peerURL ftp", "POST", "/members", body(2, "ftp://x", newClient), 400},
		{"peerURL without port", "POST", "/members", body(2, "http://host-without-port", newClient), 400},
		{"peerURL empty", "POST", "/members", body(2, "", newClient), 400},
		{"peerURL with path", "POST", "/members", body(2, newPeer+"/raft", newClient), 400},
		{"clientURL without scheme", "POST", "/members", body(2, newPeer, "localhost"), 400},
		{"clientURL without port", "POST", "/members", body(2, newPeer, "http://localhost"), 400},
		{"clientURL with path", "POST", "/members", body(2, newPeer, newClient+"/api"), 400},
		{"clientURL ftp", "POST", "/members", body(2, newPeer, "ftp://127.0.0.1:1"), 400},
		{"peerURL with a space", "POST", "/members", body(2, " "+newPeer, newClient), 400},
		{"peerURL https", "POST", "/members", body(2, strings.Replace(newPeer, "http:", "https:", 1), newClient), 400},
		{"peerURL unix", "POST", "/members", body(2, strings.Replace(newPeer, "http:", "unix:", 1), newClient), 400},
		{"peerURL port 99999", "POST", "/members", body(2, "http://127.0.0.1:99999", newClient), 400},
		{"peerURL long host", "POST", "/members", body(2, "http://"+strings.Repeat("h", 10000)+":1", newClient), 400},
		{"peerURL user info", "POST", "/members", body(2, "http://me@127.0.0.1:1", newClient), 400},
		{"clientURL https", "POST", "/members", body(2, newPeer, strings.Replace(newClient, "http:", "https:", 1)), 400},
		{"clientURL same as peerURL", "POST", "/members", body(2, newPeer, newPeer), 400},
		{"existing id", "POST", "/members", body(1, newPeer, newClient), 409},
		{"existing peer URL", "POST", "/members", body(2, peer1, newClient), 409},
		{"existing peer URL spelled otherwise", "POST", "/members", body(2, strings.Replace(peer1, "http:", "HTTP:", 1)+"/", newClient), 409},
		{"existing client URL", "POST", "/members", body(2, newPeer, client1), 409},
		{"existing client URL as peer URL", "POST", "/members", body(2, client1, newClient), 409},
		{"remove id not a number", "DELETE", "/members/abc", "", 400},
		{"remove id 0", "DELETE", "/members/0", "", 400},
		{"remove negative id", "DELETE", "/members/-1", "", 400},
		{"remove unknown id", "DELETE", "/members/99", "", 404},
		{"remove the only member", "DELETE", "/members/1", "", 409},
	}
	for _, tc := range rejected {
		rec := httpTestServe(h, tc.method, tc.target, tc.body, false)
		what := tc.name + ": " + tc.method + " " + tc.target
		if rec.Code != tc.code {
			t.Errorf("%s: %d %q, want %d", what, rec.Code, rec.Body.String(), tc.code)
			continue
		}
		httpTestOneLine(t, what, rec.Body.String())
		if v := rec.Header().Get("X-Raft-Index"); v != "" {
			t.Errorf("%s: X-Raft-Index %q on a rejected request", what, v)
		}
	}
	if got := httpTestGetStatus(t, h).AppliedIndex; got != applied {
		t.Errorf("appliedIndex %d after only rejected membership requests, was %d", got, applied)
	}
	if got := httpTestGetMembers(t, h); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("GET /members after rejected requests: %+v, want %+v", got, want)
	}

	// Last: adding a voter that never runs costs this cluster its quorum.
	rec := httpTestServe(h, "POST", "/members", body(2, newPeer, newClient), false)
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST /members: %d %q, want 201", rec.Code, rec.Body.String())
	}
	addIndex := httpTestRaftIndex(t, "POST /members", rec)
	if loc := rec.Header().Get("Location"); loc != "/members/2" {
		t.Errorf("POST /members: Location %q, want /members/2", loc)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("POST /members: Content-Type %q, want application/json", ct)
	}
	var added memberView
	if err := json.Unmarshal(rec.Body.Bytes(), &added); err != nil {
		t.Fatalf("POST /members: %v in %q", err, rec.Body.String())
	}
	if wantAdded := (memberView{member: member{ID: 2, PeerURLs: []string{newPeer}, ClientURLs: []string{newClient}}}); fmt.Sprint(added) != fmt.Sprint(wantAdded) {
		t.Errorf("POST /members: body %+v, want %+v", added, wantAdded)
	}
	got := httpTestGetMembers(t, h)
	if len(got) != 2 || got[0].ID != 1 || got[1].ID != 2 || got[1].IsLeader ||
		!slices.Equal(got[1].PeerURLs, []string{newPeer}) || !slices.Equal(got[1].ClientURLs, []string{newClient}) {
		t.Errorf("GET /members after adding member 2: %+v", got)
	}
	if _, ok := c.server(1).raft.status().Config.Voters.IDs()[2]; !ok {
		t.Errorf("raft's voters %v do not include member 2", c.server(1).raft.status().Config.Voters)
	}
	// A conf change is snapshotted at once, so that a member added after
	// compaction can catch up from a snapshot that includes it.
	eventually(t, 5*time.Second, fmt.Sprintf("a snapshot at the conf change's index %d", addIndex), func() bool {
		return httpTestGetStatus(t, h).SnapshotIndex >= addIndex
	})

	// The checks before proposing need no quorum.
	for _, tc := range []struct{ name, body string }{
		{"same member again", body(2, newPeer, newClient)},
		{"new id, member 2's peer URL", body(3, newPeer, newClient)},
	} {
		rec := httpTestServe(h, "POST", "/members", tc.body, false)
		if rec.Code != http.StatusConflict {
			t.Errorf("POST /members %s: %d %q, want 409", tc.name, rec.Code, rec.Body.String())
			continue
		}
		httpTestOneLine(t, tc.name, rec.Body.String())
	}
}

// TestHTTPMembersTrailingData proves POST /members refuses with 400, adding no one, a body with anything after the JSON object.
func TestHTTPMembersTrailingData(t *testing.T) {
	// A member wrongly added costs the quorum; later proposals time out.
	_, h := httpTestCluster(t, func(cfg *config) { cfg.requestTimeout = time.Second })
	applied := httpTestGetStatus(t, h).AppliedIndex
	// Each case names a different new member, so one wrongly accepted
	// does not turn the next into a 409.
	for i, trailer := range []string{" x", " {}", ",", "}", "]"} {
		id := i + 2
		body := fmt.Sprintf(`{"id":%d,"peerURL":"http://%s"}`, id, freeAddr(t)) + trailer
		rec := httpTestServe(h, "POST", "/members", body, false)
		if rec.Code != http.StatusBadRequest {
			t.Errorf("POST /members %s: %d %q, want 400", body, rec.Code, rec.Body.String())
			continue
		}
		httpTestOneLine(t, body, rec.Body.String())
	}
	if got := httpTestGetMembers(t, h); len(got) != 1 {
		t.Errorf("GET /members after only malformed POSTs: %+v, want member 1 alone", got)
	}
	if got := httpTestGetStatus(t, h).AppliedIndex; got != applied {
		t.Errorf("appliedIndex %d after only malformed POSTs, was %d", got, applied)
	}
}

// TestHTTPStatusAndHealth proves GET /status reports raft state, indexes and snapshot index, and GET /health answers 200 "ok".
func TestHTTPStatusAndHealth(t *testing.T) {
	const snapshotCount = 4
	_, h := httpTestCluster(t, func(cfg *config) { cfg.snapshotCount = snapshotCount })

	st := httpTestGetStatus(t, h)
	if st.ID != 1 || st.Leader != 1 || st.Term < 1 || st.RaftState != "StateLeader" {
		t.Errorf("GET /status on a lone leader: %+v", st)
	}
	// The bootstrap conf change may be snapshotted already, nothing later.
	if st.AppliedIndex == 0 || st.CommitIndex < st.AppliedIndex || st.SnapshotIndex > 1 {
		t.Errorf("GET /status on a new member: %+v, want 0 < appliedIndex <= commitIndex, snapshotIndex 0 or 1", st)
	}

	var last uint64
	for i := range 2 * snapshotCount {
		rec := httpTestServe(h, "PUT", fmt.Sprintf("/keys/k%d", i), "v", false)
		if rec.Code != http.StatusCreated {
			t.Fatalf("PUT: %d %q", rec.Code, rec.Body.String())
		}
		last = httpTestRaftIndex(t, "PUT", rec)
	}
	httpTestSettle(t, h, last)
	after := httpTestGetStatus(t, h)
	if after.AppliedIndex != last || after.CommitIndex != last {
		t.Errorf("GET /status after writes up to %d: commitIndex %d, appliedIndex %d", last, after.CommitIndex, after.AppliedIndex)
	}
	if after.Term != st.Term || after.Leader != 1 || after.RaftState != "StateLeader" {
		t.Errorf("GET /status: leadership changed on a lone member: %+v then %+v", st, after)
	}
	// The raft goroutine snapshots just after the store applies.
	var snap uint64
	defer func() {
		if t.Failed() {
			t.Logf("last snapshotIndex %d, appliedIndex %d, --snapshot-count %d", snap, last, snapshotCount)
		}
	}()
	eventually(t, 5*time.Second, "a snapshot within --snapshot-count entries of the applied index", func() bool {
		snap = httpTestGetStatus(t, h).SnapshotIndex
		return snap > st.SnapshotIndex && snap <= last && last-snap < snapshotCount
	})

	rec := httpTestServe(h, "GET", "/health", "", false)
	if rec.Code != http.StatusOK || rec.Body.String() != "ok\n" {
		t.Errorf("GET /health: %d %q, want 200 \"ok\\n\"", rec.Code, rec.Body.String())
	}
}

// TestHTTPNoLeader proves a member without a quorum answers writes, leader reads, membership and /health with 503 + Retry-After at once.
func TestHTTPNoLeader(t *testing.T) {
	c, h := httpTestLoneOfThree(t)
	// The bootstrap conf changes apply just after startServer returns
	// (see TestHTTPMembersAtFirstStart); wait for them, so that the
	// membership requests below meet the member table, not an empty one.
	eventually(t, 5*time.Second, "the bootstrap members to apply", func() bool {
		return len(c.server(1).store.memberList()) == 3
	})

	newMember := fmt.Sprintf(`{"id":4,"peerURL":"http://%s"}`, freeAddr(t))
	cases := []struct{ method, target, body string }{
		{"PUT", "/keys/x", "v"},
		{"DELETE", "/keys/x", ""},
		{"GET", "/keys/x", ""},
		{"GET", "/keys/x?level=default", ""},
		{"GET", "/keys/x?level=consistent", ""},
		{"POST", "/members", newMember},
		{"DELETE", "/members/2", ""},
		{"GET", "/health", ""},
	}
	for _, tc := range cases {
		what := tc.method + " " + tc.target
		start := time.Now()
		rec := httpTestServe(h, tc.method, tc.target, tc.body, false)
		if rec.Code != http.StatusServiceUnavailable {
			t.Errorf("%s: %d %q, want 503", what, rec.Code, rec.Body.String())
			continue
		}
		if took := time.Since(start); took >= c.config(1, "").requestTimeout {
			t.Errorf("%s: 503 took %s, the whole request timeout", what, took)
		}
		if ra := rec.Header().Get("Retry-After"); ra == "" {
			t.Errorf("%s: 503 without Retry-After", what)
		}
		httpTestOneLine(t, what, rec.Body.String())
	}

	if rec := httpTestServe(h, "GET", "/keys/x?level=stale", "", false); rec.Code != http.StatusNotFound {
		t.Errorf("GET stale without a leader: %d %q, want 404", rec.Code, rec.Body.String())
	}
	if v, ok := testValue(c.server(1).store, "x"); ok {
		t.Errorf("key x holds %q though no write could commit", v)
	}
	st := httpTestGetStatus(t, h)
	if st.ID != 1 || st.Leader != 0 || st.RaftState == "StateLeader" {
		t.Errorf("GET /status without a quorum: %+v", st)
	}
	got := httpTestGetMembers(t, h)
	if len(got) != 3 || slices.ContainsFunc(got, func(m memberView) bool { return m.IsLeader }) {
		t.Fatalf("GET /members without a leader: %+v, want members 1-3, none leading", got)
	}
	for _, m := range got[1:] {
		// Members that never ran have advertised no client URL: [], not null.
		if m.ClientURLs == nil || len(m.ClientURLs) != 0 || !slices.Equal(m.PeerURLs, []string{c.peerURLs[m.ID-1]}) {
			t.Errorf("GET /members: member %d is %+v, want its --cluster peer URL and clientURLs []", m.ID, m)
		}
	}
}

// httpTestLoneOfThree starts member 1 of a 3-member cluster whose other
// members never start, so it never has a leader, and returns its handler.
func httpTestLoneOfThree(t *testing.T) (*testCluster, http.Handler) {
	t.Helper()
	c := &testCluster{t: t, dir: t.TempDir(), scheme: "http", running: make(map[uint64]*server)}
	for range 3 {
		c.allocate()
	}
	t.Cleanup(c.stopAll)
	c.startWith(c.config(1, ""))
	return c, c.server(1).http.Handler
}

// TestHTTPMembersAtFirstStart proves the API knows the --cluster members as soon as a member's first start returns.
func TestHTTPMembersAtFirstStart(t *testing.T) {
	c, h := httpTestLoneOfThree(t)
	got := httpTestGetMembers(t, h)
	ids := make([]uint64, 0, len(got))
	for _, m := range got {
		ids = append(ids, m.ID)
	}
	if !slices.Equal(ids, []uint64{1, 2, 3}) {
		t.Errorf("GET /members right after the first start: %+v, want members 1, 2 and 3 from --cluster %v", got, c.peerURLs)
	}
	// No leader: a known member gets 503, an unknown one would get 404.
	if rec := httpTestServe(h, "DELETE", "/members/2", "", false); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("DELETE /members/2 right after the first start: %d %q, want 503 (no leader)", rec.Code, rec.Body.String())
	}
}
