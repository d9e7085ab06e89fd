package main

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

// TestPeerAPIMembers proves GET /raftkv/members on the peer port answers
// the member table, with the members the answering one is connected to,
// and that the route is read-only.
func TestPeerAPIMembers(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitLeader()
	var got peerMembers
	eventually(t, 10*time.Second, "member 1 to be connected to members 2 and 3", func() bool {
		r := do(t, "GET", c.peerURLs[0]+peerMembersPath, "")
		if r.code != http.StatusOK || json.Unmarshal([]byte(r.body), &got) != nil {
			t.Fatalf("GET %s: %d %q", peerMembersPath, r.code, r.body)
		}
		return len(got.Members) == 3 && got.Members[1].Connected && got.Members[2].Connected
	})
	if got.From != 1 || got.Members[0].Connected {
		t.Errorf("answer %+v: want from 1, not connected to itself", got)
	}
	for i, m := range got.Members {
		if m.ID != uint64(i+1) || len(m.PeerURLs) != 1 || m.PeerURLs[0] != c.peerURLs[i] {
			t.Errorf("member %d in the answer: %+v", i+1, m)
		}
	}
	if r := do(t, "POST", c.peerURLs[0]+peerMembersPath, "{}"); r.code != http.StatusMethodNotAllowed {
		t.Errorf("POST %s: %d %q, want 405", peerMembersPath, r.code, r.body)
	}
}
