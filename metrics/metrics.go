// Package metrics is GET /metrics: one member's own series (raftkv_*),
// served with etcd's and Go's, in Prometheus's text format. The spine
// calls its hooks, one call each where something happens (a request
// answered, a proposal applied, a ReadIndex round, a snapshot saved), and
// reads raft's state at each scrape through the gauges WatchRaft is given.
package metrics

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Two kinds of series are served together. etcd's packages register theirs
// on Prometheus's default registry when they load (the WAL's fsync and
// write durations, the snapshotter's save durations, rafthttp's peer
// traffic and round trips): those are the process's, whatever members it
// runs. raftkv's own (raftkv_*) are one member's, in a registry of its
// own, so that tests running several members in one process keep them
// apart; nothing here is a package-level global.
//
// The pipeline's files keep only a hook each (a field and a call), made
// here; every hook is a no-op on a nil *Metrics, as in unit tests that
// build one piece of the pipeline without the rest.

// Buckets of the histograms, in seconds or in reads.
var (
	// requestBuckets run from 0.5ms (a stale read) to 8s (past
	// --request-timeout's default).
	requestBuckets = prometheus.ExponentialBuckets(0.0005, 2, 15)
	// snapshotBuckets run from 1ms to 33s: a million keys take seconds.
	snapshotBuckets = prometheus.ExponentialBuckets(0.001, 2, 16)
	// readsPerRoundBuckets run from 1 to 2048 reads.
	readsPerRoundBuckets = prometheus.ExponentialBuckets(1, 2, 12)
)

// Metrics is one member's own series, and the handler that serves them
// with the default registry's.
type Metrics struct {
	registry *prometheus.Registry
	handler  http.Handler

	requests        *prometheus.CounterVec   // by route, method and code
	requestDuration *prometheus.HistogramVec // by route and method
	series          requestSeriesCache
	recorders       sync.Pool // of *statusRecorder

	proposalsPending   prometheus.Gauge
	proposalsCommitted prometheus.Counter
	proposalsDropped   prometheus.Counter
	proposalsTimedOut  prometheus.Counter
	proposalsCanceled  prometheus.Counter
	idempotentReplays  prometheus.Counter

	leaderChanges prometheus.Counter

	readIndexRounds   prometheus.Counter
	readIndexFailures prometheus.Counter
	readIndexDuration prometheus.Histogram
	readsPerRound     prometheus.Histogram

	watchStreams prometheus.Gauge
	watchEvents  prometheus.Counter

	leasesGranted   prometheus.Counter
	leasesRevoked   prometheus.Counter
	leasesExpired   prometheus.Counter
	leaseKeepAlives prometheus.Counter

	snapshotSaveDuration prometheus.Histogram
	snapshotLoadDuration prometheus.Histogram
	snapshotBytes        prometheus.Gauge
}

