package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape is one GET /metrics, parsed.
type scrape map[string]*dto.MetricFamily

// scrapeMetrics gets url's /metrics and parses it as Prometheus's text
// format, failing the test unless it is that.
func scrapeMetrics(t *testing.T, url string) scrape {
	t.Helper()
	resp, err := noRedirect.Get(url + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("GET /metrics: Content-Type %q, want Prometheus's text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: not the text format: %v", err)
	}
	return families
}

// value is the value of the series name{labels} (label pairs, in any
// order): a counter's or gauge's, or a histogram's count; found false if
// there is no such series.
func (s scrape) value(name string, labels ...string) (v float64, found bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			ok := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					ok = true
				}
			}
			if !ok {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// get is value for a series that must exist (0 for a labelled one not
// seen yet, which a vector only makes when first used).
func (s scrape) get(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	if s[name] == nil && len(labels) == 0 {
		t.Fatalf("/metrics has no %s", name)
	}
	v, _ := s.value(name, labels...)
	return v
}

// putCreated labels a PUT /keys/{key} answered 201.
var putCreated = []string{"route", "PUT /keys/{key...}", "method", "PUT", "code", "201"}

// TestMetrics proves GET /metrics answers Prometheus's text format with
// etcd's series (the default registry's) and each member's own, and that
// the members' own move with what happens on that member only: a PUT
// counts under its route pattern and code, and as a committed proposal; a
// consistent read runs a ReadIndex round; a watch stream is open while it
// is and counts the events it sends; the raft gauges show the applied
// index /status shows, and who leads; a member that loses its leader
// drops what it is asked to propose.
func TestMetrics(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	follower := c.follower()
	// rafthttp's, by peer: there once the streams to the peers are up.
	eventually(t, 10*time.Second, "/metrics to show rafthttp's active peers", func() bool {
		return scrapeMetrics(t, c.clientURL(follower))["etcd_network_active_peers"] != nil
	})
	before := scrapeMetrics(t, c.clientURL(follower)) // the scrapes before count in it
	for _, name := range []string{
		// raftkv's own, one member's.
		"raftkv_http_requests_total", "raftkv_http_request_duration_seconds",
		"raftkv_proposals_pending", "raftkv_proposals_committed_total", "raftkv_proposals_dropped_total",
		"raftkv_proposals_timed_out_total", "raftkv_proposals_canceled_total", "raftkv_idempotency_replays_total",
		"raftkv_raft_term", "raftkv_raft_has_leader", "raftkv_raft_is_leader", "raftkv_raft_leader_changes_total",
		"raftkv_raft_commit_index", "raftkv_raft_applied_index", "raftkv_raft_snapshot_index",
		"raftkv_read_index_rounds_total", "raftkv_read_index_failures_total",
		"raftkv_read_index_round_duration_seconds", "raftkv_read_index_reads_per_round",
		"raftkv_watch_streams", "raftkv_watch_events_sent_total",
		"raftkv_snapshot_save_duration_seconds", "raftkv_snapshot_load_duration_seconds", "raftkv_snapshot_size_bytes",
		// etcd's, on the default registry: the WAL's.
		"etcd_disk_wal_fsync_duration_seconds",
		// Go's and the process's, on the default registry too.
		"go_goroutines", "process_start_time_seconds",
	} {
		if before[name] == nil {
			t.Errorf("/metrics has no %s", name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// A PUT to the follower counts there, not on the leader.
	leaderBefore := scrapeMetrics(t, c.clientURL(leader))
	if r := do(t, "PUT", c.url(follower, "/keys/metrics-a"), "1"); r.code != http.StatusCreated {
		t.Fatalf("PUT: %d %s", r.code, r.body)
	}
	after := scrapeMetrics(t, c.clientURL(follower))
	if got, want := after.get(t, "raftkv_http_requests_total", putCreated...), before.get(t, "raftkv_http_requests_total", putCreated...)+1; got != want {
		t.Errorf("requests PUT 201 on the follower: %v after a PUT, want %v", got, want)
	}
	if got, want := after.get(t, "raftkv_http_request_duration_seconds", "route", "PUT /keys/{key...}", "method", "PUT"), before.get(t, "raftkv_http_request_duration_seconds", "route", "PUT /keys/{key...}", "method", "PUT")+1; got != want {
		t.Errorf("request durations of PUT on the follower: %v observed, want %v", got, want)
	}
	if got, want := after.get(t, "raftkv_proposals_committed_total"), before.get(t, "raftkv_proposals_committed_total")+1; got != want {
		t.Errorf("proposals committed on the follower: %v after a PUT, want %v", got, want)
	}
	if got := after.get(t, "raftkv_proposals_pending"); got != 0 {
		t.Errorf("proposals pending once the PUT is answered: %v, want 0", got)
	}
	// A retry with the same Idempotency-Key is answered from the record.
	for range 2 {
		req, _ := http.NewRequest("PUT", c.url(follower, "/keys/metrics-i"), strings.NewReader("1"))
		req.Header.Set("Idempotency-Key", "metrics-retry")
		resp, err := noRedirect.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT with an Idempotency-Key: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	replayed := scrapeMetrics(t, c.clientURL(follower))
	if got, want := replayed.get(t, "raftkv_idempotency_replays_total"), after.get(t, "raftkv_idempotency_replays_total")+1; got != want {
		t.Errorf("idempotency replays: %v after a retry, want %v", got, want)
	}
	leaderAfter := scrapeMetrics(t, c.clientURL(leader))
	if got, want := leaderAfter.get(t, "raftkv_http_requests_total", putCreated...), leaderBefore.get(t, "raftkv_http_requests_total", putCreated...); got != want {
		t.Errorf("requests PUT 201 on the leader: %v after a PUT to a follower, want %v (its own registry)", got, want)
	}

	// The routes are patterns; what no route takes is "/".
	do(t, "GET", c.url(follower, "/no-such-path"), "")
	do(t, "GET", c.url(follower, "/keys/a/../b"), "")
	routed := scrapeMetrics(t, c.clientURL(follower))
	if got := routed.get(t, "raftkv_http_requests_total", "route", "/", "method", "GET", "code", "404"); got != 1 {
		t.Errorf(`requests to an unknown path: %v under route "/" code 404, want 1`, got)
	}
	if got := routed.get(t, "raftkv_http_requests_total", "route", "/", "method", "GET", "code", "400"); got != 1 {
		t.Errorf(`requests refused before routing: %v under route "/" code 400, want 1`, got)
	}
	if got := routed.get(t, "raftkv_http_requests_total", "route", "GET /metrics", "method", "GET", "code", "200"); got < 3 {
		t.Errorf("scrapes of the follower: %v counted under GET /metrics, want at least 3", got)
	}

	// A consistent read is one ReadIndex round, with one read in it.
	if r := do(t, "GET", c.url(follower, "/keys/metrics-a?level=consistent"), ""); r.code != http.StatusOK {
		t.Fatalf("consistent GET: %d %s", r.code, r.body)
	}
	read := scrapeMetrics(t, c.clientURL(follower))
	if got, want := read.get(t, "raftkv_read_index_rounds_total"), routed.get(t, "raftkv_read_index_rounds_total")+1; got != want {
		t.Errorf("ReadIndex rounds: %v after a consistent read, want %v", got, want)
	}
	if got, want := read.get(t, "raftkv_read_index_reads_per_round"), routed.get(t, "raftkv_read_index_reads_per_round")+1; got != want {
		t.Errorf("rounds observed in reads per round: %v, want %v", got, want)
	}
	if got := read.s("raftkv_read_index_reads_per_round").GetHistogram().GetSampleSum() - routed.s("raftkv_read_index_reads_per_round").GetHistogram().GetSampleSum(); got != 1 {
		t.Errorf("reads in the round: %v, want 1", got)
	}

	// A watch is open while it streams, and counts what it sends.
	w := openWatch(t, c.url(follower, "/watch/metrics-w"))
	watching := scrapeMetrics(t, c.clientURL(follower))
	if got := watching.get(t, "raftkv_watch_streams"); got != 1 {
		t.Errorf("watch streams open: %v with one open, want 1", got)
	}
	index := clusterPut(t, c, follower, "metrics-w", "v")
	w.want("put", "metrics-w", "v", index)
	// Counted once written, which the client may see first.
	var sent float64
	wantSent := watching.get(t, "raftkv_watch_events_sent_total") + 1
	eventually(t, 5*time.Second, "the watch event to count as sent", func() bool {
		sent = scrapeMetrics(t, c.clientURL(follower)).get(t, "raftkv_watch_events_sent_total")
		return sent >= wantSent
	})
	if sent != wantSent {
		t.Errorf("watch events sent: %v after one, want %v", sent, wantSent)
	}
	w.close()
	eventually(t, 5*time.Second, "the watch stream to count as closed", func() bool {
		v, _ := scrapeMetrics(t, c.clientURL(follower)).value("raftkv_watch_streams")
		return v == 0
	})

	// The raft gauges: the applied index is /status's, when nothing moves
	// it between the two; one member leads.
	var st statusView
	eventually(t, 5*time.Second, "the applied index to match /status appliedIndex", func() bool {
		st = metricsTestStatus(t, c, follower)
		s := scrapeMetrics(t, c.clientURL(follower))
		return s.get(t, "raftkv_raft_applied_index") == float64(st.AppliedIndex) && metricsTestStatus(t, c, follower) == st
	})
	s := scrapeMetrics(t, c.clientURL(follower))
	if got := s.get(t, "raftkv_raft_term"); got != float64(st.Term) || got < 1 {
		t.Errorf("raft term: %v, /status says %d", got, st.Term)
	}
	if got := s.get(t, "raftkv_raft_commit_index"); got < float64(st.AppliedIndex) {
		t.Errorf("commit index %v is behind the applied index %d", got, st.AppliedIndex)
	}
	if s.get(t, "raftkv_raft_is_leader") != 0 || s.get(t, "raftkv_raft_has_leader") != 1 || s.get(t, "raftkv_raft_leader_changes_total") < 1 {
		t.Errorf("follower: is_leader %v, has_leader %v, leader changes %v; want 0, 1, at least 1",
			s.get(t, "raftkv_raft_is_leader"), s.get(t, "raftkv_raft_has_leader"), s.get(t, "raftkv_raft_leader_changes_total"))
	}
	if got := scrapeMetrics(t, c.clientURL(leader)).get(t, "raftkv_raft_is_leader"); got != 1 {
		t.Errorf("leader: is_leader %v, want 1", got)
	}

	// Alone, the follower loses its leader and drops what it is asked.
	for _, id := range c.runningIDs() {
		if id != follower {
			c.stop(id)
		}
	}
	eventually(t, 10*time.Second, "the lone member to know no leader", func() bool {
		return scrapeMetrics(t, c.clientURL(follower)).get(t, "raftkv_raft_has_leader") == 0
	})
	alone := scrapeMetrics(t, c.clientURL(follower))
	if r := do(t, "PUT", c.url(follower, "/keys/metrics-b"), "1"); r.code != http.StatusServiceUnavailable {
		t.Fatalf("PUT without a leader: %d %s, want 503", r.code, r.body)
	}
	dropped := scrapeMetrics(t, c.clientURL(follower))
	if got, want := dropped.get(t, "raftkv_proposals_dropped_total"), alone.get(t, "raftkv_proposals_dropped_total")+1; got != want {
		t.Errorf("proposals dropped: %v after a PUT without a leader, want %v", got, want)
	}
	if got := dropped.get(t, "raftkv_http_requests_total", "route", "PUT /keys/{key...}", "method", "PUT", "code", "503"); got != 1 {
		t.Errorf("requests PUT 503: %v, want 1", got)
	}
}

// s is the family name, which must be there.
func (s scrape) s(name string) *dto.Metric {
	if f := s[name]; f != nil && len(f.GetMetric()) > 0 {
		return f.GetMetric()[0]
	}
	return &dto.Metric{}
}

// metricsTestStatus is member id's GET /status.
func metricsTestStatus(t *testing.T, c *testCluster, id uint64) statusView {
	t.Helper()
	return httpTestGetStatus(t, c.server(id).http.Handler)
}

// TestMetricsSnapshots proves a member counts the snapshots it takes, with
// the size of the last, and the one it loads when it restarts.
func TestMetricsSnapshots(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *config) { cfg.snapshotCount = 5 })
	start := scrapeMetrics(t, c.clientURL(1))
	for i := range 10 {
		clusterPut(t, c, 1, fmt.Sprintf("snap-%d", i), "v")
	}
	// The apply goroutine takes a snapshot once the kvstore has applied
	// its index, which may be after the write's handler was answered.
	var s scrape
	was := start.get(t, "raftkv_snapshot_save_duration_seconds")
	eventually(t, 5*time.Second, "two more snapshots saved after 10 writes at --snapshot-count 5", func() bool {
		s = scrapeMetrics(t, c.clientURL(1))
		return s.get(t, "raftkv_snapshot_save_duration_seconds") >= was+2
	})
	if got := s.get(t, "raftkv_snapshot_size_bytes"); got < float64(10*len("snap-0")) {
		t.Errorf("last snapshot size: %v bytes, want at least the keys' %d", got, 10*len("snap-0"))
	}
	if got := s.get(t, "raftkv_raft_snapshot_index"); got < 10 {
		t.Errorf("snapshot index: %v after 10 writes at --snapshot-count 5, want at least 10", got)
	}
	if got := s.get(t, "raftkv_snapshot_load_duration_seconds"); got != 0 {
		t.Errorf("snapshots loaded by a member that started empty: %v, want 0", got)
	}
	c.stop(1)
	c.start(1)
	if got := scrapeMetrics(t, c.clientURL(1)).get(t, "raftkv_snapshot_load_duration_seconds"); got != 1 {
		t.Errorf("snapshots loaded by a restarted member: %v, want 1", got)
	}
}

// TestMetricsProposalOutcomes proves each way a proposal's wait ends is
// counted as what it is, and a member stopping as none of them.
func TestMetricsProposalOutcomes(t *testing.T) {
	m := newMetrics(testLogger(0))
	for _, tc := range []struct {
		o   outcome
		err error
		c   func() float64
	}{
		{outcome{index: 7}, nil, func() float64 { return counterValue(m.proposalsCommitted) }},
		{outcome{index: 7, err: ErrPreconditionFailed}, ErrPreconditionFailed, func() float64 { return counterValue(m.proposalsCommitted) }},
		{outcome{err: ErrNoLeader}, fmt.Errorf("%w: raft: proposal dropped", ErrNoLeader), func() float64 { return counterValue(m.proposalsDropped) }},
		{outcome{}, context.DeadlineExceeded, func() float64 { return counterValue(m.proposalsTimedOut) }},
		{outcome{}, context.Canceled, func() float64 { return counterValue(m.proposalsCanceled) }},
	} {
		was := tc.c()
		m.proposalStarted()
		m.proposalDone(tc.o, tc.err)
		if got := tc.c(); got != was+1 {
			t.Errorf("outcome %+v, error %v: counter %v, want %v", tc.o, tc.err, got, was+1)
		}
	}
	total := func() float64 {
		return counterValue(m.proposalsCommitted) + counterValue(m.proposalsDropped) + counterValue(m.proposalsTimedOut) + counterValue(m.proposalsCanceled)
	}
	was := total()
	m.proposalStarted()
	m.proposalDone(outcome{}, ErrStopped)
	if got := total(); got != was {
		t.Errorf("a proposal ended by the member stopping moved the outcome counters from %v to %v", was, got)
	}
	if got := gaugeValue(m.proposalsPending); got != 0 {
		t.Errorf("proposals pending after each ended: %v, want 0", got)
	}
}

// counterValue and gaugeValue read one series.
func counterValue(c interface{ Write(*dto.Metric) error }) float64 {
	var d dto.Metric
	c.Write(&d)
	return d.GetCounter().GetValue()
}

func gaugeValue(g interface{ Write(*dto.Metric) error }) float64 {
	var d dto.Metric
	g.Write(&d)
	return d.GetGauge().GetValue()
}

// TestRequestMetricsAllocs proves counting a request allocates nothing
// once its route, method and code have been seen: the cost on the hot
// path is a map lookup, two atomic adds and two clock reads.
func TestRequestMetricsAllocs(t *testing.T) {
	m := newMetrics(testLogger(0))
	w := httptest.NewRecorder()
	r := httptest.NewRequest("PUT", "/keys/a", nil)
	r.Pattern = "PUT /keys/{key...}"
	serve := func() {
		rw, rec := m.trackRequest(w)
		rw.WriteHeader(http.StatusCreated)
		m.requestDone(rec, r)
	}
	serve()
	if n := testing.AllocsPerRun(1000, serve); n != 0 {
		t.Errorf("counting a request allocates %v times, want 0", n)
	}
	if got := counterValue(m.requests.WithLabelValues("PUT /keys/{key...}", "PUT", "201")); got != 1001+1 {
		t.Errorf("requests counted: %v, want %d", got, 1002)
	}
}

// TestStatusRecorder proves the recorder notes the code a request was
// answered with (a body without a status is 200, an informational 1xx is
// not the answer) and lets http.ResponseController flush through it.
func TestStatusRecorder(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(w http.ResponseWriter)
		want  int
	}{
		{"nothing written", func(w http.ResponseWriter) {}, 0},
		{"a body", func(w http.ResponseWriter) { w.Write([]byte("x")) }, 200},
		{"a string", func(w http.ResponseWriter) { w.(interface{ WriteString(string) (int, error) }).WriteString("x") }, 200},
		{"an error", func(w http.ResponseWriter) { http.Error(w, "no", http.StatusTeapot) }, http.StatusTeapot},
		{"1xx then 204", func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusNoContent)
		}, http.StatusNoContent},
	} {
		rec := &statusRecorder{ResponseWriter: httptest.NewRecorder()}
		tc.write(rec)
		if rec.code != tc.want {
			t.Errorf("%s: code %d, want %d", tc.name, rec.code, tc.want)
		}
	}
	inner := httptest.NewRecorder()
	if err := http.NewResponseController(&statusRecorder{ResponseWriter: inner}).Flush(); err != nil || !inner.Flushed {
		t.Errorf("flush through the recorder: %v, flushed %v; want it flushed", err, inner.Flushed)
	}
}

// TestMetricsRegistries proves members in one process keep their own
// series: making a second member's does not collide with the first's.
func TestMetricsRegistries(t *testing.T) {
	a, b := newMetrics(testLogger(0)), newMetrics(testLogger(0))
	a.leaderChanged(1)
	if counterValue(a.leaderChanges) != 1 || counterValue(b.leaderChanges) != 0 {
		t.Errorf("leader changes: %v and %v, want 1 and 0", counterValue(a.leaderChanges), counterValue(b.leaderChanges))
	}
	a.leaderChanged(0)
	if got := counterValue(a.leaderChanges); got != 1 {
		t.Errorf("losing the leader counted as a change: %v, want 1", got)
	}
	var nilMetrics *metrics // what unit tests of one piece run with
	nilMetrics.proposalStarted()
	nilMetrics.proposalDone(outcome{}, errors.New("x"))
	nilMetrics.watchOpened()
	if w, rec := nilMetrics.trackRequest(httptest.NewRecorder()); rec != nil || w == nil {
		t.Error("a nil *metrics wraps the writer")
	}
}
