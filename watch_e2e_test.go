package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestWatchAcrossSnapshotInstall proves, on real processes, the path
// TestLinearizable's watchers take only when the nemesis happens to
// partition the member one of them is on: a member cut off while a stream
// is open, and brought up to date with a snapshot from the leader, ends
// the stream with an error event whose resumeAfter is the last index the
// stream delivered; it then refuses that start itself (410: its history
// begins at the snapshot), and another member resumes after it with every
// change made in between, each once, in order.
func TestWatchAcrossSnapshotInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raftkv processes")
	}
	c := newFaultCluster(t, e2eBuild(t), 3, 50)
	ms := c.active()
	var leader uint64
	c.procs.eventually(faultMemberTimeout, "a leader", func() bool { leader = c.leader(); return leader != 0 })
	// ms[2] is a follower, to be cut off; the writes go to ms[0].
	if i := slices.IndexFunc(ms, func(m *faultMember) bool { return m.id == leader }); i == 2 {
		ms[0], ms[2] = ms[2], ms[0]
	}
	put := func(key, value string) uint64 {
		t.Helper()
		r, err := e2eTry(e2eClient, http.MethodPut, c.url(ms[0], "/keys/"+key), value)
		if err != nil || (r.code != http.StatusCreated && r.code != http.StatusNoContent) {
			t.Fatalf("PUT %s: %d %q %v", key, r.code, r.body, err)
		}
		index, err := strconv.ParseUint(r.header.Get("X-Raft-Index"), 10, 64)
		if err != nil {
			t.Fatalf("PUT %s: X-Raft-Index %q", key, r.header.Get("X-Raft-Index"))
		}
		return index
	}
	first := put("w/a", "1")
	cutOff := openWatch(t, c.url(ms[2], fmt.Sprintf("/watch/w/?from=%d", first-1)))
	cutOff.want("put", "w/a", "1", first)

	// More entries than the leader keeps after a snapshot (50) while the
	// member is cut off: it can only catch up with a snapshot.
	c.setPartition(ms, ms[2:], true)
	t.Logf("cut member %d off (the leader is %d)", ms[2].id, leader)
	const n = 120
	var indexes [n]uint64
	for i := range n {
		indexes[i] = put(fmt.Sprintf("w/k%d", i), strconv.Itoa(i))
	}
	c.setPartition(ms, ms[2:], false)

	e, ok := cutOff.next(faultMemberTimeout)
	var v watchErrorView
	if !ok || e.kind != "error" || json.Unmarshal([]byte(e.data), &v) != nil || v.ResumeAfter != first {
		t.Fatalf("after a snapshot install: %+v (stream open %t), want an error event resuming after %d", e, ok, first)
	}
	if e, ok := cutOff.next(5 * time.Second); ok {
		t.Fatalf("an event after the error event: %+v", e)
	}
	resume := strconv.FormatUint(v.ResumeAfter, 10)
	if r, _ := e2eTry(e2eClient, http.MethodGet, c.url(ms[2], "/watch/w/?from="+resume), ""); r.code != http.StatusGone {
		t.Errorf("resuming after %s on the member that installed the snapshot: %d %q, want 410", resume, r.code, r.body)
	}
	again := openWatch(t, c.url(ms[1], fmt.Sprintf("/watch/w/?limit=%d", n)), "Last-Event-ID", resume)
	for i := range n {
		again.want("put", fmt.Sprintf("w/k%d", i), strconv.Itoa(i), indexes[i])
	}
	if e, ok := again.next(5 * time.Second); ok {
		t.Errorf("an event after the limit: %+v", e)
	}
}
