package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"raftkv/config"
	"raftkv/keyspace"
	"raftkv/listing"
	"raftkv/membership"
	"raftkv/status"
	"raftkv/version"
)

// The client API (httpapi.go), driven through member 1's handler with
// httptest, or over HTTP. Each test function runs its own cluster; a
// one-member cluster elects itself in a few hundred milliseconds.

// httpTestMaxValue is the --max-value-bytes of the clusters below: small,
// so oversized values are cheap to send.
const httpTestMaxValue = 64

// httpTestCluster starts a one-member cluster with a small value limit and
// returns it with its member's handler.
func httpTestCluster(t *testing.T, mutate func(*config.Config)) (*testCluster, http.Handler) {
	t.Helper()
	c := newTestCluster(t, 1, func(cfg *config.Config) {
		cfg.MaxValueBytes = httpTestMaxValue
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
func httpTestGetStatus(t *testing.T, h http.Handler) status.View {
	t.Helper()
	rec := httpTestGetJSON(t, h, "/status")
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &fields); err != nil {
		t.Fatalf("GET /status: %v in %q", err, rec.Body.String())
	}
	for _, f := range []string{"id", "clusterID", "leader", "term", "raftState", "isLearner", "commitIndex", "appliedIndex", "snapshotIndex"} {
		if _, ok := fields[f]; !ok {
			t.Errorf("GET /status: no %q field in %s", f, rec.Body.String())
		}
	}
	var st status.View
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
	return s.store.keys.Len()
}

// httpTestGetMembers fetches GET /members.
func httpTestGetMembers(t *testing.T, h http.Handler) []membership.View {
	t.Helper()
	rec := httpTestGetJSON(t, h, "/members")
	var members []membership.View
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&members); err != nil {
		t.Fatalf("GET /members: %v in %q", err, rec.Body.String())
	}
	return members
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

// TestHTTPKeys proves PUT (201 creating, 204 replacing), GET at every level and DELETE answer with the stored bytes, a growing X-Raft-Index on writes, and on reads the applied index they reflect.
func TestHTTPKeys(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	longKey := strings.Repeat("k", keyspace.MaxKeyBytes)
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
		{"key too long", "PUT", "/keys/" + strings.Repeat("k", keyspace.MaxKeyBytes+1), "v", false, 400, []string{strings.Repeat("k", keyspace.MaxKeyBytes+1)}},
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
		{"delete key too long", "DELETE", "/keys/" + strings.Repeat("k", keyspace.MaxKeyBytes+1), "", false, 400, nil},
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

// TestHTTPStatusAndHealth proves GET /status reports raft state, indexes and snapshot index, and GET /health answers 200 "ok".
func TestHTTPStatusAndHealth(t *testing.T) {
	const snapshotCount = 4
	_, h := httpTestCluster(t, func(cfg *config.Config) { cfg.SnapshotCount = snapshotCount })

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
	// The hand-over goroutine snapshots just after the kvstore applies.
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
	// The bootstrap conf changes are applied before startServer returns
	// (see TestHTTPMembersAtFirstStart); wait for them all the same, so
	// that the membership requests below meet the member table, not an
	// empty one.
	eventually(t, 5*time.Second, "the bootstrap members to apply", func() bool {
		return len(c.server(1).store.Table().List()) == 3
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
		if took := time.Since(start); took >= c.config(1, "").RequestTimeout {
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
	if len(got) != 3 || slices.ContainsFunc(got, func(m membership.View) bool { return m.IsLeader }) {
		t.Fatalf("GET /members without a leader: %+v, want members 1-3, none leading", got)
	}
	for _, m := range got[1:] {
		// Members that never ran have advertised no client URL: [], not null.
		if m.ClientURLs == nil || len(m.ClientURLs) != 0 || !slices.Equal(m.PeerURLs, []string{c.peerURLs[m.ID-1]}) {
			t.Errorf("GET /members: member %d is %+v, want its --cluster peer URL and clientURLs []", m.ID, m)
		}
	}
}

// TestClusterReadLevels proves default reads redirect from followers to the leader's client URL, unknown levels are refused and stale reads converge.
func TestClusterReadLevels(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	f := c.follower()
	const key, value = "levels/a", "hello"
	clusterPut(t, c, f, key, value)

	r := clusterGet(t, c, f, key, levelDefault)
	if r.code != http.StatusTemporaryRedirect {
		t.Fatalf("default read on follower %d: %d %q, want 307", f, r.code, r.body)
	}
	if want := c.clientURL(leader) + "/keys/" + key + "?level=default"; r.header.Get("Location") != want {
		t.Fatalf("default read on follower %d: Location %q, want %q", f, r.header.Get("Location"), want)
	}
	// No level at all is the default level, and the query is kept as sent.
	r = do(t, http.MethodGet, c.url(f, "/keys/"+key), "")
	if want := c.clientURL(leader) + "/keys/" + key; r.code != http.StatusTemporaryRedirect || r.header.Get("Location") != want {
		t.Fatalf("level-less read on follower %d: %d Location %q, want 307 %q", f, r.code, r.header.Get("Location"), want)
	}
	// Following the redirect lands on the leader, which answers itself.
	r = do(t, http.MethodGet, r.header.Get("Location"), "")
	if r.code != http.StatusOK || r.body != value {
		t.Fatalf("following the redirect: %d %q, want 200 %q", r.code, r.body, value)
	}
	clusterMustRead(t, c, leader, key, levelDefault, value)

	for _, id := range []uint64{1, 2, 3} {
		r := clusterGet(t, c, id, key, "bogus")
		if r.code != http.StatusBadRequest {
			t.Fatalf("level=bogus on member %d: %d %q, want 400", id, r.code, r.body)
		}
		clusterOneLineBody(t, "level=bogus", r)
	}

	for _, id := range []uint64{1, 2, 3} {
		eventually(t, 5*time.Second, fmt.Sprintf("stale read on member %d to show the write", id), func() bool {
			r := clusterGet(t, c, id, key, levelStale)
			return r.code == http.StatusOK && r.body == value
		})
	}
	// A stale read of a key nobody wrote is a plain 404 on any member.
	for _, id := range []uint64{1, 2, 3} {
		if r := clusterGet(t, c, id, "levels/never", levelStale); r.code != http.StatusNotFound {
			t.Fatalf("stale read of a missing key on member %d: %d %q, want 404", id, r.code, r.body)
		}
	}
}

// TestClusterDelete proves DELETE answers 204 for a present key, after which consistent reads everywhere 404, and 404 when the key is gone.
func TestClusterDelete(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	f := c.follower()
	const key = "del/k"
	clusterPut(t, c, c.waitLeader(), key, "doomed")

	r := do(t, http.MethodDelete, c.url(f, "/keys/"+key), "")
	if r.code != http.StatusNoContent {
		t.Fatalf("DELETE on follower %d: %d %q, want 204", f, r.code, r.body)
	}
	if index, err := strconv.ParseUint(r.header.Get("X-Raft-Index"), 10, 64); err != nil || index == 0 {
		t.Fatalf("DELETE: X-Raft-Index %q is not a positive integer", r.header.Get("X-Raft-Index"))
	}
	for _, id := range []uint64{1, 2, 3} {
		if r := clusterGet(t, c, id, key, levelConsistent); r.code != http.StatusNotFound {
			t.Fatalf("consistent read after DELETE on member %d: %d %q, want 404", id, r.code, r.body)
		}
	}
	for _, id := range []uint64{f, c.waitLeader()} {
		r := do(t, http.MethodDelete, c.url(id, "/keys/"+key), "")
		if r.code != http.StatusNotFound {
			t.Fatalf("second DELETE on member %d: %d %q, want 404", id, r.code, r.body)
		}
		clusterOneLineBody(t, "second DELETE", r)
	}
}

// TestGetVersion proves GET /version answers JSON with raftkv's version,
// the raft and etcd server modules' and Go's, as this binary was built.
func TestGetVersion(t *testing.T) {
	_, h := httpTestCluster(t, nil)
	rec := httpTestServe(h, "GET", "/version", "", false)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /version: %d %s %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
	var v version.Info
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("GET /version: %v", err)
	}
	if v.Version == "" || v.Go != runtime.Version() {
		t.Errorf("GET /version: version %q, go %q; want one, and %s", v.Version, v.Go, runtime.Version())
	}
	for _, path := range version.ReportedModules {
		if !strings.HasPrefix(v.Modules[path], "v3.") {
			t.Errorf("GET /version: module %s at %q, want its v3 version", path, v.Modules[path])
		}
	}
	if rec := httpTestServe(h, "GET", "/version?verbose=1", "", false); rec.Code != http.StatusBadRequest {
		t.Errorf("GET /version?verbose=1: %d, want 400", rec.Code)
	}
}

// Listings: GET /keys/{prefix}/.

// listingGet lists target on member 1 and decodes the answer.
func listingGet(t *testing.T, c *testCluster, target string) (listing.Page, response) {
	t.Helper()
	r := do(t, "GET", c.url(1, target), "")
	if r.code != 200 {
		t.Fatalf("GET %s: %d %q", target, r.code, r.body)
	}
	var v listing.Page
	if err := json.Unmarshal([]byte(r.body), &v); err != nil {
		t.Fatalf("GET %s: %v in %q", target, err, r.body)
	}
	if got := r.header.Get("X-Raft-Index"); got != strconv.FormatUint(v.Index, 10) {
		t.Errorf("GET %s: X-Raft-Index %q, body index %d", target, got, v.Index)
	}
	return v, r
}

// listingKeys is the keys a listing shows, decoded.
func listingKeys(t *testing.T, v listing.Page) []string {
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
		{method: "GET", target: "/keys/a", header: map[string]string{"Idempotency-Key": "k"}, code: 400, reason: "Idempotency-Key: only PUT and DELETE /keys/{key}, POST /members and POST /leases take one"},
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

// Versions, conditional writes and idempotency keys, through member 1's
// handler on a one-member cluster, and across a three-member cluster.

// versionsReq sends one request with headers to h.
func versionsReq(h http.Handler, method, target, body string, header ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// versionsWant checks an answer's status and version headers: etag and
// createIndex, or "" and 0 for none.
func versionsWant(t *testing.T, what string, rec *httptest.ResponseRecorder, code int, etag string, createIndex uint64) {
	t.Helper()
	if rec.Code != code {
		t.Fatalf("%s: %d %q, want %d", what, rec.Code, rec.Body.String(), code)
	}
	if got := rec.Header().Get("ETag"); got != etag {
		t.Errorf("%s: ETag %q, want %q", what, got, etag)
	}
	want := ""
	if createIndex != 0 {
		want = strconv.FormatUint(createIndex, 10)
	}
	if got := rec.Header().Get("X-Create-Index"); got != want {
		t.Errorf("%s: X-Create-Index %q, want %q", what, got, want)
	}
}

// versionsIndex is an answer's X-Raft-Index.
func versionsIndex(t *testing.T, what string, rec *httptest.ResponseRecorder) uint64 {
	t.Helper()
	return httpTestRaftIndex(t, what, rec)
}

// TestHTTPVersions proves every key carries createIndex and modIndex, the
// log indexes of the writes that created and last changed it: PUT answers
// 201 creating and 204 replacing, each with ETag "<index>"; GET at every
// level and HEAD answer the same ETag and X-Create-Index, and X-Raft-Index
// the applied index; a deleted and re-created key starts over.
func TestHTTPVersions(t *testing.T) {
	_, h := httpTestCluster(t, nil)
	etag := keyspace.ETag
	rec := versionsReq(h, "PUT", "/keys/k", "v1")
	created := versionsIndex(t, "create", rec)
	versionsWant(t, "create", rec, 201, etag(created), created)

	rec = versionsReq(h, "PUT", "/keys/k", "v2")
	modified := versionsIndex(t, "replace", rec)
	versionsWant(t, "replace", rec, 204, etag(modified), created)
	if modified <= created {
		t.Fatalf("replacing write at %d, not after the creating one at %d", modified, created)
	}
	for _, target := range []string{"/keys/k", "/keys/k?level=stale", "/keys/k?level=consistent"} {
		for _, method := range []string{"GET", "HEAD"} {
			rec := versionsReq(h, method, target, "")
			versionsWant(t, method+" "+target, rec, 200, etag(modified), created)
			if index := versionsIndex(t, target, rec); index < modified {
				t.Errorf("%s %s: X-Raft-Index %d, before the write at %d", method, target, index, modified)
			}
		}
	}
	rec = versionsReq(h, "DELETE", "/keys/k", "")
	deleted := versionsIndex(t, "delete", rec)
	versionsWant(t, "delete", rec, 204, "", 0)
	rec = versionsReq(h, "GET", "/keys/k", "")
	versionsWant(t, "GET deleted", rec, 404, "", 0)
	if index := versionsIndex(t, "GET deleted", rec); index < deleted {
		t.Errorf("GET of a deleted key: X-Raft-Index %d, before the delete at %d", index, deleted)
	}
	rec = versionsReq(h, "PUT", "/keys/k", "v3")
	again := versionsIndex(t, "re-create", rec)
	versionsWant(t, "re-create", rec, 201, etag(again), again)
}

// TestHTTPConditionalWrites proves If-Match and If-None-Match decide a PUT or
// DELETE by the key's version when it applies: a matching tag, *, a list,
// create-only with If-None-Match: *, and 412 with the current ETag and
// nothing applied otherwise; weak tags never match If-Match; a failed
// conditional DELETE is 412, not 404; GET answers 304 and 412.
func TestHTTPConditionalWrites(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	etag := keyspace.ETag
	rec := versionsReq(h, "PUT", "/keys/k", "v1", "If-None-Match", "*")
	v1 := versionsIndex(t, "create-only", rec)
	versionsWant(t, "create-only on an absent key", rec, 201, etag(v1), v1)

	rec = versionsReq(h, "PUT", "/keys/k", "lost", "If-None-Match", "*")
	versionsWant(t, "create-only on an existing key", rec, 412, etag(v1), v1)
	rec = versionsReq(h, "PUT", "/keys/k", "lost", "If-Match", etag(v1+100))
	versionsWant(t, "If-Match with another version", rec, 412, etag(v1), v1)
	rec = versionsReq(h, "PUT", "/keys/k", "lost", "If-Match", "W/"+etag(v1))
	versionsWant(t, "If-Match with a weak tag", rec, 412, etag(v1), v1)
	rec = versionsReq(h, "PUT", "/keys/k", "lost", "If-None-Match", "W/"+etag(v1))
	versionsWant(t, "If-None-Match with the weak current tag", rec, 412, etag(v1), v1)

	rec = versionsReq(h, "PUT", "/keys/k", "v2", "If-Match", etag(v1))
	v2 := versionsIndex(t, "CAS", rec)
	versionsWant(t, "If-Match with the current version", rec, 204, etag(v2), v1)
	rec = versionsReq(h, "PUT", "/keys/k", "lost", "If-Match", etag(v1))
	versionsWant(t, "If-Match with the version just replaced", rec, 412, etag(v2), v1)
	rec = versionsReq(h, "PUT", "/keys/k", "v3", "If-Match", etag(v1)+", "+etag(v2))
	v3 := versionsIndex(t, "CAS list", rec)
	versionsWant(t, "If-Match with a list holding the current version", rec, 204, etag(v3), v1)
	rec = versionsReq(h, "PUT", "/keys/k", "v4", "If-Match", "*")
	v4 := versionsIndex(t, "If-Match *", rec)
	versionsWant(t, "If-Match: * on an existing key", rec, 204, etag(v4), v1)
	rec = versionsReq(h, "PUT", "/keys/k", "v5", "If-None-Match", etag(v1))
	v5 := versionsIndex(t, "If-None-Match old", rec)
	versionsWant(t, "If-None-Match with an old version", rec, 204, etag(v5), v1)

	if got, _ := testValue(c.server(1).store, "k"); string(got) != "v5" {
		t.Fatalf("key k holds %q, want v5: a failed condition applied", got)
	}

	rec = versionsReq(h, "GET", "/keys/k", "", "If-None-Match", etag(v5))
	versionsWant(t, "GET If-None-Match current", rec, 304, etag(v5), v1)
	if rec.Body.Len() != 0 {
		t.Errorf("304 with a body %q", rec.Body.String())
	}
	rec = versionsReq(h, "GET", "/keys/k?level=stale", "", "If-None-Match", etag(v4))
	versionsWant(t, "GET If-None-Match old", rec, 200, etag(v5), v1)
	rec = versionsReq(h, "GET", "/keys/k", "", "If-Match", etag(v4))
	versionsWant(t, "GET If-Match old", rec, 412, etag(v5), v1)

	rec = versionsReq(h, "DELETE", "/keys/k", "", "If-Match", etag(v4))
	versionsWant(t, "conditional DELETE, old version", rec, 412, etag(v5), v1)
	rec = versionsReq(h, "DELETE", "/keys/k", "", "If-Match", etag(v5))
	versionsWant(t, "conditional DELETE, current version", rec, 204, "", 0)
	rec = versionsReq(h, "DELETE", "/keys/k", "", "If-Match", "*")
	versionsWant(t, "conditional DELETE of an absent key", rec, 412, "", 0)
	rec = versionsReq(h, "PUT", "/keys/k", "lost", "If-Match", "*")
	versionsWant(t, "If-Match: * on an absent key", rec, 412, "", 0)
	if _, ok := testValue(c.server(1).store, "k"); ok {
		t.Fatal("key k exists after only failed conditional writes since its delete")
	}
}

// TestHTTPConditionalRace proves that of many clients racing to update a key
// with the same If-Match, exactly one wins, on any member: the condition is
// evaluated when each entry applies, in log order, even when the racing
// writes reach raft in one batch.
func TestHTTPConditionalRace(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	r := do(t, "PUT", c.url(1, "/keys/race"), "0")
	if r.code != 201 {
		t.Fatalf("PUT: %d %q", r.code, r.body)
	}
	tag := r.header.Get("ETag")
	const clients = 30
	codes := make([]int, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			req, _ := http.NewRequest("PUT", c.url(uint64(i%3+1), "/keys/race"), strings.NewReader(strconv.Itoa(i)))
			req.Header.Set("If-Match", tag)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes[i] = resp.StatusCode
		})
	}
	wg.Wait()
	won := 0
	for i, code := range codes {
		switch code {
		case 204:
			won++
		case 412:
		default:
			t.Errorf("client %d: %d, want 204 or 412", i, code)
		}
	}
	if won != 1 {
		t.Errorf("%d clients won the race with the same If-Match, want exactly 1", won)
	}
}

// TestHTTPIdempotencyKey proves a write carrying an Idempotency-Key applies
// once: a retry gets the first attempt's answer (status, ETag, X-Raft-Index)
// with Idempotent-Replayed: true and changes nothing, even after another
// write; a key reused for a different request, a POST /members too, is
// 422; DELETE and conditional writes replay their 404 and 412 too.
func TestHTTPIdempotencyKey(t *testing.T) {
	c, h := httpTestCluster(t, nil)
	etag := keyspace.ETag
	first := versionsReq(h, "PUT", "/keys/k", "v1", "Idempotency-Key", "put-1")
	index := versionsIndex(t, "first attempt", first)
	versionsWant(t, "first attempt", first, 201, etag(index), index)
	if first.Header().Get("Idempotent-Replayed") != "" {
		t.Error("first attempt answered as a replay")
	}
	later := versionsIndex(t, "another write", versionsReq(h, "PUT", "/keys/k", "v2"))

	retry := versionsReq(h, "PUT", "/keys/k", "v1", "Idempotency-Key", "put-1")
	versionsWant(t, "retry", retry, 201, etag(index), index)
	if got := versionsIndex(t, "retry", retry); got != index {
		t.Errorf("retry: X-Raft-Index %d, want the first attempt's %d", got, index)
	}
	if retry.Header().Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry: Idempotent-Replayed %q, want true", retry.Header().Get("Idempotent-Replayed"))
	}
	if got, _ := testValue(c.server(1).store, "k"); string(got) != "v2" {
		t.Errorf("key k holds %q after the retry, want v2: the retry applied again", got)
	}
	rec := versionsReq(h, "GET", "/keys/k", "")
	versionsWant(t, "GET after retry", rec, 200, etag(later), index)

	for _, tc := range []struct {
		what           string
		method, body   string
		header         []string
		wantFirst, got int
	}{
		{what: "other value", method: "PUT", body: "other", header: []string{"Idempotency-Key", "put-1"}, got: 422},
		{what: "other method", method: "DELETE", header: []string{"Idempotency-Key", "put-1"}, got: 422},
		{what: "other condition", method: "PUT", body: "v1", header: []string{"Idempotency-Key", "put-1", "If-Match", "*"}, got: 422},
	} {
		rec := versionsReq(h, tc.method, "/keys/k", tc.body, tc.header...)
		if rec.Code != tc.got || !strings.Contains(rec.Body.String(), "Idempotency-Key was already used for a different request") {
			t.Errorf("%s: %d %q, want %d naming the reuse", tc.what, rec.Code, rec.Body.String(), tc.got)
		}
	}
	// POST /members looks for the key's record before it checks the member.
	add := fmt.Sprintf(`{"id":1,"peerURL":%q}`, c.server(1).cfg.PeerURL())
	if rec := versionsReq(h, "POST", "/members", add, "Idempotency-Key", "put-1"); rec.Code != 422 {
		t.Errorf("POST /members with a PUT's Idempotency-Key: %d %q, want 422", rec.Code, rec.Body.String())
	}
	if got, _ := testValue(c.server(1).store, "k"); string(got) != "v2" {
		t.Errorf("key k holds %q after refused reuses, want v2", got)
	}

	// Outcomes other than success replay too.
	for _, tc := range []struct {
		what   string
		method string
		body   string
		header []string
		code   int
	}{
		{"DELETE of an absent key", "DELETE", "", []string{"Idempotency-Key", "del-absent"}, 404},
		{"failed If-Match", "PUT", "x", []string{"Idempotency-Key", "cas-fail", "If-Match", `"1"`}, 412},
		{"DELETE", "DELETE", "", []string{"Idempotency-Key", "del-k"}, 204},
	} {
		target := "/keys/k"
		if tc.code == 404 {
			target = "/keys/absent"
		}
		first := versionsReq(h, tc.method, target, tc.body, tc.header...)
		if first.Code != tc.code {
			t.Fatalf("%s: %d %q, want %d", tc.what, first.Code, first.Body.String(), tc.code)
		}
		versionsReq(h, "PUT", "/keys/k", "between") // the state changes between the attempts
		retry := versionsReq(h, tc.method, target, tc.body, tc.header...)
		if retry.Code != tc.code || retry.Header().Get("Idempotent-Replayed") != "true" ||
			retry.Header().Get("X-Raft-Index") != first.Header().Get("X-Raft-Index") || retry.Header().Get("ETag") != first.Header().Get("ETag") {
			t.Errorf("%s retried: %d, replayed %q, X-Raft-Index %q, ETag %q; want %d, true, %q, %q", tc.what,
				retry.Code, retry.Header().Get("Idempotent-Replayed"), retry.Header().Get("X-Raft-Index"), retry.Header().Get("ETag"),
				tc.code, first.Header().Get("X-Raft-Index"), first.Header().Get("ETag"))
		}
	}
	if got, _ := testValue(c.server(1).store, "k"); string(got) != "between" {
		t.Errorf("key k holds %q, want \"between\": a replayed DELETE applied", got)
	}

	// The same condition written another way is the same request.
	tag := versionsReq(h, "GET", "/keys/k", "").Header().Get("ETag")
	first = versionsReq(h, "PUT", "/keys/k", "cas", "Idempotency-Key", "spelling", "If-Match", `"1", `+tag)
	if first.Code != 204 {
		t.Fatalf("PUT If-Match \"1\", %s: %d %q", tag, first.Code, first.Body.String())
	}
	retry = versionsReq(h, "PUT", "/keys/k", "cas", "Idempotency-Key", "spelling", "If-Match", `"1"`, "If-Match", "  "+tag+" ")
	if retry.Code != 204 || retry.Header().Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry with the If-Match list on two lines: %d %q, replayed %q; want the first answer replayed",
			retry.Code, retry.Body.String(), retry.Header().Get("Idempotent-Replayed"))
	}
}

// Watches: GET /watch/..., served by package watch from the history the
// kvstore appends to.

// sseEvent is one Server-Sent Event as a client reads it.
type sseEvent struct {
	id, kind, data string
}

// watchStream is an open watch, read event by event.
type watchStream struct {
	t      *testing.T
	resp   *http.Response
	events chan sseEvent
	cancel context.CancelFunc
}

// openWatch starts GET target on a client URL, with header lines, and
// fails unless it answers 200 with an event stream.
func openWatch(t *testing.T, rawURL string, header ...string) *watchStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", rawURL, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("GET %s: %d %s", rawURL, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	w := &watchStream{t: t, resp: resp, events: make(chan sseEvent, 1000), cancel: cancel}
	t.Cleanup(w.close)
	go w.read()
	return w
}

// read parses the stream into events until it ends.
func (w *watchStream) read() {
	defer close(w.events)
	sc := bufio.NewScanner(w.resp.Body)
	var e sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if e.kind != "" || e.data != "" {
				w.events <- e
			}
			e = sseEvent{}
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			e.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			e.kind = line[7:]
		case strings.HasPrefix(line, "data: "):
			e.data = line[6:]
		}
	}
}

