package main

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// benchRaftexampleEnv names a raftexample binary for BenchmarkRaftexample;
// the README's Performance section says how to build one.
const benchRaftexampleEnv = "RAFTKV_BENCH_RAFTEXAMPLE"

// BenchmarkRaftexample measures etcd's contrib/raftexample, the program
// raftkv is modelled on, with the clients and workloads of BenchmarkPut/c=64
// and BenchmarkGet/level=stale, in the same run as the ceilings: issue 4
// asks raftkv to beat it at PUT c=64 while answering only after commit.
// raftexample answers a PUT once its raft goroutine has taken the
// proposal, before it is written anywhere, and serves every GET from the
// member's own map. It is skipped unless RAFTKV_BENCH_RAFTEXAMPLE names the
// binary.
func BenchmarkRaftexample(b *testing.B) {
	bin := os.Getenv(benchRaftexampleEnv)
	if bin == "" {
		b.Skipf("set %s to a raftexample binary to compare with it", benchRaftexampleEnv)
	}
	put, get := benchWorkload{http.MethodPut, 64}, benchWorkload{http.MethodGet, 64}
	ceilings := benchCeilingsFor(b, put, get)
	procs := startRaftexample(b, bin)
	urls := procs.clients
	drive := func(wl benchWorkload) {
		op := benchHTTPOp(newBenchClient(b, wl.c), urls, wl.method, "")
		benchWarm(b, wl.c, op)
		b.Run(fmt.Sprintf("%s/c=%d", strings.ToLower(wl.method), wl.c), func(b *testing.B) {
			res := benchDrive(b, wl.c, op, procs.pids()...)
			b.ReportMetric(res.opsPerSec()/ceilings[wl], "http-ratio")
		})
	}
	drive(put)
	benchPreload(b, urls, benchKeys)
	waitRaftexampleKeys(procs)
	drive(get)
}

// startRaftexample starts a three-member raftexample cluster on loopback
// ports, its data dirs in a temp dir (raftexample writes them in its
// working directory), and returns it once a write made on one member can
// be read on all of them: raftexample has no status endpoint, so that is
// how a leader is known to exist.
func startRaftexample(b *testing.B, bin string) *e2eCluster {
	b.Helper()
	procs := newE2ECluster(b, bin)
	procs.deadline = time.Now().Add(24 * time.Hour) // every wait here bounds itself
	for range benchMembers {
		procs.allocate()
	}
	for id := uint64(1); id <= benchMembers; id++ {
		client := procs.clients[id-1]
		procs.start(id, fmt.Sprintf("raftexample%d", id),
			"--id", fmt.Sprint(id),
			"--cluster", strings.Join(procs.peers, ","),
			"--port", client[strings.LastIndex(client, ":")+1:])
	}
	urls := procs.clients
	procs.eventually(time.Minute, "a write to raftexample to be readable on every member", func() bool {
		// A PUT is answered 204 even with no leader, and then dropped: send
		// it until it shows up everywhere.
		if _, err := e2eTry(e2eClient, http.MethodPut, urls[0]+"/probe", "x"); err != nil {
			return false
		}
		for _, u := range urls {
			if r, err := e2eTry(e2eClient, http.MethodGet, u+"/probe", ""); err != nil || r.body != "x" {
				return false
			}
		}
		return true
	})
	return procs
}

// waitRaftexampleKeys waits until every member serves every pre-loaded
// key: raftexample answered those PUTs before committing them, and a
// benchmark GET of a key not there yet would fail with a 404.
func waitRaftexampleKeys(procs *e2eCluster) {
	procs.t.Helper()
	next := 0 // every member serves the keys below next
	procs.eventually(2*time.Minute, "every raftexample member to serve every pre-loaded key", func() bool {
		for ; next < benchKeys; next++ {
			for _, u := range procs.clients {
				if r, err := e2eTry(e2eClient, http.MethodGet, u+benchKeyPath(next), ""); err != nil || r.code != http.StatusOK {
					return false
				}
			}
		}
		return true
	})
}