// New makes a member's series and registers them on a registry of
// their own; lg logs what a scrape could not gather.
func New(lg *zap.Logger) *Metrics {
	reg := prometheus.NewRegistry()
	f := factory{reg}
	m := &Metrics{
		registry: reg,
		requests: f.counterVec("raftkv_http_requests_total",
			"Client requests answered, by route (the pattern that took the request; \"/\" for one no route took), method and status code.",
			"route", "method", "code"),
		requestDuration: f.histogramVec("raftkv_http_request_duration_seconds",
			"How long client requests took to answer, by route and method; a watch's is how long its stream lasted.",
			requestBuckets, "route", "method"),

		proposalsPending: f.gauge("raftkv_proposals_pending",
			"Proposals made on this member whose handler waits for them to apply here."),
		proposalsCommitted: f.counter("raftkv_proposals_committed_total",
			"Proposals made on this member that committed and applied here (whether their condition held or not)."),
		proposalsDropped: f.counter("raftkv_proposals_dropped_total",
			"Proposals raft refused (no leader, or the leader's uncommitted log full): never in the log, answered 503."),
		proposalsTimedOut: f.counter("raftkv_proposals_timed_out_total",
			"Proposals not applied here within --request-timeout: answered 504, their outcome unknown."),
		proposalsCanceled: f.counter("raftkv_proposals_canceled_total",
			"Proposals whose client went away before they applied here."),
		idempotentReplays: f.counter("raftkv_idempotency_replays_total",
			"Writes with an Idempotency-Key already recorded, answered with the recorded outcome (Idempotent-Replayed: true)."),

		leaderChanges: f.counter("raftkv_raft_leader_changes_total",
			"Times this member saw a new leader."),

		readIndexRounds: f.counter("raftkv_read_index_rounds_total",
			"ReadIndex rounds this member ran: for consistent reads (one serves every read waiting when it starts), membership changes, GET /snapshot and a learner's promotion."),
		readIndexFailures: f.counter("raftkv_read_index_failures_total",
			"ReadIndex rounds that got no read index (no leader, or none within --request-timeout)."),
		readIndexDuration: f.histogram("raftkv_read_index_round_duration_seconds",
			"How long a ReadIndex round took to get the leader's confirmed commit index.",
			requestBuckets),
		readsPerRound: f.histogram("raftkv_read_index_reads_per_round",
			"Requests served by one ReadIndex round.",
			readsPerRoundBuckets),

		watchStreams: f.gauge("raftkv_watch_streams",
			"Watch streams open on this member."),
		watchEvents: f.counter("raftkv_watch_events_sent_total",
			"Events written to watch streams."),

		leasesGranted: f.counter("raftkv_leases_granted_total",
			"Leases granted: applied here, as on every member."),
		leasesRevoked: f.counter("raftkv_leases_revoked_total",
			"Leases revoked by DELETE /leases/{id}: applied here, as on every member."),
		leasesExpired: f.counter("raftkv_leases_expired_total",
			"Leases the leader found expired: applied here, as on every member."),
		leaseKeepAlives: f.counter("raftkv_lease_keepalives_total",
			"Keepalives this member answered 200, as leader."),

		snapshotSaveDuration: f.histogram("raftkv_snapshot_save_duration_seconds",
			"How long this member took to take a snapshot of its state: encode it, write the file and the WAL record.",
			snapshotBuckets),
		snapshotLoadDuration: f.histogram("raftkv_snapshot_load_duration_seconds",
			"How long the state machine took to load a snapshot: the one on disk at start, or one from the leader.",
			snapshotBuckets),
		snapshotBytes: f.gauge("raftkv_snapshot_size_bytes",
			"Size of the last snapshot this member took."),
	}
	m.recorders.New = func() any { return new(statusRecorder) }
	m.handler = promhttp.HandlerFor(prometheus.Gatherers{prometheus.DefaultGatherer, reg}, promhttp.HandlerOpts{
		ErrorLog:      promLogger{lg},
		ErrorHandling: promhttp.ContinueOnError, // serve what could be gathered
	})
	return m
}

// RaftGauges read raft's state, which the raft node and the kvstore
// already keep, at each scrape.
type RaftGauges struct {
	Term, CommitIndex, AppliedIndex, SnapshotIndex func() uint64
	HasLeader, IsLeader                            func() bool
	Leases                                         func() int
}

// WatchRaft registers the series g reads.
func (m *Metrics) WatchRaft(g RaftGauges) {
	if m == nil {
		return
	}
	f := factory{m.registry}
	gauge := func(fn func() uint64) func() float64 { return func() float64 { return float64(fn()) } }
	flag := func(fn func() bool) func() float64 { return func() float64 { return boolValue(fn()) } }
	f.gaugeFunc("raftkv_raft_term", "The raft term this member is in.", gauge(g.Term))
	f.gaugeFunc("raftkv_raft_has_leader", "1 if this member knows a leader, else 0.", flag(g.HasLeader))
	f.gaugeFunc("raftkv_raft_is_leader", "1 if this member is the leader, else 0.", flag(g.IsLeader))
	f.gaugeFunc("raftkv_raft_commit_index", "The highest log index this member knows committed.", gauge(g.CommitIndex))
	f.gaugeFunc("raftkv_raft_applied_index", "The last log index the state machine applied (GET /status appliedIndex).", gauge(g.AppliedIndex))
	f.gaugeFunc("raftkv_raft_snapshot_index", "The log index of the newest snapshot on disk.", gauge(g.SnapshotIndex))
	if g.Leases != nil {
		f.gaugeFunc("raftkv_leases", "Leases that exist now.", func() float64 { return float64(g.Leases()) })
	}
}

// ServeHTTP serves GET /metrics.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if m == nil {
		http.Error(w, "metrics are not kept by this server", http.StatusNotFound)
		return
	}
	m.handler.ServeHTTP(w, r)
}

