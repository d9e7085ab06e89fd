package version

import (
	"bytes"
	"encoding/json"
	"runtime"
	"runtime/debug"
	"testing"
)

// TestBuildInfoFrom proves what a build reports: the module version when
// there is one, else the VCS revision (marked when the tree was
// modified), else "(devel)"; a replaced dependency's replacement; and
// "unknown" for what the build does not say.
func TestBuildInfoFrom(t *testing.T) {
	deps := []*debug.Module{
		{Path: "go.etcd.io/raft/v3", Version: "v3.7.0"},
		{Path: "go.etcd.io/etcd/server/v3", Version: "v3.7.3", Replace: &debug.Module{Path: "example.com/etcd/server/v3", Version: "v3.7.4-fix"}},
		{Path: "go.uber.org/zap", Version: "v1.28.0"},
	}
	vcs := []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "true"}}
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		want Info
	}{
		{"no build info", nil, Info{Version: "(devel)", Modules: map[string]string{"go.etcd.io/raft/v3": "unknown", "go.etcd.io/etcd/server/v3": "unknown"}}},
		{"module version", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Deps: deps, Settings: vcs},
			Info{Version: "v1.2.3", Revision: "0123abcd", Modified: true, Modules: map[string]string{"go.etcd.io/raft/v3": "v3.7.0", "go.etcd.io/etcd/server/v3": "v3.7.4-fix"}}},
		{"revision", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Deps: deps, Settings: vcs},
			Info{Version: "0123abcd-modified", Revision: "0123abcd", Modified: true, Modules: map[string]string{"go.etcd.io/raft/v3": "v3.7.0", "go.etcd.io/etcd/server/v3": "v3.7.4-fix"}}},
		{"local replacement", &debug.BuildInfo{Deps: []*debug.Module{{Path: "go.etcd.io/raft/v3", Version: "v3.7.0", Replace: &debug.Module{Path: "../raft"}}}},
			Info{Version: "(devel)", Modules: map[string]string{"go.etcd.io/raft/v3": "../raft", "go.etcd.io/etcd/server/v3": "unknown"}}},
	} {
		tc.want.Go = runtime.Version()
		got := From(tc.bi)
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(tc.want)
		if !bytes.Equal(g, w) {
			t.Errorf("%s: %s, want %s", tc.name, g, w)
		}
	}
}

// TestLine proves the one line raftkv --version prints names raftkv's
// version, each reported module's and Go's.
func TestLine(t *testing.T) {
	v := Info{Version: "v1.2.3", Go: "go1.26.0", Modules: map[string]string{"go.etcd.io/raft/v3": "v3.7.0", "go.etcd.io/etcd/server/v3": "unknown"}}
	if got, want := v.Line(), "raftkv v1.2.3 (go.etcd.io/raft/v3 v3.7.0, go.etcd.io/etcd/server/v3 unknown, go1.26.0)"; got != want {
		t.Errorf("Line() = %q, want %q", got, want)
	}
}
