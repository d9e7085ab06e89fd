package main

import (
	"fmt"
	"net/http"
	"testing"
)

// BenchmarkTLS measures what TLS costs PUTs and GETs at c=64: it starts two
// three-member clusters side by side, one on plain http and one on TLS for
// clients and peers with client certificates required on both (as
// RAFTKV_TLS=1 runs the harness), and drives each workload on the plain
// cluster and then, at once, on the TLS one, with the same client code. The
// TLS figure reports tls-ratio, its ops/s over the plain cluster's last
// figure, measured just before. The idle cluster costs the other only its
// heartbeats. -count repeats each measurement that many times in a row
// (the plain ones, then the TLS ones), so the pairs are seconds apart; on
// a noisy machine read the ratios, and the server CPU per operation:
//
//	go test -run '^$' -bench BenchmarkTLS -benchtime 5s -count 3 .
func BenchmarkTLS(b *testing.B) {
	const c = 64
	clusters := []struct {
		scheme  string
		cluster *benchCluster
	}{
		{"http", startBenchClusterOn(b, nil)},
		{"https", startBenchClusterOn(b, e2eCerts(b))},
	}
	for _, cl := range clusters {
		benchPreload(b, cl.cluster.urls(), benchKeys)
		cl.cluster.waitApplied() // stale reads on any member must find every key
	}
	workloads := []struct{ name, method, query string }{
		{"put", http.MethodPut, ""},
		{"get-stale", http.MethodGet, "?level=" + levelStale},
		{"get-consistent", http.MethodGet, "?level=" + levelConsistent},
	}
	for _, wl := range workloads {
		var plainOps float64
		for _, cl := range clusters {
			op := benchHTTPOp(newBenchClient(b, c), cl.cluster.urls(), wl.method, wl.query)
			benchWarm(b, c, op)
			b.Run(fmt.Sprintf("%s/c=%d/%s", wl.name, c, cl.scheme), func(b *testing.B) {
				res := benchDrive(b, c, op, cl.cluster.procs.pids()...)
				if cl.scheme == "http" {
					plainOps = res.opsPerSec()
				} else if plainOps > 0 {
					b.ReportMetric(res.opsPerSec()/plainOps, "tls-ratio")
				}
			})
		}
	}
}
