package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

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
	add := fmt.Sprintf(`{"id":1,"peerURL":%q}`, c.server(1).raft.cfg.peerURL())
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

// TestIdempotencyWindow proves the record keeps only the newest window keys,
// evicting the oldest in apply order with the window the entry carries, so a
// retry of an evicted key applies again.
func TestIdempotencyWindow(t *testing.T) {
	h := newKVTest(t)
	ctx := context.Background()
	put := func(idemKey, value string, window uint64) outcome {
		t.Helper()
		done := make(chan outcome, 1)
		go func() {
			o, _ := h.s.put(ctx, "k", []byte(value), precondition{}, idempotent{key: idemKey, fingerprint: fingerprint([]byte(value)), window: window})
			done <- o
		}()
		h.apply(h.nextProposal(h.s.appliedIndex.Load() + 1))
		return <-done
	}
	for i := range 3 {
		if o := put(fmt.Sprint("key-", i), "v", 2); o.replayed {
			t.Fatalf("write %d replayed", i)
		}
	}
	if o := put("key-2", "v", 2); !o.replayed {
		t.Error("newest key not remembered with window 2")
	}
	if o := put("key-0", "v", 2); o.replayed {
		t.Error("oldest key remembered beyond window 2")
	}
	if n := len(h.s.dedup.records()); n != 2 {
		t.Errorf("%d records kept, want 2", n)
	}
}

// versionsState is a member's replicated state that versions and
// idempotency keys add: every key's version, and the records in order.
func versionsState(s *kvstore) (applied uint64, state string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var b strings.Builder
	s.kv.Scan(func(k string, v keyValue) bool {
		fmt.Fprintf(&b, "%s=%s@%d/%d ", k, v.value, v.createIndex, v.modIndex)
		return true
	})
	for _, r := range s.dedup.records() {
		fmt.Fprintf(&b, "[%s %x %d %v %d/%d %t %t] ", r.key, r.fingerprint, r.result.index, r.result.err,
			r.result.version.createIndex, r.result.version.modIndex, r.result.hasVersion, r.result.created)
	}
	return s.appliedIndex.Load(), b.String()
}

// TestVersionsSameOnEveryMember proves versions and idempotency records are
// replicated state, identical on every member at the same applied index:
// through snapshots every 50 entries, a member restarted after missing
// writes (it catches up by snapshot), and a member added late.
func TestVersionsSameOnEveryMember(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.snapshotCount = 50 })
	leader := c.waitLeader()
	write := func(via uint64, round int) {
		t.Helper()
		for i := range 40 {
			key := fmt.Sprintf("v/%d", i%7)
			hdr := []string{"Idempotency-Key", fmt.Sprintf("r%d-%d", round, i)}
			if i%3 == 0 {
				hdr = append(hdr, "If-None-Match", "*")
			}
			req := httptest.NewRequest("PUT", "/keys/"+key, strings.NewReader(fmt.Sprint(round, i)))
			for j := 0; j < len(hdr); j += 2 {
				req.Header.Set(hdr[j], hdr[j+1])
			}
			rec := httptest.NewRecorder()
			c.server(via).http.Handler.ServeHTTP(rec, req)
			if rec.Code != 201 && rec.Code != 204 && rec.Code != 412 {
				t.Fatalf("PUT %s via %d: %d %q", key, via, rec.Code, rec.Body.String())
			}
		}
	}
	write(leader, 0)
	down := c.follower()
	if err := c.stop(down); err != nil {
		t.Fatal(err)
	}
	write(leader, 1)
	write(leader, 2)
	c.start(down)
	added := c.addMember(leader)
	write(c.waitLeader(), 3)

	var want string
	eventually(t, 20*time.Second, "every member to reach the same applied index and state", func() bool {
		index, first := versionsState(c.server(1).store)
		for _, id := range c.runningIDs() {
			if i, st := versionsState(c.server(id).store); i != index || st != first {
				return false
			}
		}
		want = first
		return true
	})
	if !strings.Contains(want, "[r3-39 ") {
		t.Fatalf("state without the last round's records: %.200s", want)
	}
	if st := clusterStatus(t, c, down); st.SnapshotIndex == 0 {
		t.Errorf("restarted member %d took no snapshot", down)
	}
	t.Logf("members %v agree; added member %d", c.runningIDs(), added)
}