// next returns the next event, failing after timeout; ok false when the
// stream ended.
func (w *watchStream) next(timeout time.Duration) (sseEvent, bool) {
	w.t.Helper()
	select {
	case e, ok := <-w.events:
		return e, ok
	case <-time.After(timeout):
		w.t.Fatalf("no event within %s", timeout)
		return sseEvent{}, false
	}
}

func (w *watchStream) close() {
	w.cancel()
	w.resp.Body.Close()
}

// want reads the next event and checks it: kind, key, value ("" for a
// delete) and id.
func (w *watchStream) want(kind, key, value string, id uint64) {
	w.t.Helper()
	e, ok := w.next(10 * time.Second)
	if !ok {
		w.t.Fatalf("stream ended; want %s %s", kind, key)
	}
	var d keyspace.View
	if err := json.Unmarshal([]byte(e.data), &d); err != nil {
		w.t.Fatalf("event %+v: %v", e, err)
	}
	got := ""
	if d.Value != nil {
		got = *d.Value
	}
	if e.kind != kind || d.Key != key || got != value || e.id != strconv.FormatUint(id, 10) || d.ModIndex != id {
		w.t.Fatalf("event %s %s (data %s), want %s %s=%q at %d", e.kind, e.id, e.data, kind, key, value, id)
	}
}

