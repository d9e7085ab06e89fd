package membership

import (
	"testing"

	"raftkv/datadir"
)

// TestClusterIDDerivation proves the cluster ID depends on the initial members and the token only: not on the order, form or spelling of --cluster.
func TestClusterIDDerivation(t *testing.T) {
	id := func(cluster, token string) uint64 {
		t.Helper()
		c, err := ParseCluster(cluster)
		if err != nil {
			t.Fatalf("ParseCluster(%q): %v", cluster, err)
		}
		return DeriveClusterID(c, token)
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
		if got := id(tc.cluster, tc.token); got == want || got == datadir.LegacyClusterID {
			t.Errorf("%s: cluster ID %x, want one of its own", tc.name, got)
		}
	}
}
