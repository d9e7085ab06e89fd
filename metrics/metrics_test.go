package metrics

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
)

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
	m := New(zap.NewNop())
	w := httptest.NewRecorder()
	r := httptest.NewRequest("PUT", "/keys/a", nil)
	h := m.Instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Pattern = "PUT /keys/{key...}" // as ServeMux records the route that took it
		w.WriteHeader(http.StatusCreated)
	}))
	serve := func() { h.ServeHTTP(w, r) }
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
	a, b := New(zap.NewNop()), New(zap.NewNop())
	a.LeaderChanged(1)
	if counterValue(a.leaderChanges) != 1 || counterValue(b.leaderChanges) != 0 {
		t.Errorf("leader changes: %v and %v, want 1 and 0", counterValue(a.leaderChanges), counterValue(b.leaderChanges))
	}
	a.LeaderChanged(0)
	if got := counterValue(a.leaderChanges); got != 1 {
		t.Errorf("losing the leader counted as a change: %v, want 1", got)
	}
	var nilMetrics *Metrics // what unit tests of one piece run with
	nilMetrics.ProposalStarted()
	nilMetrics.ProposalDone(ProposalDropped)
	nilMetrics.WatchOpened()
	next := http.NotFoundHandler()
	if h := nilMetrics.Instrument(next); fmt.Sprint(h) != fmt.Sprint(next) {
		t.Error("a nil *Metrics wraps the handler")
	}
}

// TestProposalEnds proves each way a proposal's wait ends is counted as
// what it is, a member stopping as none of them, and that every ended
// proposal leaves the pending gauge. (Which end a proposal's outcome is,
// the raft node decides.)
func TestProposalEnds(t *testing.T) {
	m := New(zap.NewNop())
	for _, tc := range []struct {
		end ProposalEnd
		c   prometheus.Counter
	}{
		{ProposalApplied, m.proposalsCommitted},
		{ProposalDropped, m.proposalsDropped},
		{ProposalTimedOut, m.proposalsTimedOut},
		{ProposalCanceled, m.proposalsCanceled},
	} {
		was := counterValue(tc.c)
		m.ProposalStarted()
		if got := gaugeValue(m.proposalsPending); got != 1 {
			t.Errorf("proposals pending after one started: %v, want 1", got)
		}
		m.ProposalDone(tc.end)
		if got := counterValue(tc.c); got != was+1 {
			t.Errorf("end %d: counter %v, want %v", tc.end, got, was+1)
		}
	}
	total := func() float64 {
		return counterValue(m.proposalsCommitted) + counterValue(m.proposalsDropped) + counterValue(m.proposalsTimedOut) + counterValue(m.proposalsCanceled)
	}
	if got := total(); got != 4 {
		t.Errorf("4 proposals ended, %v counted", got)
	}
	m.ProposalStarted()
	m.ProposalDone(ProposalStopped)
	if got := total(); got != 4 {
		t.Errorf("a proposal ended by the member stopping moved the end counters from 4 to %v", got)
	}
	if got := gaugeValue(m.proposalsPending); got != 0 {
		t.Errorf("proposals pending after each ended: %v, want 0", got)
	}
}
