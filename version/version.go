// Package version is what a binary was built from: raftkv --version (main)
// and GET /version (the client API's route), so that whoever runs a
// cluster can tell which members run which build, and which raft and etcd
// they carry.
package version

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
)

// ReportedModules are the dependencies whose versions a build reports:
// the raft library and etcd's server packages (WAL, snapshots, rafthttp).
var ReportedModules = []string{"go.etcd.io/raft/v3", "go.etcd.io/etcd/server/v3"}

// Info is the body of GET /version.
type Info struct {
	// Version is raftkv's: its module version when built from a tagged
	// module; else, when the Go toolchain stamped it, the VCS revision
	// (with "-modified" if the tree had changes); else "(devel)".
	Version  string            `json:"version"`
	Revision string            `json:"revision,omitempty"` // vcs.revision, when stamped
	Modified bool              `json:"modified,omitempty"` // vcs.modified: built from a tree with changes
	Go       string            `json:"go"`                 // the Go version it was built with
	Modules  map[string]string `json:"modules"`            // version by module path, of ReportedModules
}

// Get is this binary's build information
// (runtime/debug.ReadBuildInfo).
func Get() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return From(bi)
}

// From is what bi says of a build; nil is a binary built without
// module support, which says nothing.
func From(bi *debug.BuildInfo) Info {
	v := Info{Version: "(devel)", Go: runtime.Version(), Modules: make(map[string]string)}
	for _, path := range ReportedModules {
		v.Modules[path] = "unknown"
	}
	if bi == nil {
		return v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	switch {
	case bi.Main.Version != "" && bi.Main.Version != "(devel)":
		v.Version = bi.Main.Version // since Go 1.24, stamped from VCS too: v0.0.0-<time>-<revision>[+dirty]
	case v.Revision != "":
		v.Version = v.Revision
		if v.Modified {
			v.Version += "-modified"
		}
	}
	for _, dep := range bi.Deps {
		if _, ok := v.Modules[dep.Path]; ok {
			v.Modules[dep.Path] = moduleVersion(dep)
		}
	}
	return v
}

// moduleVersion is the version of the module a build used: a replacement's,
// if go.mod replaced it, or the directory a local replacement points at.
func moduleVersion(m *debug.Module) string {
	if r := m.Replace; r != nil {
		if r.Version == "" {
			return r.Path
		}
		return r.Version
	}
	return m.Version
}

// Line is the build in one line, as raftkv --version prints it.
func (v Info) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "raftkv %s (", v.Version)
	for _, path := range ReportedModules {
		fmt.Fprintf(&b, "%s %s, ", path, v.Modules[path])
	}
	fmt.Fprintf(&b, "%s)", v.Go)
	return b.String()
}

// Serve handles GET /version.
func Serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(Get())
}