// TestWatch proves a watch streams, in log order and each once, the puts
// and deletes under its prefix (or of its key, or of everything), with the
// raft index as id; resumes after ?from or Last-Event-ID without a gap or a
// repeat; ends after ?limit events; and ends when the member stops.
func TestWatch(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	base := clusterPut(t, c, 1, "app/before", "0")
	prefix := openWatch(t, c.url(1, "/watch/app/"))
	key := openWatch(t, c.url(1, "/watch/app/a"))
	all := openWatch(t, c.url(1, "/watch/"))

	i1 := clusterPut(t, c, 1, "app/a", "1")
	i2 := clusterPut(t, c, 1, "other/x", "2")
	i3 := clusterPut(t, c, 1, "app/b", "3")
	r := do(t, "DELETE", c.url(1, "/keys/app/a"), "")
	i4, _ := strconv.ParseUint(r.header.Get("X-Raft-Index"), 10, 64)
	i5 := clusterPut(t, c, 1, "apple", "not under app/")

	prefix.want("put", "app/a", "1", i1)
	prefix.want("put", "app/b", "3", i3)
	prefix.want("delete", "app/a", "", i4)
	key.want("put", "app/a", "1", i1)
	key.want("delete", "app/a", "", i4)
	all.want("put", "app/a", "1", i1)
	all.want("put", "other/x", "2", i2)
	all.want("put", "app/b", "3", i3)
	all.want("delete", "app/a", "", i4)
	all.want("put", "apple", "not under app/", i5)

	// Resume after i1, by ?from and by Last-Event-ID: nothing repeated,
	// nothing skipped; and ?limit ends the stream.
	for _, w := range []*watchStream{
		openWatch(t, c.url(1, "/watch/app/?from="+strconv.FormatUint(i1, 10)+"&limit=2")),
		openWatch(t, c.url(1, "/watch/app/?limit=2"), "Last-Event-ID", strconv.FormatUint(i1, 10)),
	} {
		w.want("put", "app/b", "3", i3)
		w.want("delete", "app/a", "", i4)
		if e, ok := w.next(5 * time.Second); ok {
			t.Errorf("event after the limit: %+v", e)
		}
	}
	// From the start of the history: every change since the member began.
	w := openWatch(t, c.url(1, "/watch/app/?from=0&limit=1"))
	w.want("put", "app/before", "0", base)

	for target, code := range map[string]int{
		"/watch/app/?from=x":      400,
		"/watch/app/?limit=0":     400,
		"/watch/app/?level=stale": 400,
		"/watch/app//":            400,
	} {
		if r := do(t, "GET", c.url(1, target), ""); r.code != code {
			t.Errorf("GET %s: %d %q, want %d", target, r.code, r.body, code)
		}
	}

	// A stopping member ends its streams.
	if err := c.stop(1); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*watchStream{prefix, key, all} {
		if e, ok := w.next(10 * time.Second); ok {
			t.Errorf("event after the member stopped: %+v", e)
		}
	}
}

