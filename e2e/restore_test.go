package e2e

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.uber.org/zap"

	"raftkv/api"
	"raftkv/codec"
	"raftkv/datadir"
	"raftkv/keyspace"
	"raftkv/membership"
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
func restoreTestListing(t *testing.T, c *e2eCluster, id uint64) map[string]keyspace.Value {
	t.Helper()
	r := c.do("GET", id, "/keys/?level=consistent&limit=10000", "")
	if r.code != http.StatusOK {
		t.Fatalf("GET /keys/ on member %d: %d %q", id, r.code, r.body)
	}
	var view listingView
	if err := json.Unmarshal([]byte(r.body), &view); err != nil {
		t.Fatalf("GET /keys/ on member %d: %v", id, err)
	}
	kv := make(map[string]keyspace.Value, len(view.Entries))
	for _, e := range view.Entries {
		if e.Value == nil || e.Key == "" {
			t.Fatalf("GET /keys/ on member %d: entry %+v is not text", id, e)
		}
		kv[e.Key] = keyspace.Value{Data: *e.Value, Version: keyspace.Version{CreateIndex: e.CreateIndex, ModIndex: e.ModIndex}}
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
	want["idem"] = keyspace.Value{Data: "once", Version: keyspace.Version{CreateIndex: idem, ModIndex: idem}}
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
	wantID := types.ID(membership.DeriveClusterID(membership.PositionalCluster(c.peers), membership.DefaultClusterToken)).String()
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
// cluster uses is no longer removed (or its peers would refuse it). It
// restores a snapshot file of such a table with `raftkv restore` and reads
// the table from the snapshot the restored data dir starts from.
func TestRestoreRewritesMembers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv restore")
	}
	bin := e2eBuild(t)
	st := codec.State{
		Members: membership.NewTable([]membership.Member{
			{ID: 1, PeerURLs: []string{"http://a:1"}, ClientURLs: []string{"http://a:2"}},
			{ID: 2, PeerURLs: []string{"http://b:1"}},
			{ID: 3, PeerURLs: []string{"http://c:1"}},
		}, []uint64{4, 9}),
		Keys: keyspace.New(),
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "old.snap")
	hd := snapshotFileHeader{index: 7, term: 2, clusterID: 0xdd4d2f75ed37099c, memberID: 1}
	if err := os.WriteFile(file, snapshotFileOf(hd, st.Encode()), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(dir, "raftkv-3")
	args := []string{"--snapshot", file, "--id", "3", "--cluster", "3=http://x:1,4=http://y:1,5=http://z:1", "--data-dir", dataDir}
	if code, stdout, stderr := restoreTestRun(t, bin, args...); code != 0 || stderr != "" {
		t.Fatalf("raftkv restore %q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
	}
	snapshot, err := snap.New(zap.NewNop(), datadir.SnapDir(dataDir)).Load()
	if err != nil {
		t.Fatalf("the restored data dir's snapshot: %v", err)
	}
	got, err := codec.DecodeState(snapshot.GetData())
	if err != nil {
		t.Fatalf("the restored data dir's snapshot does not decode: %v", err)
	}
	members := func(ms []membership.Member) string {
		var out []string
		for _, m := range ms {
			out = append(out, fmt.Sprintf("%d=%v client %v learner %t", m.ID, m.PeerURLs, m.ClientURLs, m.IsLearner))
		}
		return strings.Join(out, "; ")
	}
	want := []membership.Member{{ID: 3, PeerURLs: []string{"http://x:1"}}, {ID: 4, PeerURLs: []string{"http://y:1"}}, {ID: 5, PeerURLs: []string{"http://z:1"}}}
	if members(got.Members.List()) != members(want) {
		t.Errorf("members %s, want %s", members(got.Members.List()), members(want))
	}
	if removed, wantRemoved := got.Members.Removed(), []uint64{1, 2, 9}; !slices.Equal(removed, wantRemoved) {
		t.Errorf("removed %v, want %v", removed, wantRemoved)
	}
}

// backupTestWrite is a write the cluster answered definitely, at index.
type backupTestWrite struct {
	index  uint64
	key    string
	value  string
	delete bool
}

// backupTestClient is for the load: no redirects (writes never redirect),
// a deadline well past --request-timeout.
var backupTestClient = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{}}

// backupTestLoad writes and deletes a few keys through every member of
// clients (client URLs), from several goroutines, until stop is closed;
// wait returns every write with a definite answer (PUT 201 or 204, DELETE
// 204) and the first error: an answer of unknown outcome makes the state
// at an index unknowable, and a healthy cluster gives none.
func backupTestLoad(clients []string, stop <-chan struct{}) (wait func() ([]backupTestWrite, error)) {
	const writers, keys = 6, 16
	var (
		mu       sync.Mutex
		writes   []backupTestWrite
		firstErr error
		wg       sync.WaitGroup
	)
	for w := range writers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("load/k%02d", (i*7+w*3)%keys)
				write := backupTestWrite{key: key, value: fmt.Sprintf("w%d-%d", w, i), delete: i%5 == 4}
				method := http.MethodPut
				if write.delete {
					method, write.value = http.MethodDelete, ""
				}
				index, code, reason, err := backupTestSend(method, clients[(w+i)%len(clients)]+"/keys/"+key, write.value, "")
				switch {
				case err == nil && code == http.StatusServiceUnavailable && strings.HasPrefix(reason, api.ErrNoLeader.Error()):
					// Not applied: an election on a busy machine.
				case err == nil && (code == http.StatusCreated || code == http.StatusNoContent):
					write.index = index
					mu.Lock()
					writes = append(writes, write)
					mu.Unlock()
				case err == nil && code == http.StatusNotFound && write.delete:
				default:
					mu.Lock()
					firstErr = cmpOrErr(firstErr, fmt.Errorf("%s %s: %d %v: outcome unknown", method, key, code, err))
					mu.Unlock()
					return
				}
			}
		})
	}
	return func() ([]backupTestWrite, error) {
		wg.Wait()
		return writes, firstErr
	}
}

