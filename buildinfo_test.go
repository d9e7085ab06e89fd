package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"
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
		want buildInfoView
	}{
		{"no build info", nil, buildInfoView{Version: "(devel)", Modules: map[string]string{"go.etcd.io/raft/v3": "unknown", "go.etcd.io/etcd/server/v3": "unknown"}}},
		{"module version", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Deps: deps, Settings: vcs},
			buildInfoView{Version: "v1.2.3", Revision: "0123abcd", Modified: true, Modules: map[string]string{"go.etcd.io/raft/v3": "v3.7.0", "go.etcd.io/etcd/server/v3": "v3.7.4-fix"}}},
		{"revision", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Deps: deps, Settings: vcs},
			buildInfoView{Version: "0123abcd-modified", Revision: "0123abcd", Modified: true, Modules: map[string]string{"go.etcd.io/raft/v3": "v3.7.0", "go.etcd.io/etcd/server/v3": "v3.7.4-fix"}}},
		{"local replacement", &debug.BuildInfo{Deps: []*debug.Module{{Path: "go.etcd.io/raft/v3", Version: "v3.7.0", Replace: &debug.Module{Path: "../raft"}}}},
			buildInfoView{Version: "(devel)", Modules: map[string]string{"go.etcd.io/raft/v3": "../raft", "go.etcd.io/etcd/server/v3": "unknown"}}},
	} {
		tc.want.Go = runtime.Version()
		got := buildInfoFrom(tc.bi)
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(tc.want)
		if !bytes.Equal(g, w) {
			t.Errorf("%s: %s, want %s", tc.name, g, w)
		}
	}
}

// TestGetVersion proves GET /version answers JSON with raftkv's version,
// the raft and etcd server modules' and Go's, as this binary was built.
func TestGetVersion(t *testing.T) {
	_, h := httpTestCluster(t, nil)
	rec := httpTestServe(h, "GET", "/version", "", false)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /version: %d %s %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
	var v buildInfoView
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("GET /version: %v", err)
	}
	if v.Version == "" || v.Go != runtime.Version() {
		t.Errorf("GET /version: version %q, go %q; want one, and %s", v.Version, v.Go, runtime.Version())
	}
	for _, path := range reportedModules {
		if !strings.HasPrefix(v.Modules[path], "v3.") {
			t.Errorf("GET /version: module %s at %q, want its v3 version", path, v.Modules[path])
		}
	}
	if rec := httpTestServe(h, "GET", "/version?verbose=1", "", false); rec.Code != http.StatusBadRequest {
		t.Errorf("GET /version?verbose=1: %d, want 400", rec.Code)
	}
}

// TestVersionFlag proves --version asks for the version, whatever else
// the command line says, and the binary prints it in one line on stdout
// and exits 0 without starting.
func TestVersionFlag(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"--version", "--id", "0"}} {
		if _, err := parseFlags(args); !errors.Is(err, errShowVersion) {
			t.Errorf("parseFlags(%q): %v, want the version shown", args, err)
		}
	}
	if testing.Short() {
		t.Skip("builds raftkv")
	}
	bin := e2eBuild(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--version")
	cmd.Dir = t.TempDir()
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("raftkv --version: %v (stderr %q), want exit status 0", err, stderr.String())
	}
	line, ok := strings.CutSuffix(stdout.String(), "\n")
	if !ok || strings.Contains(line, "\n") || stderr.Len() != 0 {
		t.Fatalf("raftkv --version: stdout %q, stderr %q; want one line on stdout", stdout.String(), stderr.String())
	}
	if !strings.HasPrefix(line, "raftkv ") || !strings.Contains(line, "go.etcd.io/raft/v3 v3.") ||
		!strings.Contains(line, "go.etcd.io/etcd/server/v3 v3.") || !strings.Contains(line, runtime.Version()) {
		t.Errorf("raftkv --version: %q, want raftkv's, raft's, etcd server's and Go's versions", line)
	}
}
