package main

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHealthReady proves that on a fresh cluster of real processes a member says ok only once it can serve every request: as soon as each member's GET /health answers 200, a default read following redirects succeeds on each, with no 503 for a client URL not yet advertised; before that, /health answers 503 with Retry-After and a one-line reason.
func TestHealthReady(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	c := newE2ECluster(t, e2eBuild(t))
	c.startThree()
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

// healthTestLeaders is a leaderWatch the test moves by hand.
type healthTestLeaders struct {
	mu      sync.Mutex
	leader  uint64
	changed chan struct{}
}

func (l *healthTestLeaders) leaderID() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leader
}

func (l *healthTestLeaders) leaderChange() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// set makes id the leader and wakes whoever waits for a change.
func (l *healthTestLeaders) set(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leader = id
	close(l.changed)
	l.changed = make(chan struct{})
}

// TestAdvertiseClientURL proves advertiseClientURL proposes nothing while no leader is known, proposes the moment one is, rather than at its next retry, and proposes nothing when the member table already has the URL.
func TestAdvertiseClientURL(t *testing.T) {
	h := newKVTest(t)
	h.apply(kvAddEntry(t, 1, member{ID: 1, PeerURLs: []string{"http://p1"}}))
	leaders := &healthTestLeaders{changed: make(chan struct{})}
	advertise := func() <-chan struct{} {
		done := make(chan struct{})
		go func() {
			// An hour's timeout: a retry on a timer would come far too late.
			h.s.advertiseClientURL(leaders, 1, "http://c1", time.Hour)
			close(done)
		}()
		return done
	}

	done := advertise()
	select {
	case p := <-h.proposeC:
		t.Fatalf("proposed %q with no leader known", p.data)
	case <-time.After(50 * time.Millisecond):
	}
	leaders.set(2)
	h.apply(h.nextProposal(2))
	kvWait(t, done, "advertiseClientURL to return once its entry applied")
	if !h.s.hasClientURL(1, "http://c1") {
		t.Fatalf("member table %+v does not give member 1 its client URL", h.s.memberList())
	}

	// A restart finds the URL in the table and proposes nothing.
	kvWait(t, advertise(), "advertiseClientURL to return at once")
	select {
	case p := <-h.proposeC:
		t.Fatalf("proposed %q though the table had the URL", p.data)
	default:
	}
}