// watchEventOverhead is what an event costs a member's watch history
// beyond its key and value (package watch's eventOverhead), so that a test
// can size --watch-history-bytes in events.
const watchEventOverhead = 96

// TestWatchHistoryBounds proves a watch that starts before the history kept
// here is refused with 410 naming the oldest index it can start after, and
// that a watcher the history leaves behind gets an error event with the
// index to resume after, then the end of the stream.
func TestWatchHistoryBounds(t *testing.T) {
	const historyBytes = 10 * (watchEventOverhead + 4) // ten events of a 3-byte key and a 1-byte value
	c := newTestCluster(t, 1, func(cfg *config.Config) { cfg.WatchHistoryBytes = historyBytes })
	first := clusterPut(t, c, 1, "k/0", "v")
	for i := 1; i < 30; i++ {
		clusterPut(t, c, 1, "k/"+strconv.Itoa(i), "v")
	}
	r := do(t, "GET", c.url(1, "/watch/k/?from="+strconv.FormatUint(first, 10)), "")
	if r.code != http.StatusGone || !strings.Contains(r.body, "the oldest index a watch can start after on this member is") {
		t.Fatalf("watch from before the history: %d %q, want 410 naming the oldest index", r.code, r.body)
	}

	// A change bigger than the whole history leaves it, and every watcher
	// that had not read it, behind the moment it is applied: the history
	// drops it before any stream can read it.
	pos := c.server(1).store.AppliedIndex()
	w := openWatch(t, c.url(1, "/watch/k/?from="+strconv.FormatUint(pos, 10)))
	clusterPut(t, c, 1, "k/big", strings.Repeat("v", historyBytes))
	e, ok := w.next(10 * time.Second)
	if !ok || e.kind != "error" {
		t.Fatalf("a watcher left behind: event %+v (stream open %t), want an error event", e, ok)
	}
	var got struct {
		Error       string `json:"error"`
		ResumeAfter uint64 `json:"resumeAfter"`
	}
	if err := json.Unmarshal([]byte(e.data), &got); err != nil || !strings.Contains(got.Error, "fell behind") || got.ResumeAfter != pos {
		t.Fatalf("a watcher left behind: error event %q (%v), want it told it fell behind, to resume after %d", e.data, err, pos)
	}
	if e, ok := w.next(10 * time.Second); ok {
		t.Errorf("event after the error event: %+v, want the end of the stream", e)
	}
}

