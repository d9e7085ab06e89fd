package bootstrap

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"raftkv/membership"
)

// nopRaft is a raft node that takes every message and ignores it.
type nopRaft struct{}

func (nopRaft) Process(context.Context, *raftpb.Message) error { return nil }
func (nopRaft) IsIDRemoved(uint64) bool                        { return false }
func (nopRaft) ReportUnreachable(uint64)                       {}
func (nopRaft) ReportSnapshot(uint64, raft.SnapshotStatus)     {}

// peerTestTransport is a started rafthttp transport for member 1 of
// cluster 0x1000, stopped when the test ends.
func peerTestTransport(t *testing.T) *rafthttp.Transport {
	t.Helper()
	tr := &rafthttp.Transport{
		Logger:      zap.NewNop(),
		ID:          types.ID(1),
		ClusterID:   types.ID(0x1000),
		Raft:        nopRaft{},
		ServerStats: stats.NewServerStats("", ""),
		LeaderStats: stats.NewLeaderStats(zap.NewNop(), types.ID(1).String()),
		ErrorC:      make(chan error, 1),
	}
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Stop)
	return tr
}

// peerServe sends one request to h, failing the test rather than the
// binary if h panics.
func peerServe(t *testing.T, h http.Handler, method, path string, header map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(""))
	for name, v := range header {
		r.Header.Set(name, v)
	}
	rec := httptest.NewRecorder()
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("%s %s with %v: panic: %v", method, path, header, p)
			}
		}()
		h.ServeHTTP(rec, r)
	}()
	return rec
}

// TestPeerHandlerStarting proves a member whose raft is not running yet
// answers every rafthttp request 503, with the version header rafthttp
// needs to count the answer as a failure, and GET /raftkv/members 503 until
// its member table is loaded; then it answers the table as JSON, read-only.
func TestPeerHandlerStarting(t *testing.T) {
	h := NewPeerHandler(1)
	for _, path := range []string{"/raft", "/raft/stream/message/2", "/raft/probing"} {
		rec := peerServe(t, h, "POST", path, map[string]string{"X-Server-Version": version.Version})
		if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("X-Server-Version") != version.Version || !strings.Contains(rec.Body.String(), "member 1 is starting") {
			t.Errorf("POST %s before MountRaft: %d %q, X-Server-Version %q; want 503 with the version header", path, rec.Code, rec.Body.String(), rec.Header().Get("X-Server-Version"))
		}
	}
	if rec := peerServe(t, h, "GET", MembersPath, nil); rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "not loaded yet") {
		t.Errorf("GET %s before ServeMembers: %d %q, want 503", MembersPath, rec.Code, rec.Body.String())
	}

	want := Answer{From: 1, ClusterID: "1000", Members: []PeerMember{
		{Member: membership.Member{ID: 1, PeerURLs: []string{"http://127.0.0.1:1"}}},
		{Member: membership.Member{ID: 2, PeerURLs: []string{"http://127.0.0.1:2"}}, Connected: true},
	}}
	h.ServeMembers(func() Answer { return want })
	rec := peerServe(t, h, "GET", MembersPath, nil)
	var got Answer
	if err := json.Unmarshal(rec.Body.Bytes(), &got); rec.Code != http.StatusOK || err != nil || got.From != 1 || got.ClusterID != "1000" ||
		len(got.Members) != 2 || got.Members[0].Connected || !got.Members[1].Connected || got.Members[1].PeerURLs[0] != "http://127.0.0.1:2" {
		t.Errorf("GET %s: %d %q (%v), want %+v", MembersPath, rec.Code, rec.Body.String(), err, want)
	}
	if rec := peerServe(t, h, "POST", MembersPath, nil); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST %s: %d, want 405", MembersPath, rec.Code)
	}
}

// TestPeerHandlerBadVersionHeader proves a rafthttp request whose version
// headers are not versions is answered 400 naming the header, before and
// after rafthttp is mounted: rafthttp parses them with semver.Must, so
// handing it one would be a panic; while a request with good headers
// reaches rafthttp once it is mounted.
func TestPeerHandlerBadVersionHeader(t *testing.T) {
	h := NewPeerHandler(1)
	bad := func(when string) {
		t.Helper()
		for _, header := range []string{"X-Server-Version", "X-Min-Cluster-Version"} {
			for _, req := range []struct{ method, path string }{{"POST", "/raft"}, {"GET", "/raft/stream/msgappv2/2"}, {"POST", "/raft/snapshot"}} {
				rec := peerServe(t, h, req.method, req.path, map[string]string{header: "bogus", "X-Etcd-Cluster-ID": "1000", "X-Server-From": "2", "X-Raft-To": "1"})
				if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), header) {
					t.Errorf("%s: %s %s with %s: bogus: %d %q, want 400 naming the header", when, req.method, req.path, header, rec.Code, rec.Body.String())
				}
			}
		}
	}
	bad("before MountRaft")
	h.MountRaft(peerTestTransport(t).Handler())
	bad("after MountRaft")

	// A request with good headers reaches rafthttp, which sets its cluster
	// ID header and turns away another cluster's request.
	rec := peerServe(t, h, "POST", "/raft", map[string]string{"X-Server-Version": version.Version, "X-Min-Cluster-Version": version.MinClusterVersion, "X-Etcd-Cluster-ID": "2000"})
	if rec.Code != http.StatusPreconditionFailed || rec.Header().Get("X-Etcd-Cluster-ID") != "1000" {
		t.Errorf("POST /raft from cluster 2000 after MountRaft: %d %q, X-Etcd-Cluster-ID %q; want rafthttp's 412", rec.Code, rec.Body.String(), rec.Header().Get("X-Etcd-Cluster-ID"))
	}
}
