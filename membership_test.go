package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
)

// Membership through the client API: reading one member, the checks that
// keep a change from costing the cluster its quorum, and removing the
// leader without an election.

// TestHTTPGetMember proves GET /members/{id} serves the Location a 201 to POST /members names, as GET /members lists it, with 400 for a bad id and 404 for a stranger.
func TestHTTPGetMember(t *testing.T) {
	_, h := httpTestCluster(t, nil)
	for _, tc := range []struct {
		target string
		code   int
	}{
		{"/members/abc", http.StatusBadRequest},
		{"/members/0", http.StatusBadRequest},
		{"/members/-1", http.StatusBadRequest},
		{"/members/18446744073709551616", http.StatusBadRequest},
		{"/members/2", http.StatusNotFound},
	} {
		rec := httpTestServe(h, http.MethodGet, tc.target, "", false)
		if rec.Code != tc.code {
			t.Errorf("GET %s: %d %q, want %d", tc.target, rec.Code, rec.Body.String(), tc.code)
		}
		httpTestOneLine(t, "GET "+tc.target, rec.Body.String())
	}

	// A lone member may add a second (see mayAddMember); it never runs.
	body := fmt.Sprintf(`{"id":2,"peerURL":"http://%s","clientURL":"http://%s"}`, freeAddr(t), freeAddr(t))
	rec := httpTestServe(h, http.MethodPost, "/members", body, false)
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST /members: %d %q, want 201", rec.Code, rec.Body.String())
	}
	list := httpTestGetMembers(t, h)
	if len(list) != 2 {
		t.Fatalf("GET /members after adding member 2: %+v", list)
	}
	for _, target := range []string{"/members/1", rec.Header().Get("Location")} {
		got := httpTestGetJSON(t, h, target)
		var m memberView
		dec := json.NewDecoder(got.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("GET %s: %v in %q", target, err, got.Body.String())
		}
		want, _ := clusterFindMember(list, m.ID)
		if fmt.Sprint(m) != fmt.Sprint(want) || target != fmt.Sprintf("/members/%d", m.ID) {
			t.Errorf("GET %s: %+v, want %+v as GET /members lists it", target, m, want)
		}
	}
}
