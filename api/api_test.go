package api_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"raftkv/api"
	"raftkv/idempotency"
	"raftkv/logging"
)

// TestQueryCheckAllocs proves checking and reading the queries clients send to GET /keys/{key} allocates nothing.
// (The spine's readLevel reads level with QueryValue.)
func TestQueryCheckAllocs(t *testing.T) {
	params := []string{"level"}
	for _, q := range []string{"", "level=stale", "level=default", "level=consistent"} {
		allocs := testing.AllocsPerRun(100, func() {
			if err := api.CheckQuery(q, params); err != nil {
				t.Fatalf("CheckQuery(%q): %v", q, err)
			}
			if v, ok := api.QueryValue(q, "level"); ok != (q != "") || (ok && v != strings.TrimPrefix(q, "level=")) {
				t.Fatalf("QueryValue(%q, level) = %q, %v", q, v, ok)
			}
		})
		if allocs != 0 {
			t.Errorf("query %q: %.0f allocations, want 0", q, allocs)
		}
	}
}

// TestCheckQuery proves a query is checked strictly: every parameter one
// the route takes, each once, every name and value decodable, '&' the only
// separator; empty pairs are skipped, as url.ParseQuery skips them; and
// QueryValue then reads a parameter decoded.
func TestCheckQuery(t *testing.T) {
	params := []string{"level", "limit"}
	for _, q := range []string{"", "&", "level=stale", "&level=stale&", "le%76el=st%61le", "level=stale&limit=5", "limit", "level="} {
		if err := api.CheckQuery(q, params); err != nil {
			t.Errorf("CheckQuery(%q): %v", q, err)
		}
	}
	for _, tc := range []struct {
		q    string
		want error
		says string
	}{
		{"levle=stale", api.ErrUnknownParameter, `"levle"`},
		{"=stale", api.ErrUnknownParameter, `""`},
		{"level=stale&level=stale", api.ErrRepeatedParameter, `"level"`},
		{"level=stale&le%76el=consistent", api.ErrRepeatedParameter, `"level"`},
		{"level=consistent;", api.ErrBadQuery, "';'"},
		{"level=stale;x=1", api.ErrBadQuery, "';'"},
		{"lev%zzel=stale", api.ErrBadQuery, `invalid URL escape "%zz"`},
		{"level=st%2", api.ErrBadQuery, "invalid URL escape"},
	} {
		err := api.CheckQuery(tc.q, params)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("CheckQuery(%q) = %v, want %v saying %s", tc.q, err, tc.want, tc.says)
		}
	}
	if err := api.CheckQuery("x=1", nil); !errors.Is(err, api.ErrUnknownParameter) {
		t.Errorf("CheckQuery on a route that takes none: %v", err)
	}
	for _, tc := range []struct {
		q, name, want string
		ok            bool
	}{
		{"level=stale&limit=5", "limit", "5", true},
		{"le%76el=st%61le", "level", "stale", true},
		{"limit", "limit", "", true},
		{"level=stale", "limit", "", false},
		{"", "level", "", false},
	} {
		if got, ok := api.QueryValue(tc.q, tc.name); got != tc.want || ok != tc.ok {
			t.Errorf("QueryValue(%q, %s) = %q, %v; want %q, %v", tc.q, tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// TestUncleanPath proves the paths ServeMux would clean and redirect are
// named, and every other path, a key's trailing '/' that names a prefix
// included, is let through.
func TestUncleanPath(t *testing.T) {
	for _, p := range []string{"/", "/status", "/keys/", "/keys/a", "/keys/a/b", "/keys/a/", "/watch/", "/watch/a/", "/members/1", "/status/", "/keys/...", "/keys/a.b"} {
		if reason := api.UncleanPath(p); reason != "" {
			t.Errorf("UncleanPath(%q) = %q, want it clean", p, reason)
		}
	}
	for _, p := range []string{"/keys/a//b", "/keys/./a", "/keys/a/..", "/keys/a/./", "/keys//", "/keys/a//", "/watch/a//b", "/watch/../x", "//", "//status", "/x/../status", "/members/./1", "/members//1", "/a/."} {
		if reason := api.UncleanPath(p); reason == "" {
			t.Errorf("UncleanPath(%q) is clean, want a reason", p)
		}
	}
}

// muxTest is a Mux with a few routes, shaped like the client API's, and
// the requests that reached a handler.
type muxTest struct {
	mux     *api.Mux
	reached []string
}

// newMuxTest registers the routes.
func newMuxTest() *muxTest {
	m := &muxTest{mux: api.NewMux()}
	handler := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			m.reached = append(m.reached, name)
			fmt.Fprintf(w, "%s\n", name)
		}
	}
	m.mux.Handle("GET /keys/{key...}", api.TakesConditions, handler("get key"), "level", "limit")
	m.mux.Handle("PUT /keys/{key...}", api.TakesConditions|api.TakesIdempotencyKey, handler("put key"))
	m.mux.Handle("DELETE /keys/{key...}", api.TakesConditions|api.TakesIdempotencyKey, handler("delete key"))
	m.mux.Handle("GET /status", 0, handler("status"))
	m.mux.Handle("POST /members", api.TakesIdempotencyKey, handler("add member"))
	m.mux.Refuse("/keys", errors.New("no key in path"))
	return m
}

// serve sends one request through the Mux.
func (m *muxTest) serve(method, target string, header http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for name, lines := range header {
		r.Header[name] = lines
	}
	rec := httptest.NewRecorder()
	m.mux.ServeHTTP(rec, r)
	return rec
}

// TestMux proves the Mux's own answers: 404 for a path no route takes, 405
// with Allow naming the methods that do take it, 400 for a path ServeMux
// would clean and redirect, for the request target "*", for a query
// parameter or a header the route does not take, and for a pattern it
// refuses, each with a one-line plain-text reason, and none of them
// reaching a handler; while a request the route takes reaches it.
func TestMux(t *testing.T) {
	for _, tc := range []struct {
		method, target string
		header         http.Header
		code           int
		reason         string // the body must contain this; for a 2xx, the handler's name
		allow          string
	}{
		{"GET", "/keys/a", nil, 200, "get key", ""},
		{"GET", "/keys/a/", nil, 200, "get key", ""},
		{"HEAD", "/keys/a?level=stale", nil, 200, "", ""},
		{"GET", "/keys/a?level=stale&limit=1", http.Header{"If-None-Match": {`"3"`}, "If-Match": {"*"}}, 200, "get key", ""},
		{"PUT", "/keys/a", http.Header{"If-Match": {`"3"`}, "Idempotency-Key": {"k"}}, 200, "put key", ""},
		{"POST", "/members", http.Header{"Idempotency-Key": {"k"}}, 200, "add member", ""},
		{"GET", "/status", http.Header{"If-None-Match": {`"1"`}, "If-Modified-Since": {"Mon, 01 Jan 2024 00:00:00 GMT"}}, 200, "status", ""},

		{"GET", "/nope", nil, 404, `unknown path "/nope"`, ""},
		{"GET", "/", nil, 404, `unknown path "/"`, ""},
		{"GET", "/status/", nil, 404, `unknown path "/status/"`, ""},
		{"POST", "/keys/a", nil, 405, `POST is not allowed on "/keys/a": use GET, HEAD, PUT, DELETE`, "GET, HEAD, PUT, DELETE"},
		{"PATCH", "/status", nil, 405, "use GET, HEAD", "GET, HEAD"},
		{"OPTIONS", "/status", nil, 405, "use GET, HEAD", "GET, HEAD"},
		{"PUT", "/members", nil, 405, "use POST", "POST"},

		{"GET", "/keys/a//b", nil, 400, "key must not contain empty, '.' or '..' path segments", ""},
		{"PUT", "/keys/./a", nil, 400, "key must not", ""},
		{"PUT", "/keys/a//", nil, 400, "key must not", ""},
		{"GET", "/x/../status", nil, 400, `path "/x/../status" must not contain empty, '.' or '..' segments`, ""},
		{"GET", "//status", nil, 400, "segments", ""},

		{"GET", "/keys/a?levle=stale", nil, 400, `unknown query parameter "levle": this route takes level, limit`, ""},
		{"GET", "/keys/a?level=stale&level=stale", nil, 400, `query parameter given more than once: "level"`, ""},
		{"GET", "/keys/a?level=stale;", nil, 400, "';'", ""},
		{"PUT", "/keys/a?ttl=2", nil, 400, `unknown query parameter "ttl": this route takes none`, ""},
		{"GET", "/status?verbose=1", nil, 400, `"verbose"`, ""},

		{"GET", "/status", http.Header{"If-Match": {"*"}}, 400, "If-Match: this route evaluates no such condition", ""},
		{"POST", "/members", http.Header{"If-None-Match": {"*"}}, 400, "If-None-Match", ""},
		{"PUT", "/keys/a", http.Header{"If-Unmodified-Since": {"Mon, 01 Jan 2024 00:00:00 GMT"}}, 400, "If-Unmodified-Since", ""},
		{"GET", "/keys/a", http.Header{"Idempotency-Key": {"k"}}, 400, "Idempotency-Key", ""},
		{"GET", "/status", http.Header{"Idempotency-Key": {"k"}}, 400, "Idempotency-Key", ""},

		{"GET", "/keys", nil, 400, "no key in path", ""},
		{"PUT", "/keys?level=stale", nil, 400, "no key in path", ""},
	} {
		m := newMuxTest()
		rec := m.serve(tc.method, tc.target, tc.header)
		body := rec.Body.String()
		what := fmt.Sprintf("%s %s %v", tc.method, tc.target, tc.header)
		if rec.Code != tc.code || !strings.Contains(body, tc.reason) {
			t.Errorf("%s: %d %q, want %d saying %q", what, rec.Code, body, tc.code, tc.reason)
			continue
		}
		if got := rec.Header().Get("Allow"); got != tc.allow {
			t.Errorf("%s: Allow %q, want %q", what, got, tc.allow)
		}
		if tc.code < 300 {
			if len(m.reached) != 1 {
				t.Errorf("%s: reached %q, want its handler", what, m.reached)
			}
			continue
		}
		if len(m.reached) != 0 {
			t.Errorf("%s: answered %d, yet reached %q", what, rec.Code, m.reached)
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || strings.Count(body, "\n") != 1 || !strings.HasSuffix(body, "\n") {
			t.Errorf("%s: %q (%s), want one line of plain text", what, body, ct)
		}
	}
}

// TestMuxRequestTargets proves the request target "*", which only OPTIONS
// may use, and an absolute-form target without a path, which ServeMux
// would redirect to "/", are answered plainly, reaching no handler.
func TestMuxRequestTargets(t *testing.T) {
	for _, tc := range []struct {
		method, target string
		code           int
		reason         string
	}{
		{"OPTIONS", "*", 400, "request target * is only for OPTIONS"},
		{"GET", "*", 400, "request target *"},
		{"GET", "http://elsewhere", 404, `unknown path ""`},
	} {
		m := newMuxTest()
		r := httptest.NewRequest(tc.method, "/", nil)
		r.RequestURI = tc.target
		u, err := r.URL.Parse(tc.target)
		if err != nil {
			t.Fatal(err)
		}
		r.URL = u
		if tc.target == "*" {
			r.URL.Path = "*"
		}
		rec := httptest.NewRecorder()
		m.mux.ServeHTTP(rec, r)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.reason) || len(m.reached) != 0 {
			t.Errorf("%s %s: %d %q, reached %q; want %d saying %q", tc.method, tc.target, rec.Code, rec.Body.String(), m.reached, tc.code, tc.reason)
		}
	}
}

// observedLogger logs everything, callers included, to the returned
// observer.
func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core, zap.AddCaller()), logs
}

