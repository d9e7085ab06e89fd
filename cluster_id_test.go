package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// TestClusterIDDerivation proves the cluster ID depends on the initial members and the token only: not on the order, form or spelling of --cluster.
func TestClusterIDDerivation(t *testing.T) {
	id := func(cluster, token string) uint64 {
		t.Helper()
		c, err := parseCluster(cluster)
		if err != nil {
			t.Fatalf("parseCluster(%q): %v", cluster, err)
		}
		return deriveClusterID(c, token)
	}
	want := id("http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379", "raftkv-cluster")
	for _, same := range []string{
		"1=http://127.0.0.1:12379,2=http://127.0.0.1:22379,3=http://127.0.0.1:32379",
		"3=http://127.0.0.1:32379,1=http://127.0.0.1:12379,2=http://127.0.0.1:22379",
		"2=HTTP://127.0.0.1:022379/,3=http://127.0.0.1:32379,1=http://127.0.0.1:12379",
	} {
		if got := id(same, "raftkv-cluster"); got != want {
			t.Errorf("cluster ID of %q = %x, want %x as for the same members listed by position", same, got, want)
		}
	}
	for _, tc := range []struct{ name, cluster, token string }{
		{"another token", "1=http://127.0.0.1:12379,2=http://127.0.0.1:22379,3=http://127.0.0.1:32379", "raftkv-cluster-2"},
		{"the token's case", "1=http://127.0.0.1:12379,2=http://127.0.0.1:22379,3=http://127.0.0.1:32379", "Raftkv-cluster"},
		{"a member fewer", "1=http://127.0.0.1:12379,2=http://127.0.0.1:22379", "raftkv-cluster"},
		{"a member more", "1=http://127.0.0.1:12379,2=http://127.0.0.1:22379,3=http://127.0.0.1:32379,4=http://127.0.0.1:42379", "raftkv-cluster"},
		{"another peer URL", "1=http://127.0.0.1:12379,2=http://127.0.0.1:22379,3=http://127.0.0.1:42379", "raftkv-cluster"},
		{"ids swapped", "2=http://127.0.0.1:12379,1=http://127.0.0.1:22379,3=http://127.0.0.1:32379", "raftkv-cluster"},
		{"another id", "1=http://127.0.0.1:12379,2=http://127.0.0.1:22379,4=http://127.0.0.1:32379", "raftkv-cluster"},
		{"URL and token shifted", "1=http://127.0.0.1:12379,2=http://127.0.0.1:22379,3=http://127.0.0.1:3237", "9raftkv-cluster"},
	} {
		if got := id(tc.cluster, tc.token); got == want || got == legacyClusterID {
			t.Errorf("%s: cluster ID %x, want one of its own", tc.name, got)
		}
	}
}

// TestWALMetadata proves the WAL metadata round-trips, that a WAL from before cluster IDs (the member id alone) reads as the legacy cluster, and that anything else is refused.
func TestWALMetadata(t *testing.T) {
	for _, m := range []walMetadata{{1, 0x1000}, {maxMemberID, 1<<64 - 1}, {3, 0}} {
		got, err := decodeWALMetadata(m.encode())
		if err != nil || got != m {
			t.Errorf("decode(encode(%+v)) = %+v, %v", m, got, err)
		}
	}
	for _, id := range []uint64{1, 8, 300, maxMemberID} {
		got, err := decodeWALMetadata(binary.AppendUvarint(nil, id))
		if want := (walMetadata{id, legacyClusterID}); err != nil || got != want {
			t.Errorf("decode(uvarint(%d)) = %+v, %v; want %+v", id, got, err, want)
		}
	}
	for _, b := range [][]byte{nil, {0x80}, {0x01, 0x80}, append(walMetadata{1, 2}.encode(), 0)} {
		if got, err := decodeWALMetadata(b); !errors.Is(err, ErrBadWALMetadata) {
			t.Errorf("decode(%x) = %+v, %v; want ErrBadWALMetadata", b, got, err)
		}
	}
}

// clusterIDOf asks the member at clientURL for its cluster ID, in GET /status and in the header, and fails unless both say the same.
func clusterIDOf(t *testing.T, clientURL string) string {
	t.Helper()
	r := do(t, "GET", clientURL+"/status", "")
	var st statusView
	if err := json.Unmarshal([]byte(r.body), &st); r.code != http.StatusOK || err != nil {
		t.Fatalf("GET /status: %d %q %v", r.code, r.body, err)
	}
	if h := r.header.Get(clusterIDHeader); h != st.ClusterID {
		t.Fatalf("GET /status: %s %q, body says cluster %q", clusterIDHeader, h, st.ClusterID)
	}
	return st.ClusterID
}

// TestClusterIDRecordedInWAL proves a member keeps the cluster ID it first started with, whatever its config says when it restarts.
func TestClusterIDRecordedInWAL(t *testing.T) {
	cfg := flagTestConfig(t, filepath.Join(t.TempDir(), "raftkv-1"))
	s, err := flagTestStart(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := types.ID(cfg.clusterID).String()
	if got := clusterIDOf(t, cfg.clientURL); got != want {
		t.Fatalf("first start: cluster ID %s, want %s as derived", got, want)
	}
	s.stop()

	cfg.clusterID = deriveClusterID(cfg.cluster, "another-token")
	if _, err := flagTestStart(t, cfg); err != nil {
		t.Fatal(err)
	}
	if got := clusterIDOf(t, cfg.clientURL); got != want {
		t.Errorf("restart told cluster ID %x: serves %s, want %s from the WAL", cfg.clusterID, got, want)
	}
}

// TestClusterIDLegacyDataDir proves a data dir written before cluster IDs, whose WAL metadata is the member id alone, still starts, in cluster 0x1000, as it was.
func TestClusterIDLegacyDataDir(t *testing.T) {
	cfg := flagTestConfig(t, filepath.Join(t.TempDir(), "raftkv-1"))
	// What such a member wrote on its first start: the metadata, then the
	// conf change that StartNode commits for it as the only member.
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	w, err := wal.Create(zap.NewNop(), walDir(cfg.dataDir), binary.AppendUvarint(nil, cfg.id))
	if err != nil {
		t.Fatal(err)
	}
	add := kvAddEntry(t, 1, member{ID: cfg.id, PeerURLs: []string{cfg.peerURL()}})
	if err := w.Save(&raftpb.HardState{Term: new(uint64(1)), Commit: new(uint64(1))}, []*raftpb.Entry{add}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := flagTestStart(t, cfg)
	if err != nil {
		t.Fatalf("start on a data dir from before cluster IDs: %v", err)
	}
	if got, want := clusterIDOf(t, cfg.clientURL), fmt.Sprintf("%x", legacyClusterID); got != want {
		t.Errorf("cluster ID %s, want %s", got, want)
	}
	eventually(t, 10*time.Second, "the member to elect itself", func() bool { return s.raft.leaderID() == cfg.id })
}