// cmpOrErr is err if it is set, else next.
func cmpOrErr(err, next error) error {
	if err != nil {
		return err
	}
	return next
}

// backupTestSend sends one request and returns its X-Raft-Index, status
// and body.
func backupTestSend(method, url, body, idempotencyKey string) (uint64, int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, 0, "", err
	}
	if idempotencyKey != "" {
		req.Header.Set("Idempotency-Key", idempotencyKey)
	}
	resp, err := backupTestClient.Do(req)
	if err != nil {
		return 0, 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	index, _ := strconv.ParseUint(resp.Header.Get("X-Raft-Index"), 10, 64)
	return index, resp.StatusCode, string(b), err
}

// backupTestStateAt is the key space the writes leave at index, versions
// included: each write up to index, in log order. One entry writes a key
// at most once, so the index orders any two writes to a key.
func backupTestStateAt(writes []backupTestWrite, index uint64) map[string]keyspace.Value {
	sorted := slices.SortedFunc(slices.Values(writes), func(a, b backupTestWrite) int { return cmp.Compare(a.index, b.index) })
	kv := make(map[string]keyspace.Value)
	for _, w := range sorted {
		if w.index > index {
			break
		}
		if w.delete {
			delete(kv, w.key)
			continue
		}
		v := keyspace.Version{CreateIndex: w.index, ModIndex: w.index}
		if cur, ok := kv[w.key]; ok {
			v.CreateIndex = cur.CreateIndex
		}
		kv[w.key] = keyspace.Value{Data: w.value, Version: v}
	}
	return kv
}