// The hooks, in pipeline order.

// Instrument returns next, counting and timing every request it answers,
// by the route that took it, its method and the status code answered. A
// recorder is reused, so that counting a request allocates nothing.
func (m *Metrics) Instrument(next http.Handler) http.Handler {
	if m == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := m.recorders.Get().(*statusRecorder)
		*rec = statusRecorder{ResponseWriter: w, start: time.Now()}
		next.ServeHTTP(rec, r)
		m.requestDone(rec, r)
	})
}

// requestDone counts a request that rec answered. The route is the
// pattern ServeMux matched, which it records on the request it was given
// (Request.Pattern): known only once the mux has routed it.
func (m *Metrics) requestDone(rec *statusRecorder, r *http.Request) {
	route := r.Pattern
	if route == "" {
		route = "/" // refused before routing (api.Mux): no route took it
	}
	code := rec.code
	if code == 0 {
		code = http.StatusOK // the handler wrote nothing, which net/http answers 200
	}
	s := m.series.get(m, requestLabels{route: route, method: methodLabel(r.Method), code: code})
	s.requests.Inc()
	s.duration.Observe(time.Since(rec.start).Seconds())
	*rec = statusRecorder{}
	m.recorders.Put(rec)
}

// ProposalStarted counts a proposal whose handler now waits for it.
func (m *Metrics) ProposalStarted() {
	if m != nil {
		m.proposalsPending.Inc()
	}
}

// ProposalEnd is how a proposal's wait ended.
type ProposalEnd int

const (
	ProposalApplied  ProposalEnd = iota // applied here (whether its condition held or not)
	ProposalDropped                     // refused by raft: never in the log
	ProposalTimedOut                    // not applied within --request-timeout: outcome unknown
	ProposalCanceled                    // its client went away
	ProposalStopped                     // the member stopped: none of the above
)

// ProposalDone counts how a proposal's wait ended.
func (m *Metrics) ProposalDone(end ProposalEnd) {
	if m == nil {
		return
	}
	m.proposalsPending.Dec()
	switch end {
	case ProposalApplied:
		m.proposalsCommitted.Inc()
	case ProposalDropped:
		m.proposalsDropped.Inc()
	case ProposalTimedOut:
		m.proposalsTimedOut.Inc()
	case ProposalCanceled:
		m.proposalsCanceled.Inc()
	}
}

// ReplayAnswered counts an answer with Idempotent-Replayed: true.
func (m *Metrics) ReplayAnswered() {
	if m != nil {
		m.idempotentReplays.Inc()
	}
}

// LeaderChanged counts a change of leader to lead; losing the leader
// (raft.None) is not a change to count, finding one after it is.
func (m *Metrics) LeaderChanged(lead uint64) {
	if m != nil && lead != 0 {
		m.leaderChanges.Inc()
	}
}

// ReadIndexRound counts a ReadIndex round that began at start and served
// reads reads, and whether it failed.
func (m *Metrics) ReadIndexRound(start time.Time, reads int, err error) {
	if m == nil {
		return
	}
	m.readIndexRounds.Inc()
	m.readsPerRound.Observe(float64(reads))
	if err != nil {
		m.readIndexFailures.Inc()
		return
	}
	m.readIndexDuration.Observe(time.Since(start).Seconds())
}

// WatchOpened counts a watch stream that starts.
func (m *Metrics) WatchOpened() {
	if m != nil {
		m.watchStreams.Inc()
	}
}

// WatchClosed counts a watch stream that ends.
func (m *Metrics) WatchClosed() {
	if m != nil {
		m.watchStreams.Dec()
	}
}

// WatchSent counts n events written to a watch stream.
func (m *Metrics) WatchSent(n int) {
	if m != nil && n > 0 {
		m.watchEvents.Add(float64(n))
	}
}

// LeaseGranted counts a lease granted.
func (m *Metrics) LeaseGranted() {
	if m != nil {
		m.leasesGranted.Inc()
	}
}

// LeaseEnded counts a lease revoked, or expired if expired.
func (m *Metrics) LeaseEnded(expired bool) {
	switch {
	case m == nil:
	case expired:
		m.leasesExpired.Inc()
	default:
		m.leasesRevoked.Inc()
	}
}