// answersPerSecond is how many 5xx answers a second for each status
// logging.NewAnswerLogger logs (logging's answersPerSecond).
const answersPerSecond = 5

// TestServerErrorLogged checks that 5xx answers are logged as warnings
// with their reason, at most answersPerSecond a second for each status,
// and that other answers, and requests whose client has gone, are not.
func TestServerErrorLogged(t *testing.T) {
	lg, logs := observedLogger()
	errs := api.NewErrors(logging.NewAnswerLogger(lg), time.Second)
	answer := func(err error) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		errs.Write(rec, err)
		return rec
	}
	// The answers not to log come first, so that the sampling cannot
	// hide one.
	if rec := answer(fmt.Errorf("put: %w", idempotency.ErrKeyReused)); rec.Code != http.StatusUnprocessableEntity {
		t.Fatalf("ErrKeyReused: %d, want 422", rec.Code)
	}
	if rec := answer(context.Canceled); rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("canceled: %d, want 503", rec.Code)
	}
	for range 2 * answersPerSecond {
		if rec := answer(api.ErrNoLeader); rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" {
			t.Fatalf("ErrNoLeader: %d, Retry-After %q; want 503, 1", rec.Code, rec.Header().Get("Retry-After"))
		}
	}
	if rec := answer(fmt.Errorf("wait: %w", context.DeadlineExceeded)); rec.Code != http.StatusGatewayTimeout || !strings.Contains(rec.Body.String(), "timed out after 1s") {
		t.Fatalf("deadline: %d %q, want 504 naming the request timeout", rec.Code, rec.Body.String())
	}

	unavailable := logs.FilterMessage("answered 503 Service Unavailable").All()
	if len(unavailable) != answersPerSecond {
		t.Errorf("%d lines for %d 503s within a second, want %d", len(unavailable), 2*answersPerSecond, answersPerSecond)
	}
	for _, e := range unavailable {
		if e.Level != zapcore.WarnLevel || e.ContextMap()["reason"] != api.ErrNoLeader.Error() {
			t.Errorf("got %s %v, want warn with reason %q", e.Level, e.ContextMap(), api.ErrNoLeader)
		}
	}
	if n := logs.FilterMessage("answered 504 Gateway Timeout").Len(); n != 1 {
		t.Errorf("%d lines for one 504, want 1", n)
	}
	if n := logs.Len(); n != answersPerSecond+1 {
		t.Errorf("%d lines in all, want %d: a 422 and a canceled request are not logged: %v", n, answersPerSecond+1, logs.All())
	}
	if rec := answer(errors.New("disk on fire\nreally")); rec.Code != http.StatusInternalServerError || rec.Body.String() != "disk on fire really\n" {
		t.Errorf("another error: %d %q, want 500 with its reason on one line", rec.Code, rec.Body.String())
	}
}