// TestWatchQuietPrefixResumes proves a watcher of a prefix that changes
// seldom can resume on a member that has restarted since, though changes
// to other keys moved the member's history past its last event: the
// keep-alive gives the stream's position as an id without data (which
// EventSource takes as the last event ID without dispatching an event), and
// the resume from there is accepted, not a 410. Found by TestLinearizable's
// watchers; it failed on the first watch server.
func TestWatchQuietPrefixResumes(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *config.Config) { cfg.SnapshotCount = 10; cfg.WatchKeepAlive = 200 * time.Millisecond })
	quiet := clusterPut(t, c, 1, "config/a", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", c.url(1, "/watch/config/?from="+strconv.FormatUint(quiet-1, 10)), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: %v %v", resp, err)
	}
	defer resp.Body.Close()
	for i := range 50 {
		clusterPut(t, c, 1, "busy/"+strconv.Itoa(i), "v") // a snapshot at least every 10 entries
	}
	// The last position the stream told its client, by the end of the
	// context: the last id line, with an event or without one.
	var last uint64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
			last, _ = strconv.ParseUint(id, 10, 64)
		}
	}
	if last < quiet {
		t.Fatalf("the stream gave no id from %d on", quiet)
	}
	if err := c.stop(1); err != nil {
		t.Fatal(err)
	}
	c.start(1)
	c.waitLeader()
	// It resumes (no 410), and the next change under config/ comes.
	w := openWatch(t, c.url(1, "/watch/config/?limit=1&from="+strconv.FormatUint(last, 10)))
	next := clusterPut(t, c, 1, "config/b", "2")
	w.want("put", "config/b", "2", next)
}

// Metrics: GET /metrics.

// scrape is one GET /metrics, parsed.
type scrape map[string]*dto.MetricFamily