// LeaseKeptAlive counts a keepalive answered 200.
func (m *Metrics) LeaseKeptAlive() {
	if m != nil {
		m.leaseKeepAlives.Inc()
	}
}

// SnapshotSaved records a snapshot of size bytes taken since start.
func (m *Metrics) SnapshotSaved(start time.Time, size int) {
	if m == nil {
		return
	}
	m.snapshotSaveDuration.Observe(time.Since(start).Seconds())
	m.snapshotBytes.Set(float64(size))
}

// SnapshotLoaded records a snapshot loaded since start.
func (m *Metrics) SnapshotLoaded(start time.Time) {
	if m != nil {
		m.snapshotLoadDuration.Observe(time.Since(start).Seconds())
	}
}

// Request series, resolved once per route, method and code.

// requestLabels are one request series' label values.
type requestLabels struct {
	route, method string
	code          int
}

// requestSeries is a request counter and the latency histogram of its
// route and method, resolved from the vectors.
type requestSeries struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// requestSeriesCache maps label values to resolved series, so that a
// request costs a map lookup instead of the vectors' label hashing and
// strconv of the code, which allocate. Reads take no lock: the map is
// replaced, never changed, and only when a route answers a method or
// code for the first time, which a running member soon stops doing (the
// routes, methods and codes are few).
type requestSeriesCache struct {
	mu   sync.Mutex
	byLV atomic.Pointer[map[requestLabels]requestSeries]
}

// get returns the series of lv, resolving them on first use.
func (c *requestSeriesCache) get(m *Metrics, lv requestLabels) requestSeries {
	if cur := c.byLV.Load(); cur != nil {
		if s, ok := (*cur)[lv]; ok {
			return s
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := c.byLV.Load()
	if cur != nil {
		if s, ok := (*cur)[lv]; ok {
			return s
		}
	}
	next := make(map[requestLabels]requestSeries, 1)
	if cur != nil {
		for k, v := range *cur {
			next[k] = v
		}
	}
	s := requestSeries{
		requests: m.requests.WithLabelValues(lv.route, lv.method, strconv.Itoa(lv.code)),
		duration: m.requestDuration.WithLabelValues(lv.route, lv.method),
	}
	next[lv] = s
	c.byLV.Store(&next)
	return s
}

// methodLabel bounds the method label: a route without a method in its
// pattern ("/", "/keys") takes any, and a client's made-up method must not
// make a series of its own.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost, http.MethodDelete,
		http.MethodPatch, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "other"
}

// statusRecorder is a ResponseWriter that notes the status code a request
// was answered with, and when the request started.
type statusRecorder struct {
	http.ResponseWriter
	code  int
	start time.Time
}

// WriteHeader notes the final status code (not an informational 1xx).
func (rec *statusRecorder) WriteHeader(code int) {
	if rec.code == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		rec.code = code
	}
	rec.ResponseWriter.WriteHeader(code)
}

// Write notes the implicit 200 of a body written without a status.
func (rec *statusRecorder) Write(b []byte) (int, error) {
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	return rec.ResponseWriter.Write(b)
}

// WriteString keeps io.WriteString from copying a value into a []byte
// (GET /keys/{key} writes its value so).
func (rec *statusRecorder) WriteString(s string) (int, error) {
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	return io.WriteString(rec.ResponseWriter, s)
}

// Unwrap lets http.ResponseController reach the connection (flushes,
// deadlines) through the recorder.
func (rec *statusRecorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }

// factory makes series and registers them on one registry.
type factory struct{ reg prometheus.Registerer }

// counter makes and registers a counter.
func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

// gauge makes and registers a gauge.
func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

// gaugeFunc registers a gauge whose value fn reads at each scrape.
func (f factory) gaugeFunc(name, help string, fn func() float64) {
	f.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, fn))
}

// histogram makes and registers a histogram.
func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	f.reg.MustRegister(h)
	return h
}

// counterVec makes and registers a counter with labels.
func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

// histogramVec makes and registers a histogram with labels.
func (f factory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	f.reg.MustRegister(h)
	return h
}

// boolValue is a gauge's 1 or 0.
func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// promLogger logs, as a warning, what promhttp could not gather or write.
type promLogger struct{ lg *zap.Logger }

// Println is promhttp.Logger's one method.
func (l promLogger) Println(v ...any) { l.lg.Warn("serving /metrics: " + fmt.Sprint(v...)) }
