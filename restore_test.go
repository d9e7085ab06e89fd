package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
)

// restoreTestRun runs `raftkv restore args` and returns its exit status,
// stdout and stderr.
func restoreTestRun(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, append([]string{"restore"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if exitErr, ok := errors.AsType[*exec.ExitError](err); ok {
		return exitErr.ExitCode(), stdout.String(), stderr.String()
	}
	if err != nil {
		t.Fatalf("raftkv restore: %v", err)
	}
	return 0, stdout.String(), stderr.String()
}

// restoreTestRefused fails unless `raftkv restore args` exits 1 with one
// line on stderr that says why, naming reason, and nothing on stdout.
func restoreTestRefused(t *testing.T, bin, reason string, args ...string) {
	t.Helper()
	code, stdout, stderr := restoreTestRun(t, bin, args...)
	line, ok := strings.CutSuffix(stderr, "\n")
	if code != 1 || !ok || strings.Contains(line, "\n") || !strings.HasPrefix(line, "raftkv restore: ") || !strings.Contains(line, reason) || stdout != "" {
		t.Errorf("raftkv restore %q: exit %d, stdout %q, stderr %q; want exit 1 and one line saying %q", args, code, stdout, stderr, reason)
	}
}

// restoreTestListing reads every key from member id at level consistent,
// with its versions.
func restoreTestListing(t *testing.T, c *e2eCluster, id uint64) map[string]keyValue {
	t.Helper()
	r := c.do("GET", id, "/keys/?level=consistent&limit=10000", "")
	if r.code != http.StatusOK {
		t.Fatalf("GET /keys/ on member %d: %d %q", id, r.code, r.body)
	}
	var view listingView
	if err := json.Unmarshal([]byte(r.body), &view); err != nil {
		t.Fatalf("GET /keys/ on member %d: %v", id, err)
	}
	kv := make(map[string]keyValue, len(view.Entries))
	for _, e := range view.Entries {
		if e.Value == nil || e.Key == "" {
			t.Fatalf("GET /keys/ on member %d: entry %+v is not text", id, e)
		}
		kv[e.Key] = keyValue{value: *e.Value, keyVersion: keyVersion{createIndex: e.CreateIndex, modIndex: e.ModIndex}}
	}
	return kv
}

// e2eWaitHealthy waits until every running member answers /health with ok.
func e2eWaitHealthy(c *e2eCluster, ids ...uint64) {
	c.t.Helper()
	for _, id := range ids {
		c.eventually(20*time.Second, fmt.Sprintf("member %d to answer GET /health with 200", id), func() bool {
			r, err := e2eTry(e2eClient, "GET", c.url(id, "/health"), "")
			return err == nil && r.code == http.StatusOK
		})
	}
}

// TestRestoreNewCluster proves the README's backup and restore: a copy
// taken from a follower with curl while every member takes writes, restored
// into a new three-member cluster on other ports with `raftkv restore` and
// started with first-start flags, serves exactly the state at the copy's
// index (every key, value and version that the writes acknowledged up to
// that index leave, none of the later ones, and the idempotency records),
// with the new members and cluster ID, and takes writes above that index.
// A truncated file, a corrupt one and a non-empty data dir are refused
// with one line and exit status 1.
func TestRestoreNewCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	bin := e2eBuild(t)
	old := newE2ECluster(t, bin)
	old.startThree()
	e2eWaitHealthy(old, 1, 2, 3)
	idem, code, _, err := backupTestSend(http.MethodPut, old.url(1, "/keys/idem"), "once", "restore-test-1")
	if err != nil || code != http.StatusCreated {
		t.Fatalf("PUT /keys/idem with an Idempotency-Key: %d %v", code, err)
	}

	stop := make(chan struct{})
	wait := backupTestLoad(old.clients, stop)
	start := old.status(1).AppliedIndex
	old.eventually(10*time.Second, "the load to write", func() bool { return old.status(1).AppliedIndex > start+30 })
	follower := uint64(2)
	if old.status(1).Leader == 2 {
		follower = 3
	}
	file, hd, _ := backupTestGet(t, old.url(follower, ""))
	old.eventually(10*time.Second, "the load to write past the copy", func() bool { return old.status(1).AppliedIndex > hd.index+30 })
	close(stop)
	writes, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	want := backupTestStateAt(writes, hd.index)
	want["idem"] = keyValue{value: "once", keyVersion: keyVersion{createIndex: idem, modIndex: idem}}
	t.Logf("copy at index %d; %d writes", hd.index, len(writes))

	c := newE2ECluster(t, bin)
	for range 3 {
		c.allocate()
	}
	cluster := strings.Join(c.peers, ",")
	dataDir := func(id uint64) string { return filepath.Join(c.dir, fmt.Sprintf("raftkv-%d", id)) }
	backup := filepath.Join(c.dir, "backup.snap")
	truncated := filepath.Join(c.dir, "truncated.snap")
	corrupt := filepath.Join(c.dir, "corrupt.snap")
	damaged := bytes.Clone(file)
	damaged[len(damaged)/2] ^= 1
	for path, b := range map[string][]byte{backup: file, truncated: file[:len(file)-len(file)/3], corrupt: damaged} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	restoreTestRefused(t, bin, "truncated", "--snapshot", truncated, "--id", "1", "--cluster", cluster, "--data-dir", dataDir(1))
	restoreTestRefused(t, bin, "corrupt", "--snapshot", corrupt, "--id", "1", "--cluster", cluster, "--data-dir", dataDir(1))
	if entries, _ := os.ReadDir(c.dir); len(entries) != 3 {
		t.Errorf("refused restores left %d entries in %s, want the 3 files", len(entries), c.dir)
	}
	for id := uint64(1); id <= 3; id++ {
		args := []string{"--snapshot", backup, "--id", fmt.Sprint(id), "--cluster", cluster, "--data-dir", dataDir(id)}
		if code, stdout, stderr := restoreTestRun(t, bin, args...); code != 0 || !strings.Contains(stdout, "index "+strconv.FormatUint(hd.index, 10)) || stderr != "" {
			t.Fatalf("raftkv restore %q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	restoreTestRefused(t, bin, "not empty", "--snapshot", backup, "--id", "1", "--cluster", cluster, "--data-dir", dataDir(1))

	for id := uint64(1); id <= 3; id++ {
		c.start(id, fmt.Sprintf("restored%d", id), c.args(id, 3)...)
	}
	e2eWaitHealthy(c, 1, 2, 3)
	wantID := types.ID(deriveClusterID(positionalCluster(c.peers), defaultClusterToken)).String()
	for id := uint64(1); id <= 3; id++ {
		if d := backupTestDiff(restoreTestListing(t, c, id), want, ""); d != "" {
			t.Errorf("restored member %d, from a copy at index %d: %s", id, hd.index, d)
		}
		var ids []string
		for _, m := range c.members(id) {
			ids = append(ids, fmt.Sprintf("%d=%s", m.ID, m.PeerURLs[0]))
		}
		if got, want := strings.Join(ids, ","), fmt.Sprintf("1=%s,2=%s,3=%s", c.peers[0], c.peers[1], c.peers[2]); got != want {
			t.Errorf("restored member %d lists members %s, want %s", id, got, want)
		}
		if st := c.status(id); st.ClusterID != wantID || st.AppliedIndex < hd.index {
			t.Errorf("restored member %d: cluster %s at applied index %d, want cluster %s at %d or more", id, st.ClusterID, st.AppliedIndex, wantID, hd.index)
		}
	}

	index, code, _, err := backupTestSend(http.MethodPut, c.url(3, "/keys/after"), "restore", "")
	if err != nil || code != http.StatusCreated || index <= hd.index {
		t.Fatalf("PUT on the restored cluster: %d at index %d, %v; want 201 above %d", code, index, err, hd.index)
	}
	c.expect("GET", 1, "/keys/after?level=consistent", "", http.StatusOK, "restore")
	req, _ := http.NewRequest(http.MethodPut, c.url(2, "/keys/idem"), strings.NewReader("once"))
	req.Header.Set("Idempotency-Key", "restore-test-1")
	resp, err := e2eClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("Idempotent-Replayed") != "true" || resp.Header.Get("X-Raft-Index") != strconv.FormatUint(idem, 10) {
		t.Errorf("retry of the keyed PUT on the restored cluster: %d, Idempotent-Replayed %q, X-Raft-Index %q; want the first answer replayed, 201 at %d",
			resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), resp.Header.Get("X-Raft-Index"), idem)
	}
}

// TestRestoreRewritesMembers proves that a restored member table is
// exactly the new cluster, that the old members outside it become removed
// ids (so a process of theirs is turned away), and that an id the new
// cluster uses is no longer removed (or its peers would refuse it).
func TestRestoreRewritesMembers(t *testing.T) {
	st := replicatedState{
		members: map[uint64]*member{
			1: {ID: 1, PeerURLs: []string{"http://a:1"}, ClientURLs: []string{"http://a:2"}},
			2: {ID: 2, PeerURLs: []string{"http://b:1"}},
			3: {ID: 3, PeerURLs: []string{"http://c:1"}},
		},
		removed: map[uint64]bool{4: true, 9: true},
	}
	rewriteMembers(&st, map[uint64]string{3: "http://x:1", 4: "http://y:1", 5: "http://z:1"})
	want := map[uint64]*member{3: {ID: 3, PeerURLs: []string{"http://x:1"}}, 4: {ID: 4, PeerURLs: []string{"http://y:1"}}, 5: {ID: 5, PeerURLs: []string{"http://z:1"}}}
	if !maps.EqualFunc(st.members, want, snapMemberEqual) {
		t.Errorf("members %v, want %v", snapMemberList(st.members), snapMemberList(want))
	}
	if wantRemoved := map[uint64]bool{1: true, 2: true, 9: true}; !maps.Equal(st.removed, wantRemoved) {
		t.Errorf("removed %v, want %v", st.removed, wantRemoved)
	}
}