// backupTestDiff describes how got differs from want under prefix, "" if
// not at all.
func backupTestDiff(got, want map[string]keyspace.Value, prefix string) string {
	var diffs []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok || g != want[k] {
			diffs = append(diffs, fmt.Sprintf("%s = %+v (present %t), want %+v", k, g, ok, want[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok && strings.HasPrefix(k, prefix) {
			diffs = append(diffs, fmt.Sprintf("%s = %+v, want absent", k, got[k]))
		}
	}
	return strings.Join(diffs, "; ")
}

// backupTestGet fetches GET /snapshot from url and returns the file, the
// parsed header and the state it holds.
func backupTestGet(t *testing.T, url string) ([]byte, snapshotFileHeader, codec.State) {
	t.Helper()
	resp, err := backupTestClient.Get(url + "/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	file, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /snapshot: %d %q", resp.StatusCode, file)
	}
	hd, data, err := parseSnapshotFile(file)
	if err != nil {
		t.Fatalf("GET /snapshot: %v", err)
	}
	if got := resp.Header.Get("X-Raft-Index"); got != strconv.FormatUint(hd.index, 10) {
		t.Errorf("GET /snapshot: X-Raft-Index %q, the file says %d", got, hd.index)
	}
	if got := resp.Header.Get("Content-Type"); got != "application/octet-stream" {
		t.Errorf("GET /snapshot: Content-Type %q", got)
	}
	if got, want := resp.Header.Get("Content-Disposition"), fmt.Sprintf(`attachment; filename="raftkv-%s-%d.snap"`, types.ID(hd.clusterID), hd.index); got != want {
		t.Errorf("GET /snapshot: Content-Disposition %q, want %q", got, want)
	}
	if resp.ContentLength != int64(len(file)) {
		t.Errorf("GET /snapshot: Content-Length %d, body %d bytes", resp.ContentLength, len(file))
	}
	st, err := codec.DecodeState(data)
	if err != nil {
		t.Fatalf("GET /snapshot: the snapshot does not decode: %v", err)
	}
	return file, hd, st
}

// snapshotFileHeader is what a snapshot file from GET /snapshot says about
// the copy it holds.
type snapshotFileHeader struct {
	index, term, clusterID, memberID uint64
}

// The snapshot file's layout, as package recovery documents it:
//
//	magic "RAFTKVSN" (8 bytes) | format version (2 bytes) |
//	raft index | term | cluster ID | member id | snapshot length (8 bytes each) |
//	snapshot (codec.State.Encode's bytes) | SHA-256 of everything before it (32 bytes)
//
// Numbers are big-endian.
const (
	snapshotFileMagic   = "RAFTKVSN"
	snapshotFileFormat  = 1
	snapshotFileHeaderN = len(snapshotFileMagic) + 2 + 5*8
)

// snapshotFileOf is the snapshot file holding data, as a member writes it.
func snapshotFileOf(hd snapshotFileHeader, data []byte) []byte {
	b := append([]byte(snapshotFileMagic), 0, snapshotFileFormat)
	for _, n := range []uint64{hd.index, hd.term, hd.clusterID, hd.memberID, uint64(len(data))} {
		b = binary.BigEndian.AppendUint64(b, n)
	}
	b = append(b, data...)
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// parseSnapshotFile checks a whole snapshot file, as `raftkv restore`
// reads it, and returns its header and the snapshot it holds.
func parseSnapshotFile(file []byte) (snapshotFileHeader, []byte, error) {
	if len(file) < snapshotFileHeaderN+sha256.Size || string(file[:len(snapshotFileMagic)]) != snapshotFileMagic {
		return snapshotFileHeader{}, nil, fmt.Errorf("not a whole snapshot file: %.60q", file)
	}
	b := file[len(snapshotFileMagic):]
	if format := binary.BigEndian.Uint16(b); format != snapshotFileFormat {
		return snapshotFileHeader{}, nil, fmt.Errorf("snapshot file format %d, want %d", format, snapshotFileFormat)
	}
	var n [5]uint64
	for i := range n {
		n[i] = binary.BigEndian.Uint64(b[2+8*i:])
	}
	hd := snapshotFileHeader{index: n[0], term: n[1], clusterID: n[2], memberID: n[3]}
	if uint64(len(file)) != uint64(snapshotFileHeaderN)+n[4]+sha256.Size {
		return snapshotFileHeader{}, nil, fmt.Errorf("snapshot file of %d bytes, its header says %d of snapshot", len(file), n[4])
	}
	body := file[:len(file)-sha256.Size]
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], file[len(body):]) {
		return snapshotFileHeader{}, nil, errors.New("snapshot file checksum mismatch")
	}
	return hd, body[snapshotFileHeaderN:], nil
}
