package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHealthReady proves that on a fresh cluster of real processes a member says ok only once it can serve every request: as soon as each member's GET /health answers 200, a default read following redirects succeeds on each, with no 503 for a client URL not yet published; before that, /health answers 503 with Retry-After and a one-line reason.
func TestHealthReady(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	c := newE2ECluster(t, e2eBuild(t))
	for range 3 {
		c.allocate()
	}
	for id := uint64(1); id <= 3; id++ {
		c.start(id, fmt.Sprintf("raftkv%d", id), c.args(id, 3)...)
	}
	for id := uint64(1); id <= 3; id++ {
		c.eventually(20*time.Second, fmt.Sprintf("member %d to answer GET /health with 200", id), func() bool {
			r, err := e2eTry(e2eClient, "GET", c.url(id, "/health"), "")
			if err != nil || r.code == http.StatusOK {
				return err == nil
			}
			line, ok := strings.CutSuffix(r.body, "\n")
			if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || !ok || line == "" || strings.Contains(line, "\n") {
				t.Fatalf("GET /health on member %d: %d %q (Retry-After %q), want 200, or 503 with Retry-After and a one-line reason",
					id, r.code, r.body, r.header.Get("Retry-After"))
			}
			return false
		})
	}
	for id := uint64(1); id <= 3; id++ {
		r, err := e2eTry(e2eFollowClient, "GET", c.url(id, "/keys/never-written"), "")
		if err != nil || r.code != http.StatusNotFound {
			t.Errorf("default read on member %d right after every /health said ok: %d %q %v, want 404 from the leader", id, r.code, r.body, err)
		}
	}
}