// scrapeMetrics gets url's /metrics and parses it as Prometheus's text
// format, failing the test unless it is that.
func scrapeMetrics(t *testing.T, url string) scrape {
	t.Helper()
	resp, err := noRedirect.Get(url + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	return parseScrape(t, resp.Header.Get("Content-Type"), resp.Body)
}

// parseScrape parses an answer to GET /metrics, failing the test unless it
// is Prometheus's text format.
func parseScrape(t *testing.T, contentType string, body io.Reader) scrape {
	t.Helper()
	if !strings.HasPrefix(contentType, "text/plain; version=0.0.4") {
		t.Fatalf("GET /metrics: Content-Type %q, want Prometheus's text format", contentType)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(body)
	if err != nil {
		t.Fatalf("GET /metrics: not the text format: %v", err)
	}
	return families
}

// value is the value of the series name{labels} (label pairs, in any
// order): a counter's or gauge's, or a histogram's count; found false if
// there is no such series.
func (s scrape) value(name string, labels ...string) (v float64, found bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			ok := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					ok = true
				}
			}
			if !ok {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// get is value for a series that must exist (0 for a labelled one not
// seen yet, which a vector only makes when first used).
func (s scrape) get(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	if s[name] == nil && len(labels) == 0 {
		t.Fatalf("/metrics has no %s", name)
	}
	v, _ := s.value(name, labels...)
	return v
}

// s is the family name, which must be there.
func (s scrape) s(name string) *dto.Metric {
	if f := s[name]; f != nil && len(f.GetMetric()) > 0 {
		return f.GetMetric()[0]
	}
	return &dto.Metric{}
}

// putCreated labels a PUT /keys/{key} answered 201.
var putCreated = []string{"route", "PUT /keys/{key...}", "method", "PUT", "code", "201"}

// metricsTestStatus is member id's GET /status.
func metricsTestStatus(t *testing.T, c *testCluster, id uint64) status.View {
	t.Helper()
	return httpTestGetStatus(t, c.server(id).http.Handler)
}

// TestMetrics proves GET /metrics answers Prometheus's text format with
// etcd's series (the default registry's) and each member's own, and that
// the members' own move with what happens on that member only: a PUT
// counts under its route pattern and code, and as a committed proposal; a
// consistent read runs a ReadIndex round; a watch stream is open while it
// is and counts the events it sends; the raft gauges show the applied
// index /status shows, and who leads; a member that loses its leader
// drops what it is asked to propose.
func TestMetrics(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	follower := c.follower()
	// rafthttp's, by peer: there once the streams to the peers are up.
	eventually(t, 10*time.Second, "/metrics to show rafthttp's active peers", func() bool {
		return scrapeMetrics(t, c.clientURL(follower))["etcd_network_active_peers"] != nil
	})
	before := scrapeMetrics(t, c.clientURL(follower)) // the scrapes before count in it
	for _, name := range []string{
		// raftkv's own, one member's.
		"raftkv_http_requests_total", "raftkv_http_request_duration_seconds",
		"raftkv_proposals_pending", "raftkv_proposals_committed_total", "raftkv_proposals_dropped_total",
		"raftkv_proposals_timed_out_total", "raftkv_proposals_canceled_total", "raftkv_idempotency_replays_total",
		"raftkv_raft_term", "raftkv_raft_has_leader", "raftkv_raft_is_leader", "raftkv_raft_leader_changes_total",
		"raftkv_raft_commit_index", "raftkv_raft_applied_index", "raftkv_raft_snapshot_index",
		"raftkv_read_index_rounds_total", "raftkv_read_index_failures_total",
		"raftkv_read_index_round_duration_seconds", "raftkv_read_index_reads_per_round",
		"raftkv_watch_streams", "raftkv_watch_events_sent_total",
		"raftkv_snapshot_save_duration_seconds", "raftkv_snapshot_load_duration_seconds", "raftkv_snapshot_size_bytes",
		// etcd's, on the default registry: the WAL's.
		"etcd_disk_wal_fsync_duration_seconds",
		// Go's and the process's, on the default registry too.
		"go_goroutines", "process_start_time_seconds",
	} {
		if before[name] == nil {
			t.Errorf("/metrics has no %s", name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// A PUT to the follower counts there, not on the leader.
	leaderBefore := scrapeMetrics(t, c.clientURL(leader))
	if r := do(t, "PUT", c.url(follower, "/keys/metrics-a"), "1"); r.code != http.StatusCreated {
		t.Fatalf("PUT: %d %s", r.code, r.body)
	}
	after := scrapeMetrics(t, c.clientURL(follower))
	if got, want := after.get(t, "raftkv_http_requests_total", putCreated...), before.get(t, "raftkv_http_requests_total", putCreated...)+1; got != want {
		t.Errorf("requests PUT 201 on the follower: %v after a PUT, want %v", got, want)
	}
	if got, want := after.get(t, "raftkv_http_request_duration_seconds", "route", "PUT /keys/{key...}", "method", "PUT"), before.get(t, "raftkv_http_request_duration_seconds", "route", "PUT /keys/{key...}", "method", "PUT")+1; got != want {
		t.Errorf("request durations of PUT on the follower: %v observed, want %v", got, want)
	}
	if got, want := after.get(t, "raftkv_proposals_committed_total"), before.get(t, "raftkv_proposals_committed_total")+1; got != want {
		t.Errorf("proposals committed on the follower: %v after a PUT, want %v", got, want)
	}
	if got := after.get(t, "raftkv_proposals_pending"); got != 0 {
		t.Errorf("proposals pending once the PUT is answered: %v, want 0", got)
	}
	// A retry with the same Idempotency-Key is answered from the record.
	for range 2 {
		req, _ := http.NewRequest("PUT", c.url(follower, "/keys/metrics-i"), strings.NewReader("1"))
		req.Header.Set("Idempotency-Key", "metrics-retry")
		resp, err := noRedirect.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT with an Idempotency-Key: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	replayed := scrapeMetrics(t, c.clientURL(follower))
	if got, want := replayed.get(t, "raftkv_idempotency_replays_total"), after.get(t, "raftkv_idempotency_replays_total")+1; got != want {
		t.Errorf("idempotency replays: %v after a retry, want %v", got, want)
	}
	leaderAfter := scrapeMetrics(t, c.clientURL(leader))
	if got, want := leaderAfter.get(t, "raftkv_http_requests_total", putCreated...), leaderBefore.get(t, "raftkv_http_requests_total", putCreated...); got != want {
		t.Errorf("requests PUT 201 on the leader: %v after a PUT to a follower, want %v (its own registry)", got, want)
	}

	// The routes are patterns; what no route takes is "/".
	do(t, "GET", c.url(follower, "/no-such-path"), "")
	do(t, "GET", c.url(follower, "/keys/a/../b"), "")
	routed := scrapeMetrics(t, c.clientURL(follower))
	if got := routed.get(t, "raftkv_http_requests_total", "route", "/", "method", "GET", "code", "404"); got != 1 {
		t.Errorf(`requests to an unknown path: %v under route "/" code 404, want 1`, got)
	}
	if got := routed.get(t, "raftkv_http_requests_total", "route", "/", "method", "GET", "code", "400"); got != 1 {
		t.Errorf(`requests refused before routing: %v under route "/" code 400, want 1`, got)
	}
	if got := routed.get(t, "raftkv_http_requests_total", "route", "GET /metrics", "method", "GET", "code", "200"); got < 3 {
		t.Errorf("scrapes of the follower: %v counted under GET /metrics, want at least 3", got)
	}

	// A consistent read is one ReadIndex round, with one read in it.
	if r := do(t, "GET", c.url(follower, "/keys/metrics-a?level=consistent"), ""); r.code != http.StatusOK {
		t.Fatalf("consistent GET: %d %s", r.code, r.body)
	}
	read := scrapeMetrics(t, c.clientURL(follower))
	if got, want := read.get(t, "raftkv_read_index_rounds_total"), routed.get(t, "raftkv_read_index_rounds_total")+1; got != want {
		t.Errorf("ReadIndex rounds: %v after a consistent read, want %v", got, want)
	}
	if got, want := read.get(t, "raftkv_read_index_reads_per_round"), routed.get(t, "raftkv_read_index_reads_per_round")+1; got != want {
		t.Errorf("rounds observed in reads per round: %v, want %v", got, want)
	}
	if got := read.s("raftkv_read_index_reads_per_round").GetHistogram().GetSampleSum() - routed.s("raftkv_read_index_reads_per_round").GetHistogram().GetSampleSum(); got != 1 {
		t.Errorf("reads in the round: %v, want 1", got)
	}

	// A watch is open while it streams, and counts what it sends.
	w := openWatch(t, c.url(follower, "/watch/metrics-w"))
	watching := scrapeMetrics(t, c.clientURL(follower))
	if got := watching.get(t, "raftkv_watch_streams"); got != 1 {
		t.Errorf("watch streams open: %v with one open, want 1", got)
	}
	index := clusterPut(t, c, follower, "metrics-w", "v")
	w.want("put", "metrics-w", "v", index)
	// Counted once written, which the client may see first.
	var sent float64
	wantSent := watching.get(t, "raftkv_watch_events_sent_total") + 1
	eventually(t, 5*time.Second, "the watch event to count as sent", func() bool {
		sent = scrapeMetrics(t, c.clientURL(follower)).get(t, "raftkv_watch_events_sent_total")
		return sent >= wantSent
	})
	if sent != wantSent {
		t.Errorf("watch events sent: %v after one, want %v", sent, wantSent)
	}
	w.close()
	eventually(t, 5*time.Second, "the watch stream to count as closed", func() bool {
		v, _ := scrapeMetrics(t, c.clientURL(follower)).value("raftkv_watch_streams")
		return v == 0
	})

	// The raft gauges: the applied index is /status's, when nothing moves
	// it between the two; one member leads.
	var st status.View
	eventually(t, 5*time.Second, "the applied index to match /status appliedIndex", func() bool {
		st = metricsTestStatus(t, c, follower)
		s := scrapeMetrics(t, c.clientURL(follower))
		return s.get(t, "raftkv_raft_applied_index") == float64(st.AppliedIndex) && metricsTestStatus(t, c, follower) == st
	})
	s := scrapeMetrics(t, c.clientURL(follower))
	if got := s.get(t, "raftkv_raft_term"); got != float64(st.Term) || got < 1 {
		t.Errorf("raft term: %v, /status says %d", got, st.Term)
	}
	if got := s.get(t, "raftkv_raft_commit_index"); got < float64(st.AppliedIndex) {
		t.Errorf("commit index %v is behind the applied index %d", got, st.AppliedIndex)
	}
	if s.get(t, "raftkv_raft_is_leader") != 0 || s.get(t, "raftkv_raft_has_leader") != 1 || s.get(t, "raftkv_raft_leader_changes_total") < 1 {
		t.Errorf("follower: is_leader %v, has_leader %v, leader changes %v; want 0, 1, at least 1",
			s.get(t, "raftkv_raft_is_leader"), s.get(t, "raftkv_raft_has_leader"), s.get(t, "raftkv_raft_leader_changes_total"))
	}
	if got := scrapeMetrics(t, c.clientURL(leader)).get(t, "raftkv_raft_is_leader"); got != 1 {
		t.Errorf("leader: is_leader %v, want 1", got)
	}

	// Alone, the follower loses its leader and drops what it is asked.
	for _, id := range c.runningIDs() {
		if id != follower {
			c.stop(id)
		}
	}
	eventually(t, 10*time.Second, "the lone member to know no leader", func() bool {
		return scrapeMetrics(t, c.clientURL(follower)).get(t, "raftkv_raft_has_leader") == 0
	})
	alone := scrapeMetrics(t, c.clientURL(follower))
	if r := do(t, "PUT", c.url(follower, "/keys/metrics-b"), "1"); r.code != http.StatusServiceUnavailable {
		t.Fatalf("PUT without a leader: %d %s, want 503", r.code, r.body)
	}
	dropped := scrapeMetrics(t, c.clientURL(follower))
	if got, want := dropped.get(t, "raftkv_proposals_dropped_total"), alone.get(t, "raftkv_proposals_dropped_total")+1; got != want {
		t.Errorf("proposals dropped: %v after a PUT without a leader, want %v", got, want)
	}
	if got := dropped.get(t, "raftkv_http_requests_total", "route", "PUT /keys/{key...}", "method", "PUT", "code", "503"); got != 1 {
		t.Errorf("requests PUT 503: %v, want 1", got)
	}
}

// Leases: /leases, served by package lease, and the Lease header of PUT
// and GET /keys/{key}.

// leaseDo sends one request with header lines, not following redirects.
func leaseDo(t *testing.T, method, url, body string, header ...string) response {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, body: string(b), header: resp.Header}
}

// leaseView is a lease as /leases shows it.
type leaseView struct {
	ID        uint64   `json:"id"`
	TTL       int64    `json:"ttl"`
	Remaining *int64   `json:"remaining"`
	Keys      []string `json:"keys"`
}

// leaseGrant grants a lease of ttl seconds on member id and returns it.
func leaseGrant(t *testing.T, c *testCluster, id uint64, ttl int) uint64 {
	t.Helper()
	r := leaseDo(t, "POST", c.url(id, "/leases"), fmt.Sprintf(`{"ttl": %d}`, ttl))
	var v leaseView
	if r.code != http.StatusCreated || json.Unmarshal([]byte(r.body), &v) != nil || v.ID == 0 || v.TTL != int64(ttl) ||
		r.header.Get("Location") != fmt.Sprintf("/leases/%d", v.ID) {
		t.Fatalf("POST /leases ttl %d on member %d: %d %q Location %q", ttl, id, r.code, r.body, r.header.Get("Location"))
	}
	return v.ID
}

// TestLeases follows leases through the API as the README's recipes use
// them: granted on any member (once per Idempotency-Key), keys attached
// with the Lease header and shown with it, renewed on the leader (a
// follower redirects), read, revoked with their keys in one entry that
// watchers see as deletes naming the lease and why; and every bad request
// refused with a 4xx that changes nothing.
func TestLeases(t *testing.T) {
	c := newTestCluster(t, 3, nil) // testTick: the shortest TTL is 1 s
	leader := c.waitLeader()
	follower := c.follower()
	for _, tc := range []struct{ body, want string }{
		{`{"ttl": 0}`, "ttl 0: must be 1 to"},
		{`{"ttl": -5}`, "ttl -5: must be 1 to"},
		{`{"ttl": 2000000000}`, "ttl 2000000000: must be 1 to 1000000000 seconds"},
		{`{"ttl": "5"}`, `field "ttl": want a whole number, not a string`},
		{`{}`, `give {"ttl": N}`},
		{`{"ttl": 5, "keys": []}`, `unknown field "keys"`},
		{`[5]`, "want a JSON object, not an array"},
	} {
		if r := leaseDo(t, "POST", c.url(follower, "/leases"), tc.body); r.code != http.StatusBadRequest || !strings.Contains(r.body, tc.want) {
			t.Errorf("POST /leases %s: %d %q, want 400 naming %q", tc.body, r.code, r.body, tc.want)
		}
	}
	id := leaseGrant(t, c, follower, 30)

	// Once per Idempotency-Key, whichever member is asked.
	first := leaseDo(t, "POST", c.url(follower, "/leases"), `{"ttl": 7}`, "Idempotency-Key", "grant-1")
	again := leaseDo(t, "POST", c.url(leader, "/leases"), `{"ttl": 7}`, "Idempotency-Key", "grant-1")
	if first.code != 201 || again.code != 201 || first.body != again.body || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("a grant retried with its Idempotency-Key: %d %q, then %d %q (replayed %q); want the same lease twice",
			first.code, first.body, again.code, again.body, again.header.Get("Idempotent-Replayed"))
	}
	if r := leaseDo(t, "POST", c.url(leader, "/leases"), `{"ttl": 8}`, "Idempotency-Key", "grant-1"); r.code != http.StatusUnprocessableEntity {
		t.Errorf("the key reused for another TTL: %d %q, want 422", r.code, r.body)
	}

	// Keys attached, and shown with their lease.
	lease := strconv.FormatUint(id, 10)
	if r := leaseDo(t, "PUT", c.url(follower, "/keys/svc/a"), "10.0.0.1:80", "Lease", lease); r.code != http.StatusCreated {
		t.Fatalf("PUT with Lease %s: %d %q", lease, r.code, r.body)
	}
	if r := leaseDo(t, "GET", c.url(leader, "/keys/svc/a"), ""); r.code != 200 || r.header.Get("Lease") != lease {
		t.Errorf("GET of a leased key: %d, Lease %q, want %s", r.code, r.header.Get("Lease"), lease)
	}
	if v, _ := listingGet(t, c, "/keys/svc/?level=consistent"); len(v.Entries) != 1 || v.Entries[0].Lease != id {
		t.Errorf("listing of a leased key: %+v, want lease %d", v.Entries, id)
	}
	if r := leaseDo(t, "PUT", c.url(follower, "/keys/svc/a"), "again", "Lease", lease, "If-None-Match", "*"); r.code != http.StatusPreconditionFailed {
		t.Errorf("PUT with Lease and If-None-Match: * of a key that exists: %d %q, want 412", r.code, r.body)
	}
	if r := leaseDo(t, "PUT", c.url(follower, "/keys/svc/b"), "x", "Lease", "999999"); r.code != http.StatusNotFound || !strings.Contains(r.body, "lease 999999") {
		t.Errorf("PUT with an unknown lease: %d %q, want 404 naming it", r.code, r.body)
	}
	if r := leaseDo(t, "GET", c.url(leader, "/keys/svc/b?level=consistent"), ""); r.code != http.StatusNotFound {
		t.Errorf("the key of a PUT refused for its lease: %d %q, want 404", r.code, r.body)
	}
	for _, tc := range []struct{ method, path, lease string }{
		{"PUT", "/keys/svc/c", "x"}, {"PUT", "/keys/svc/c", "0"}, {"GET", "/keys/svc/a", lease},
		{"DELETE", "/keys/svc/a", lease}, {"POST", "/members", lease},
	} {
		if r := leaseDo(t, tc.method, c.url(leader, tc.path), "", "Lease", tc.lease); r.code != http.StatusBadRequest || !strings.Contains(r.body, "Lease") {
			t.Errorf("%s %s with Lease %q: %d %q, want 400 naming the header", tc.method, tc.path, tc.lease, r.code, r.body)
		}
	}
	if r := leaseDo(t, "GET", c.url(leader, "/keys/svc/a"), ""); r.header.Get("Lease") != lease {
		t.Fatalf("a refused request changed svc/a's lease: %q", r.header.Get("Lease"))
	}

	// Renewed and read on the leader; a follower redirects.
	if r := leaseDo(t, "POST", c.url(follower, "/leases/"+lease+"/keepalive"), ""); r.code != http.StatusTemporaryRedirect ||
		r.header.Get("Location") != c.url(leader, "/leases/"+lease+"/keepalive") {
		t.Errorf("keepalive on a follower: %d, Location %q; want 307 to the leader", r.code, r.header.Get("Location"))
	}
	if r := leaseDo(t, "POST", c.url(leader, "/leases/"+lease+"/keepalive"), ""); r.code != 200 || r.body != fmt.Sprintf(`{"id":%d,"ttl":30}`+"\n", id) {
		t.Errorf("keepalive on the leader: %d %q", r.code, r.body)
	}
	var v leaseView
	if r := leaseDo(t, "GET", c.url(leader, "/leases/"+lease), ""); r.code != 200 || json.Unmarshal([]byte(r.body), &v) != nil ||
		v.Remaining == nil || *v.Remaining < 29 || *v.Remaining > 31 || !slices.Equal(v.Keys, []string{"svc/a"}) {
		t.Errorf("GET /leases/%s: %d %q, want 30 s remaining and the key", lease, r.code, r.body)
	}
	var all []leaseView
	if r := leaseDo(t, "GET", c.url(leader, "/leases"), ""); r.code != 200 || json.Unmarshal([]byte(r.body), &all) != nil || len(all) != 2 || all[0].ID != id {
		t.Errorf("GET /leases: %d %q, want both leases, %s first", r.code, r.body, lease)
	}
	if r := leaseDo(t, "GET", c.url(follower, "/leases"), ""); r.code != http.StatusTemporaryRedirect {
		t.Errorf("GET /leases on a follower: %d, want 307", r.code)
	}

	// Revoked: its keys deleted in one entry, seen by watchers.
	put := leaseDo(t, "PUT", c.url(leader, "/keys/svc/c"), "x", "Lease", lease)
	if put.code != http.StatusCreated {
		t.Fatalf("PUT svc/c: %d %q", put.code, put.body)
	}
	w := openWatch(t, c.url(follower, "/watch/svc/?from="+put.header.Get("X-Raft-Index")))
	r := leaseDo(t, "DELETE", c.url(follower, "/leases/"+lease), "")
	if r.code != http.StatusNoContent {
		t.Fatalf("DELETE /leases/%s: %d %q", lease, r.code, r.body)
	}
	var ids []string
	for _, key := range []string{"svc/a", "svc/c"} {
		e, ok := w.next(5 * time.Second)
		want := fmt.Sprintf(`"key":"%s"`, key)
		if !ok || e.kind != "delete" || !strings.Contains(e.data, want) || !strings.Contains(e.data, `"lease":`+lease) || !strings.Contains(e.data, `"reason":"revoked"`) {
			t.Fatalf("event %+v, want the delete of %s naming lease %s, revoked", e, key, lease)
		}
		ids = append(ids, e.id)
	}
	if ids[1] != r.header.Get("X-Raft-Index") {
		t.Errorf("the keys' deletes end at index %q, want the revoke's, %s (one entry)", ids[1], r.header.Get("X-Raft-Index"))
	}
	for _, key := range []string{"svc/a", "svc/c"} {
		if r := leaseDo(t, "GET", c.url(leader, "/keys/"+key+"?level=consistent"), ""); r.code != http.StatusNotFound {
			t.Errorf("GET %s after its lease was revoked: %d", key, r.code)
		}
	}
	for _, tc := range []struct{ method, path string }{{"DELETE", "/leases/" + lease}, {"POST", "/leases/" + lease + "/keepalive"}, {"GET", "/leases/" + lease}} {
		if r := leaseDo(t, tc.method, c.url(leader, tc.path), ""); r.code != http.StatusNotFound || !strings.Contains(r.body, "lease "+lease) {
			t.Errorf("%s %s once revoked: %d %q, want 404 naming it", tc.method, tc.path, r.code, r.body)
		}
	}
	if r := leaseDo(t, "GET", c.url(leader, "/leases/x"), ""); r.code != http.StatusBadRequest {
		t.Errorf("GET /leases/x: %d, want 400", r.code)
	}
}

// TestLeaseExpires proves a lease renewed every third of its TTL lives on,
// and that once its holder stops, the leader ends it no sooner than its
// TTL after the last keepalive answered, and within a second more, its
// keys deleted as watchers see, naming it expired.
func TestLeaseExpires(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	id := leaseGrant(t, c, leader, 1)
	lease := strconv.FormatUint(id, 10)
	put := leaseDo(t, "PUT", c.url(leader, "/keys/lock"), "me", "Lease", lease)
	if put.code != http.StatusCreated {
		t.Fatalf("PUT lock: %d %q", put.code, put.body)
	}
	w := openWatch(t, c.url(c.follower(), "/watch/lock?from="+put.header.Get("X-Raft-Index")))
	var last time.Time
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(300 * time.Millisecond) {
		if r := leaseDo(t, "POST", c.url(leader, "/leases/"+lease+"/keepalive"), ""); r.code != 200 {
			t.Fatalf("keepalive: %d %q", r.code, r.body)
		}
		last = time.Now()
	}
	e, ok := w.next(5 * time.Second)
	gone := time.Now()
	if !ok || e.kind != "delete" || !strings.Contains(e.data, `"reason":"expired"`) || !strings.Contains(e.data, `"lease":`+lease) {
		t.Fatalf("event %+v, want the lock's delete, expired", e)
	}
	if since := gone.Sub(last); since < time.Second || since > 2*time.Second {
		t.Errorf("the lease ended %v after its last keepalive; its TTL is 1s", since)
	}
	if r := leaseDo(t, "POST", c.url(leader, "/leases/"+lease+"/keepalive"), ""); r.code != http.StatusNotFound {
		t.Errorf("keepalive of an expired lease: %d, want 404", r.code)
	}
}
