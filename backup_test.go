package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
)

// backupTestFile is a small snapshot file, with its header and the
// snapshot bytes it holds.
func backupTestFile(t *testing.T) ([]byte, backupHeader, []byte) {
	t.Helper()
	st := replicatedState{
		members: map[uint64]*member{1: {ID: 1, PeerURLs: []string{"http://127.0.0.1:2380"}}},
		removed: map[uint64]bool{2: true},
		kv: treeOf(map[string]keyValue{
			"a":   {value: "1", keyVersion: keyVersion{createIndex: 4, modIndex: 7}},
			"b/c": {value: strings.Repeat("x", 300), keyVersion: keyVersion{createIndex: 5, modIndex: 5}},
		}),
	}
	data := st.encode()
	hd := backupHeader{index: 7, term: 2, clusterID: 0xdd4d2f75ed37099c, memberID: 1}
	var file bytes.Buffer
	if err := writeBackup(&file, hd, data); err != nil {
		t.Fatal(err)
	}
	if int64(file.Len()) != backupSize(len(data)) {
		t.Fatalf("file is %d bytes, backupSize says %d", file.Len(), backupSize(len(data)))
	}
	return file.Bytes(), hd, data
}

// TestBackupFileRefusesDamage proves that parseBackup returns exactly the
// header and snapshot writeBackup wrote, and refuses the file cut at every
// length (as truncated) and with any one byte changed: restore must never
// write a data dir from less than the whole copy.
func TestBackupFileRefusesDamage(t *testing.T) {
	file, hd, data := backupTestFile(t)
	gotHeader, gotData, err := parseBackup(file)
	if err != nil || gotHeader != hd || !bytes.Equal(gotData, data) {
		t.Fatalf("parseBackup of an intact file: %+v, %d bytes, %v; want %+v, %d bytes", gotHeader, len(gotData), err, hd, len(data))
	}
	for n := range len(file) {
		_, _, err := parseBackup(file[:n])
		if !errors.Is(err, ErrBadBackup) || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("parseBackup of the first %d of %d bytes: %v, want a truncated file", n, len(file), err)
		}
	}
	for i := range file {
		damaged := slices.Clone(file)
		damaged[i] ^= 0x20
		_, _, err := parseBackup(damaged)
		if !errors.Is(err, ErrBadBackup) {
			t.Fatalf("parseBackup with byte %d changed: %v, want ErrBadBackup", i, err)
		}
		if i >= backupHeaderSize && !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("parseBackup with byte %d (after the header) changed: %v, want a checksum mismatch", i, err)
		}
	}
	if _, _, err := parseBackup(append(slices.Clone(file), 0)); !errors.Is(err, ErrBadBackup) {
		t.Fatalf("parseBackup with a byte appended: %v, want ErrBadBackup", err)
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
				case err == nil && code == http.StatusServiceUnavailable && strings.HasPrefix(reason, ErrNoLeader.Error()):
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
func backupTestStateAt(writes []backupTestWrite, index uint64) map[string]keyValue {
	sorted := slices.SortedFunc(slices.Values(writes), func(a, b backupTestWrite) int { return cmp.Compare(a.index, b.index) })
	kv := make(map[string]keyValue)
	for _, w := range sorted {
		if w.index > index {
			break
		}
		if w.delete {
			delete(kv, w.key)
			continue
		}
		v := keyVersion{createIndex: w.index, modIndex: w.index}
		if cur, ok := kv[w.key]; ok {
			v.createIndex = cur.createIndex
		}
		kv[w.key] = keyValue{value: w.value, keyVersion: v}
	}
	return kv
}

// backupTestDiff describes how got differs from want under prefix, "" if
// not at all.
func backupTestDiff(got, want map[string]keyValue, prefix string) string {
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
func backupTestGet(t *testing.T, url string) ([]byte, backupHeader, replicatedState) {
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
	hd, data, err := parseBackup(file)
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
	st, err := decodeState(data)
	if err != nil {
		t.Fatalf("GET /snapshot: the snapshot does not decode: %v", err)
	}
	return file, hd, st
}

// backupTestPreload writes n keys big/<i> of size bytes each through
// store, many at a time.
func backupTestPreload(t *testing.T, store *kvstore, n, size int) {
	t.Helper()
	value := bytes.Repeat([]byte("v"), size)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			for i := g; i < n; i += 64 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := store.put(ctx, fmt.Sprintf("big/%05d", i), value, precondition{}, idempotent{})
				cancel()
				if errors.Is(err, ErrNoLeader) {
					i -= 64 // not applied: a busy machine can cost a leader its lease; again
					continue
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatalf("preload: %v", err)
	}
}

// TestHTTPSnapshotUnderWrites proves that GET /snapshot, from a follower
// while every member takes writes, is the state at exactly the index it
// names: every key and version equal to what the acknowledged writes up to
// that index leave, none of the later ones, and, at the default consistent
// level, every write acknowledged before the request. It also checks the
// answer's headers, the member table and the level parameter.
func TestHTTPSnapshotUnderWrites(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	follower := c.follower()
	// Enough state before the load's keys that encoding takes a while, so
	// that a copy that changed as it was encoded would show it.
	backupTestPreload(t, c.server(leader).store, 4000, 1000)
	stop := make(chan struct{})
	wait := backupTestLoad(c.clients, stop)
	// Let the load get going, then write once more and take the copy.
	eventually(t, 10*time.Second, "the load to write", func() bool { return c.server(leader).store.appliedIndex.Load() > 50 })
	before, code, _, err := backupTestSend(http.MethodPut, c.url(leader, "/keys/before"), "x", "")
	if err != nil || code != http.StatusCreated {
		t.Fatalf("PUT /keys/before: %d %v", code, err)
	}
	_, hd, st := backupTestGet(t, c.url(follower, ""))
	// More writes after the copy, which it must not hold.
	eventually(t, 10*time.Second, "the load to write past the copy", func() bool {
		return c.server(leader).store.appliedIndex.Load() > hd.index+50
	})
	close(stop)
	writes, err := wait()
	if err != nil {
		t.Fatal(err)
	}

	t.Logf("copy at index %d; %d writes, the last at %d", hd.index, len(writes), slices.MaxFunc(writes, func(a, b backupTestWrite) int { return cmp.Compare(a.index, b.index) }).index)
	if hd.index < before {
		t.Errorf("copy at index %d misses PUT /keys/before, acknowledged at %d before the request", hd.index, before)
	}
	if hd.memberID != follower || hd.clusterID != c.server(follower).raft.clusterID || hd.term == 0 {
		t.Errorf("header %+v, want member %d, cluster %x, a term", hd, follower, c.server(follower).raft.clusterID)
	}
	want := backupTestStateAt(writes, hd.index)
	want["before"] = keyValue{value: "x", keyVersion: keyVersion{createIndex: before, modIndex: before}}
	got := mapOf(st.kv)
	if d := backupTestDiff(got, want, "load/"); d != "" {
		t.Errorf("copy at index %d of %d writes: %s", hd.index, len(writes), d)
	}
	if len(got) != len(want)+4000 {
		t.Errorf("copy holds %d keys, want the %d preloaded and %d more", len(got), 4000, len(want))
	}
	if later := len(writes) - len(slices.DeleteFunc(slices.Clone(writes), func(w backupTestWrite) bool { return w.index > hd.index })); later == 0 {
		t.Errorf("no write after the copy's index %d: the test proves nothing", hd.index)
	}
	if ids := slices.Sorted(maps.Keys(st.members)); fmt.Sprint(ids) != "[1 2 3]" {
		t.Errorf("copy holds members %v, want [1 2 3]", ids)
	}

	for _, target := range []string{"/snapshot?level=default", "/snapshot?level=x", "/snapshot?index=3"} {
		r := do(t, http.MethodGet, c.url(follower, target), "")
		if r.code != http.StatusBadRequest {
			t.Errorf("GET %s: %d %q, want 400", target, r.code, r.body)
		}
	}
	r := do(t, http.MethodGet, c.url(follower, "/snapshot?level=stale"), "")
	if _, _, err := parseBackup([]byte(r.body)); r.code != http.StatusOK || err != nil {
		t.Errorf("GET /snapshot?level=stale: %d, %v", r.code, err)
	}
}

// TestPointInTimeIsolated proves that the copy pointInTime takes is the
// state at its index whatever is applied after it: new, replaced and
// deleted keys, a member's client URL advertised in place, and idempotency
// records evicted and compacted in place. GET /snapshot encodes the copy
// while the kvstore goes on applying.
func TestPointInTimeIsolated(t *testing.T) {
	h := newKVTest(t)
	m := member{ID: 1, PeerURLs: []string{"http://127.0.0.1:2380"}}
	h.commit(nil, kvAddEntry(t, 1, m))
	keyed := func(i int) idempotent {
		return idempotent{key: fmt.Sprintf("idem-%d", i), fingerprint: uint64(i), window: 3}
	}
	var index uint64 = 1
	for i := range 10 {
		index++
		h.commit(nil, kvEntry(index, encodeWrite(uint64(index), true, fmt.Sprintf("k%d", i), []byte("v"), precondition{}, keyed(i))))
	}
	want, err := decodeWholeSnapshot(h.s.snapshot())
	if err != nil {
		t.Fatal(err)
	}
	st, gotIndex, term := h.s.pointInTime()
	if gotIndex != index || term != 1 {
		t.Fatalf("pointInTime at index %d, term %d; want %d, 1", gotIndex, term, index)
	}
	// After the copy: replace, delete, add, advertise, and evict records.
	for i := range 10 {
		index++
		h.commit(nil, kvEntry(index, encodeWrite(uint64(index), i%2 == 0, fmt.Sprintf("k%d", i+5), []byte("w"), precondition{}, keyed(100+i))))
	}
	index++
	h.commit(nil, kvEntry(index, encodeAdvertise(uint64(index), 1, "http://127.0.0.1:2379")))

	got, err := decodeWholeSnapshot(st.encode())
	if err != nil {
		t.Fatal(err)
	}
	if !maps.EqualFunc(got.kv, want.kv, snapKVEqual) {
		t.Errorf("copy has keys %v, want %v", got.kv, want.kv)
	}
	if !maps.EqualFunc(got.members, want.members, snapMemberEqual) {
		t.Errorf("copy has members %v, want %v", snapMemberList(got.members), snapMemberList(want.members))
	}
	if !snapRecordsEqual(got.records, want.records) || len(got.records) != 3 {
		t.Errorf("copy has %d idempotency records, want the %d taken, as they were", len(got.records), len(want.records))
	}
}
