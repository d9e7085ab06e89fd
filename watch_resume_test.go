package main

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestWatchQuietPrefixResumes proves a watcher of a prefix that changes
// seldom can resume on a member that has restarted since, though changes
// to other keys moved the member's history past its last event: the
// keep-alive gives the stream's position as an id without data (which
// EventSource takes as the last event ID without dispatching an event), and
// the resume from there is accepted, not a 410. Found by TestLinearizable's
// watchers; it failed on the first watch server.
func TestWatchQuietPrefixResumes(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *config) { cfg.snapshotCount = 10; cfg.watchKeepAlive = 200 * time.Millisecond })
	quiet := clusterPut(t, c, 1, "config/a", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", c.url(1, "/watch/config/?from="+strconv.FormatUint(quiet-1, 10)), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: %v %v", resp, err)
	}
	defer resp.Body.Close()
	for i := range 50 {
		clusterPut(t, c, 1, "busy/"+strconv.Itoa(i), "v") // a snapshot at least every 10 entries
	}
	// The last position the stream told its client, by the end of the
	// context: the last id line, with an event or without one.
	var last uint64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
			last, _ = strconv.ParseUint(id, 10, 64)
		}
	}
	if last < quiet {
		t.Fatalf("the stream gave no id from %d on", quiet)
	}
	if err := c.stop(1); err != nil {
		t.Fatal(err)
	}
	c.start(1)
	c.waitLeader()
	// It resumes (no 410), and the next change under config/ comes.
	w := openWatch(t, c.url(1, "/watch/config/?limit=1&from="+strconv.FormatUint(last, 10)))
	next := clusterPut(t, c, 1, "config/b", "2")
	w.want("put", "config/b", "2", next)
}
