package e2e

import (
	"bufio"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"raftkv/api"
	"raftkv/keyspace"
)

// Watchers and listings under faults, checked against TestLinearizable's
// history. Beside the workload's clients, watchers stream GET /watch/lin/
// (every key the workload writes is under lin/), resuming with
// Last-Event-ID or ?from across kills, pauses, partitions, snapshot
// installs and membership changes, and a lister pages through /keys/lin/
// at every read level. Afterwards every event is matched with the write
// that made it: the history knows each acknowledged write's index (a PUT's
// ETag, a DELETE's X-Raft-Index), and each PUT's value is unique to it. The
// events every watcher saw together are then the complete log of changes,
// and each listing page must equal that log's state at the page's
// X-Raft-Index.
//
// Resuming exactly takes care on the client's side too. Several changes
// can share one raft index, and a member ends a stream only between
// entries, so after a clean end (the chunked body's last chunk) or an
// error event, resuming after the last id seen skips nothing. A stream cut
// by a fault can end inside an entry, though: the events of the last id
// are then dropped and taken again from the entry before. A 410 on every
// member means no member keeps the events after the watcher's position;
// the watcher then lists the keys (level=consistent) and watches from the
// listing's X-Raft-Index. Its coverage has a hole there, which the other
// watchers cover, and the listing joins the listing check, so the check
// stays exact: a watcher owes exactly the events of the index ranges it
// covered.

const (
	// linearizablePrefix is where the workload's keys are: a watch and a
	// listing of it see all of them and nothing else.
	linearizablePrefix = "lin/"
	// sentinelKey is written twice once the workload is over: a watcher
	// that has seen the second write has every event up to the first one
	// whole (an entry is whole when a later index arrives).
	sentinelKey = linearizablePrefix + "end"
	// watchCatchUp is how long the watchers have to reach the sentinel.
	watchCatchUp = 30 * time.Second
	// smallWatchHistory is the --watch-history-bytes of the run with
	// frequent snapshots: about a second of the workload's changes, so
	// that the laggard's resumes often find the history gone (410) or
	// leave it behind, and it must start again from a listing.
	smallWatchHistory = 32 << 10
	// watchersPerCluster steady watchers start one on each member; the
	// laggard comes on top.
	watchersPerCluster = 3
	// watchProblemsShown bounds how many problems of one kind are listed.
	watchProblemsShown = 10
)

// seenEvent is one event a watcher took, and where from.
type seenEvent struct {
	index  uint64
	delete bool
	key    string
	value  string // a put's
	create uint64
	mod    uint64
	from   string // the member, and the connection's number
}

// eventID names a change: several changes share an index, but a key is
// written at most once per entry.
type eventID struct {
	index uint64
	key   string
}

// String shows e as the watchers' problems name it.
func (e seenEvent) String() string {
	if e.delete {
		return fmt.Sprintf("delete %s at %d (created %d) from %s", e.key, e.index, e.create, e.from)
	}
	return fmt.Sprintf("put %s=%q at %d (created %d) from %s", e.key, e.value, e.index, e.create, e.from)
}

// watchSpan is a range of indexes, after to through, that a watcher
// watched without a hole: it owes every change in it.
type watchSpan struct{ after, through uint64 }

// linWatcher is one watcher of the workload's prefix. A steady watcher
// has a home member, the n-th in the cluster, and streams from it; when
// it cannot, it moves to the next member in turn, and comes home again
// after a second or two there. The laggard goes from member to member:
// on some streams it stops reading for a while, with a small receive
// buffer, so that the member's history leaves it behind; it drops each
// stream after a few seconds and comes back a while later, from a
// position the history may no longer reach.
type linWatcher struct {
	w       *workload
	n       int
	laggard bool
	rng     *rand.Rand
	hc      *http.Client // for streams: no overall timeout
	lc      *http.Client // for its listings

	seen atomic.Uint64 // the highest index taken, whole or not, for finish

	// The rest is the watcher goroutine's until it ends.
	events       []seenEvent // whole entries, in the order taken
	spans        []watchSpan // closed; the open one starts after spanAfter
	spanAfter    uint64
	started      bool
	pos          uint64      // every entry up to pos has been taken whole
	pending      []seenEvent // the entry after pos, which may go on
	conns        int         // streams opened
	ends         int         // ended cleanly (the member stopped, or after an error event)
	cuts         int         // cut short: the pending entry was dropped
	gone         int         // 410s
	relists      int         // starts again from a listing
	skips        int         // starts again from the oldest index a member keeps
	errors       map[string]int
	relistFailed map[string]int    // listings that got no answer, by why
	goneWhy      map[string]string // the 410 from each member that answered one for pos
	relisted     []string          // each relisting, and the 410s that led to it
	problems     []string          // answers a correct member never gives
	trail        []streamTrail     // every stream, for messages
}

// streamTrail is what one stream did, for messages.
type streamTrail struct {
	from           string
	at             time.Duration // when it began, in the workload's time
	after, through uint64        // the watcher's position at its start and end
	events, taken  int           // events taken before it, and by it
	dropped        int           // events of an entry it was cut in
	end            string
}

// String shows t in messages.
func (t streamTrail) String() string {
	return fmt.Sprintf("%s at %s after %d: %d events through %d, ended by %s, %d dropped", t.from, t.at, t.after, t.taken, t.through, t.end, t.dropped)
}

// trailAt is the streams of lw that ran over index.
func (lw *linWatcher) trailAt(index uint64) []string {
	var out []string
	for i, t := range lw.trail {
		if t.after < index && (index <= t.through || i == len(lw.trail)-1 || lw.trail[i+1].after >= index) {
			out = append(out, t.String())
		}
	}
	return out
}

// streamEnd is how a stream went.
type streamEnd int

const (
	streamFailed streamEnd = iota // no stream: the member is down, slow or not serving
	streamGone                    // 410: the member no longer keeps the start
	streamOver                    // it ran and ended, cleanly or not
)

// startWatchers starts the steady watchers and the laggard, and waits
// until each has its first stream open, so that they see every change
// the clients make.
func (w *workload) startWatchers() {
	t := w.c.t
	t.Helper()
	w.watchCtx, w.watchCancel = context.WithCancel(context.Background())
	for n := range watchersPerCluster + 1 {
		dialer := &net.Dialer{Timeout: 2 * time.Second}
		if n == watchersPerCluster {
			dialer.Control = smallReceiveBuffer
		}
		lw := &linWatcher{
			w: w, n: n, laggard: n == watchersPerCluster,
			rng: rand.New(rand.NewPCG(w.seed, uint64(1000+n))),
			hc: &http.Client{Transport: &http.Transport{
				DisableKeepAlives:     true,
				DialContext:           dialer.DialContext,
				ResponseHeaderTimeout: clientTimeout, // a paused member accepts, but does not answer
				TLSClientConfig:       e2eClientTLS(),
			}},
			lc:     workloadHTTPClient(),
			errors: make(map[string]int), relistFailed: make(map[string]int), goneWhy: make(map[string]string),
		}
		w.watchers = append(w.watchers, lw)
		w.watchWG.Go(lw.run)
	}
	t.Cleanup(w.stopWatchers)
	eventually(t, faultMemberTimeout, "every watcher to open its first stream", func() bool {
		for _, lw := range w.watchers {
			if lw.seen.Load() == 0 {
				return false
			}
		}
		return true
	})
}

// stopWatchers ends every watcher and waits for it.
func (w *workload) stopWatchers() {
	if w.watchCancel != nil {
		w.watchCancel()
	}
	w.watchWG.Wait()
}

// watchStopped reports whether stopWatchers has been called.
func (w *workload) watchStopped() bool { return w.watchCtx.Err() != nil }

// run streams until the watchers are stopped, moving from member to
// member, and starting again from a listing when every member answers 410.
func (lw *linWatcher) run() {
	next := lw.n
	home := !lw.laggard // whether to try the home member next
	for !lw.w.watchStopped() {
		targets := lw.w.c.targets()
		target, hold, stall := targets[lw.n%len(targets)], time.Duration(0), time.Duration(0)
		switch {
		case lw.laggard:
			target = targets[next%len(targets)]
			next++
			hold = time.Duration(500+lw.rng.IntN(2500)) * time.Millisecond
			if lw.rng.IntN(2) == 0 {
				stall = time.Duration(1000+lw.rng.IntN(2000)) * time.Millisecond
				hold += stall
			}
		case !home || lw.goneWhy[target] != "":
			target = targets[next%len(targets)]
			next++
			hold = time.Duration(1000+lw.rng.IntN(2000)) * time.Millisecond // then home again
		}
		switch lw.stream(target, hold, stall) {
		case streamGone:
			home = false
			if !slices.ContainsFunc(targets, func(u string) bool { return lw.goneWhy[u] == "" }) {
				if lw.laggard || !lw.skipAhead(targets) {
					lw.relist(target)
				}
				clear(lw.goneWhy)
				home = !lw.laggard
			}
		case streamFailed:
			home = false
			lw.pause(50 * time.Millisecond) // a client's pause before trying again
		case streamOver:
			clear(lw.goneWhy) // pos may have moved
			home = !lw.laggard
			if lw.laggard {
				lw.pause(time.Duration(200+lw.rng.IntN(2800)) * time.Millisecond) // away for a while
			}
		}
	}
}

// smallReceiveBuffer gives the laggard's connections a small receive
// buffer, so that when it stops reading, the member's writes soon block
// and its history can leave the stream behind.
func smallReceiveBuffer(_, _ string, c syscall.RawConn) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
	}); cerr != nil {
		return cerr
	}
	return err
}

// pause waits d, or less if the watchers are stopped.
func (lw *linWatcher) pause(d time.Duration) {
	select {
	case <-time.After(d):
	case <-lw.w.watchCtx.Done():
	}
}

// problem notes an answer a correct member never gives.
func (lw *linWatcher) problem(format string, args ...any) {
	lw.problems = append(lw.problems, fmt.Sprintf("watcher %d: ", lw.n)+fmt.Sprintf(format, args...))
}

// stream watches from target after pos until the stream ends, or until
// hold has passed if it is not 0, taking whole entries into events; if
// stall is not 0, it stops reading for that long after the first events.
func (lw *linWatcher) stream(target string, hold, stall time.Duration) streamEnd {
	ctx, cancel := context.WithCancel(lw.w.watchCtx)
	defer cancel()
	u := target + "/watch/" + linearizablePrefix
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		lw.problem("GET %s: %v", u, err)
		return streamFailed
	}
	if lw.started {
		// Both ways of resuming, at random.
		if lw.rng.IntN(2) == 0 {
			req.Header.Set("Last-Event-ID", strconv.FormatUint(lw.pos, 10))
		} else {
			req.URL.RawQuery = "from=" + strconv.FormatUint(lw.pos, 10)
		}
	}
	resp, err := lw.hc.Do(req)
	if err != nil {
		return streamFailed
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusGone:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 500))
		lw.gone++
		lw.goneWhy[target] = cmp.Or(strings.TrimSpace(string(body)), "410")
		return streamGone
	case resp.StatusCode >= 500:
		return streamFailed // not serving yet, or stopping
	case resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream":
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		lw.problem("GET %s after %d: %d %s %q", u, lw.pos, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		return streamFailed
	}
	start, err := headerIndex(resp.Header, "X-Raft-Index", true)
	switch {
	case err != nil:
		lw.problem("GET %s: %v", u, err)
		return streamFailed
	case !lw.started:
		lw.started, lw.pos, lw.spanAfter = true, start, start
		lw.seen.Store(start)
	case start != lw.pos:
		lw.problem("GET %s after %d: X-Raft-Index %d", u, lw.pos, start)
	}
	lw.conns++
	from := fmt.Sprintf("%s, stream %d", target, lw.conns)
	trail := streamTrail{from: from, after: lw.pos, events: len(lw.events), at: lw.w.elapsed()}
	defer func() {
		trail.through, trail.taken = lw.pos, len(lw.events)-trail.events
		lw.trail = append(lw.trail, trail)
	}()
	if hold > 0 {
		time.AfterFunc(hold, cancel)
	}

	br := bufio.NewReader(resp.Body)
	var id, kind, data string
	errored := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			trail.end = api.OneLine(err)
			if errors.Is(err, io.EOF) && line == "" && id+kind+data == "" {
				lw.commit() // a member ends a stream between entries
				lw.ends++
			} else {
				trail.dropped = len(lw.pending)
				lw.pending = nil // the entry may go on: take it again
				lw.cuts++
			}
			return streamOver
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "" && id+kind+data == "": // after a keep-alive
		case line == "":
			if stall > 0 && len(lw.pending) > 0 {
				lw.pause(stall) // the laggard stops reading, in the middle of the stream
				stall = 0
			}
			if errored {
				lw.problem("%s: an event after the error event: id %q event %q data %s", from, id, kind, data)
			}
			errored = lw.take(from, id, kind, data) || errored
			id, kind, data = "", "", ""
		case strings.HasPrefix(line, ":"): // a keep-alive
		case strings.HasPrefix(line, "id: "):
			id = line[len("id: "):]
		case strings.HasPrefix(line, "event: "):
			kind = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		default:
			lw.problem("%s: a line an event stream does not have: %q", from, line)
		}
	}
}

// take handles one event; true for an error event, after which the
// stream must end.
func (lw *linWatcher) take(from, id, kind, data string) bool {
	if kind == "error" {
		var v watchErrorView
		if err := json.Unmarshal([]byte(data), &v); err != nil || v.Error == "" || id != "" {
			lw.problem("%s: error event id %q data %s: %v", from, id, data, err)
		}
		lw.commit() // the stream ends between entries
		if v.ResumeAfter < lw.pos {
			lw.problem("%s: error event says resume after %d, but %d was taken: %s", from, v.ResumeAfter, lw.pos, data)
		}
		switch {
		case strings.Contains(v.Error, "snapshot"):
			lw.errors["snapshot"]++
		case strings.Contains(v.Error, "fell behind"):
			lw.errors["behind"]++
		default:
			lw.errors[v.Error]++
		}
		return true
	}
	index, err := strconv.ParseUint(id, 10, 64)
	if kind == "" && data == "" && err == nil {
		// An id alone: a position the stream has reached, which an
		// EventSource takes as its last event ID (the server of issue 17
		// sends none: see the root package's
		// TestWatchQuietPrefixResumes).
		if len(lw.pending) > 0 && lw.pending[0].index > index {
			lw.problem("%s: position %d after an event at %d", from, index, lw.pending[0].index)
		}
		lw.commit()
		lw.pos = max(lw.pos, index)
		return false
	}
	var d keyspace.View
	if err == nil {
		err = json.Unmarshal([]byte(data), &d)
	}
	key := d.Key
	if err == nil && d.KeyBase64 != "" {
		var b []byte
		b, err = base64.StdEncoding.DecodeString(d.KeyBase64)
		key = string(b)
	}
	switch {
	case err != nil || (kind != "put" && kind != "delete"):
		lw.problem("%s: event id %q event %q data %s: %v", from, id, kind, data, err)
		return false
	case d.ModIndex != index || d.CreateIndex == 0 || d.CreateIndex > index:
		lw.problem("%s: event %s: modIndex %d createIndex %d in %s", from, id, d.ModIndex, d.CreateIndex, data)
	case (kind == "put") != (d.Value != nil || d.ValueBase64 != nil):
		lw.problem("%s: %s event with value %v, valueBase64 %v: %s", from, kind, d.Value, d.ValueBase64, data)
	}
	e := seenEvent{index: index, delete: kind == "delete", key: key, create: d.CreateIndex, mod: d.ModIndex, from: from}
	switch {
	case d.Value != nil:
		e.value = *d.Value
	case d.ValueBase64 != nil:
		b, _ := base64.StdEncoding.DecodeString(*d.ValueBase64)
		e.value = string(b)
	}
	if len(lw.pending) > 0 && lw.pending[0].index != index {
		lw.commit() // a later index: the pending entry is whole
	}
	lw.pending = append(lw.pending, e)
	if index > lw.seen.Load() {
		lw.seen.Store(index)
	}
	return false
}

// commit takes the pending entry as whole.
func (lw *linWatcher) commit() {
	if len(lw.pending) == 0 {
		return
	}
	lw.events = append(lw.events, lw.pending...)
	lw.pos = max(lw.pos, lw.pending[0].index)
	lw.pending = nil
}

// oldestRE finds, in a 410's reason, the oldest index a watch can start
// after on that member.
var oldestRE = regexp.MustCompile(`start after on this member is (\d+)`)

// skipAhead moves a steady watcher that every member answered 410 to the
// oldest index one of them still keeps, the least hole there can be, and
// reports whether it could. A client that needs the state lists instead
// (relist, as the laggard does); the checker needs only the events, and
// the fewer it loses, the more it checks. The index range skipped is a
// hole in what this watcher covers.
func (lw *linWatcher) skipAhead(targets []string) bool {
	var oldest uint64
	for _, target := range targets {
		why := lw.goneWhy[target]
		m := oldestRE.FindStringSubmatch(why)
		if m == nil {
			return false
		}
		n, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil || n <= lw.pos {
			lw.problem("410 after %d: %q", lw.pos, why)
			return false
		}
		if oldest == 0 || n < oldest {
			oldest = n
		}
	}
	if oldest == 0 {
		return false
	}
	lw.relisted = append(lw.relisted, fmt.Sprintf("skipped at %s from %d to %d: %v", lw.w.elapsed(), lw.pos, oldest, lw.goneWhy))
	lw.spans = append(lw.spans, watchSpan{lw.spanAfter, lw.pos})
	lw.spanAfter, lw.pos, lw.pending = oldest, oldest, nil
	lw.skips++
	return true
}

// relist starts the watcher again from the state now: a consistent
// listing of the prefix, checked with the other listings, and a watch
// from its X-Raft-Index. The index range between is a hole in what this
// watcher covers.
func (lw *linWatcher) relist(target string) {
	p, err := lw.w.listPage(lw.lc, target, "consistent", linearizablePrefix, "", maxListLimit, false, fmt.Sprintf("watcher %d's relisting", lw.n), 0)
	switch {
	case err != nil:
		lw.relistFailed[api.OneLine(err)]++
		lw.pause(50 * time.Millisecond) // a client's pause before trying again
		return
	case p.more:
		lw.problem("relisting through %s: more than %d keys", target, maxListLimit)
		return
	case p.index < lw.pos:
		lw.problem("relisting through %s: a consistent listing at %d, before %d which was watched", target, p.index, lw.pos)
		return
	}
	lw.relisted = append(lw.relisted, fmt.Sprintf("at %s after %d, to %d: %v", lw.w.elapsed(), lw.pos, p.index, lw.goneWhy))
	lw.spans = append(lw.spans, watchSpan{lw.spanAfter, lw.pos})
	lw.spanAfter, lw.pos, lw.pending = p.index, p.index, nil
	lw.relists++
	if p.index > lw.seen.Load() {
		lw.seen.Store(p.index)
	}
}

// listedPage is one page of a listing: what was asked, and the answer.
type listedPage struct {
	who, target, level, prefix, after string
	limit                             int
	names                             bool
	ackedBefore                       uint64 // the highest index a write was answered at before the request
	prevIndex                         uint64 // the previous page's index in the same listing; 0 for a first page
	index                             uint64
	entries                           []listedEntry
	more                              bool
	next                              string
}

// listedEntry is one key of a page, decoded.
type listedEntry struct {
	key, value  string
	hasValue    bool
	create, mod uint64
}

// String names p in messages.
func (p listedPage) String() string {
	return fmt.Sprintf("%s: GET %s/keys/%s?level=%s&limit=%d after %q (names only %t) at %d", p.who, p.target, p.prefix, p.level, p.limit, p.after, p.names, p.index)
}

// listPage asks target for one page and records it for the check; an
// error if there is no answer to check.
func (w *workload) listPage(hc *http.Client, target, level, prefix, after string, limit int, names bool, who string, prevIndex uint64) (listedPage, error) {
	q := "level=" + level + "&limit=" + strconv.Itoa(limit)
	if after != "" {
		q += "&after=" + url.QueryEscape(after)
	}
	if names {
		q += "&keys"
	}
	p := listedPage{who: who, target: target, level: level, prefix: prefix, after: after, limit: limit, names: names, prevIndex: prevIndex}
	w.mu.Lock()
	p.ackedBefore = w.answeredMax
	w.mu.Unlock()
	u := target + "/keys/" + prefix + "?" + q
	r, err := e2eTry(hc, "GET", u, "")
	switch {
	case err != nil:
		return p, err
	case r.code >= 500:
		return p, fmt.Errorf("GET %s: %d %s", u, r.code, strings.TrimSpace(r.body))
	case r.code != http.StatusOK:
		w.unexpect(fmt.Sprintf("GET %s: %d %q", u, r.code, r.body))
		return p, fmt.Errorf("GET %s: %d %s", u, r.code, strings.TrimSpace(r.body))
	}
	var v listingView
	if err := json.Unmarshal([]byte(r.body), &v); err != nil {
		w.unexpect(fmt.Sprintf("GET %s: %v in %q", u, err, r.body))
		return p, fmt.Errorf("GET %s: %w", u, err)
	}
	// A member that has applied nothing yet (one that has just joined)
	// answers a stale listing of the empty state, at index 0.
	h, err := strconv.ParseUint(r.header.Get("X-Raft-Index"), 10, 64)
	if err != nil || h != v.Index || (h == 0 && level != "stale") {
		w.unexpect(fmt.Sprintf("GET %s: X-Raft-Index %q, body index %d", u, r.header.Get("X-Raft-Index"), v.Index))
	}
	p.index, p.more, p.next = v.Index, v.More, v.Next
	if v.NextBase64 != "" {
		b, _ := base64.StdEncoding.DecodeString(v.NextBase64)
		p.next = string(b)
	}
	for _, e := range v.Entries {
		le := listedEntry{key: e.Key, create: e.CreateIndex, mod: e.ModIndex}
		if e.KeyBase64 != "" {
			b, _ := base64.StdEncoding.DecodeString(e.KeyBase64)
			le.key = string(b)
		}
		switch {
		case e.Value != nil:
			le.value, le.hasValue = *e.Value, true
		case e.ValueBase64 != nil:
			b, _ := base64.StdEncoding.DecodeString(*e.ValueBase64)
			le.value, le.hasValue = string(b), true
		}
		p.entries = append(p.entries, le)
	}
	w.mu.Lock()
	w.pages = append(w.pages, p)
	w.mu.Unlock()
	return p, nil
}

// lister pages through the workload's keys until halted: the whole
// prefix or the current epoch's, a few keys a page, at every read level,
// on members picked at random; sometimes names only.
func (w *workload) lister(index int) {
	rng := rand.New(rand.NewPCG(w.seed, uint64(index)+1))
	hc := workloadHTTPClient() // follows the default level's redirect to the leader
	defer hc.CloseIdleConnections()
	for !w.stopped() {
		targets := w.c.targets()
		target := targets[rng.IntN(len(targets))]
		level := "consistent"
		switch rng.IntN(10) {
		case 0, 1:
			level = "stale"
		case 2, 3:
			level = "default"
		}
		prefix := linearizablePrefix
		if rng.IntN(2) == 0 {
			prefix = fmt.Sprintf("%se%d/", linearizablePrefix, int(time.Since(w.start)/keyEpoch))
		}
		limit, names := 1+rng.IntN(5), rng.IntN(5) == 0
		after, prev := "", uint64(0)
		for !w.stopped() {
			p, err := w.listPage(hc, target, level, prefix, after, limit, names, "lister", prev)
			if err != nil {
				time.Sleep(50 * time.Millisecond) // a client's pause before trying again
				break
			}
			if !p.more {
				break
			}
			after, prev = p.next, p.index
		}
	}
}

// finishWatchers writes the sentinel twice, waits until every watcher has
// seen the second write, stops them, and returns the first write's index,
// through which every watcher's last span runs.
func (w *workload) finishWatchers() uint64 {
	t := w.c.t
	t.Helper()
	var sentinels [2]uint64
	for i := range sentinels {
		sentinels[i] = w.sentinel(fmt.Sprintf("end-%d", i+1))
	}
	deadline := time.Now().Add(watchCatchUp)
	for time.Now().Before(deadline) && slices.ContainsFunc(w.watchers, func(lw *linWatcher) bool { return lw.seen.Load() < sentinels[1] }) {
		time.Sleep(10 * time.Millisecond) // poll
	}
	w.stopWatchers()
	for _, lw := range w.watchers {
		through := min(lw.pos, sentinels[0])
		if through < sentinels[0] {
			lw.problem("took entries up to %d within %s, not the sentinel at %d", lw.pos, watchCatchUp, sentinels[0])
		}
		lw.spans = append(lw.spans, watchSpan{lw.spanAfter, through})
	}
	return sentinels[0]
}

// sentinel writes value to sentinelKey, retrying with the same
// Idempotency-Key until it is acknowledged, records it in the history,
// and returns its index.
func (w *workload) sentinel(value string) uint64 {
	t := w.c.t
	t.Helper()
	in := kvInput{op: "put", key: sentinelKey, value: value}
	w.mu.Lock()
	w.written[value] = true
	w.mu.Unlock()
	targets := w.c.targets()
	hc := workloadHTTPClient()
	defer hc.CloseIdleConnections()
	call := w.now()
	a := attemptKV(hc, targets[0], in, "lin-"+value)
	if a.knows != outcomeKnown && a.bad == "" {
		a, _ = resolveKV(hc, w.c.targets, targets[0], in, "lin-"+value, rand.New(rand.NewPCG(w.seed, 7)))
	}
	if a.bad != "" || a.knows != outcomeKnown || a.out.failed {
		t.Fatalf("PUT %s=%s: %s %s", sentinelKey, value, a.why, a.bad)
	}
	w.record(porcupine.Operation{ClientId: w.newClient(), Input: in, Call: call, Output: a.out, Return: w.now()})
	return a.out.index
}

// watchFindings is what checking the watchers found, by kind.
type watchFindings struct {
	gaps, repeats, foreign, disagree, twice, replay, protocol []string
}

// note adds a finding of one kind.
func note(list *[]string, format string, args ...any) {
	*list = append(*list, fmt.Sprintf(format, args...))
}

// changeLog is the changes to each key in index order: what the
// listings are checked against.
type changeLog map[string][]seenEvent

// stateAt is key's state after every change up to index: the last change
// then, and whether the key exists.
func (l changeLog) stateAt(key string, index uint64) (seenEvent, bool) {
	changes := l[key]
	i, _ := slices.BinarySearchFunc(changes, index+1, func(e seenEvent, index uint64) int {
		return cmpUint(e.index, index)
	})
	if i == 0 {
		return seenEvent{}, false
	}
	return changes[i-1], !changes[i-1].delete
}

// cmpUint compares a and b.
func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checkWatchers matches every event each watcher took with the write
// that made it, finds the gaps and repeats in each watcher's sequence,
// and returns the log of changes the events and the history make
// together, with the keys whose changes it may not know all of.
func (w *workload) checkWatchers(through uint64, s *faultSummary) (watchFindings, changeLog, map[string]bool) {
	var f watchFindings
	// What the history says: each PUT by its value; the changes an
	// acknowledged write made, at its index; the entries in which a write
	// to a key was evaluated and changed nothing; the writes of unknown
	// outcome, which may have made a change anywhere after their call.
	type write struct {
		in  kvInput
		out kvOutput
	}
	puts := make(map[string]write)
	acked := make(map[eventID]write)
	unchanged := make(map[eventID]bool)
	unknownDeletes := make(map[string]int)
	unknownPuts := make(map[string]int)
	for _, op := range w.ops {
		in, out := op.Input.(kvInput), op.Output.(kvOutput)
		if in.op == "get" {
			continue
		}
		if in.op == "put" {
			puts[in.value] = write{in, out}
		}
		switch {
		case out.unknown && in.op == "delete":
			unknownDeletes[in.key]++
		case out.unknown:
			unknownPuts[in.key]++
		case acknowledgedWrite(op):
			acked[eventID{out.index, in.key}] = write{in, out}
		default:
			unchanged[eventID{out.index, in.key}] = true
		}
	}

	union := make(map[eventID]seenEvent) // every change some watcher took
	learned := make(map[string]uint64)   // a write of unknown outcome's value -> its index
	for _, lw := range w.watchers {
		s.watchers++
		s.watchConns += lw.conns
		s.watchEnds += lw.ends
		s.watchCuts += lw.cuts
		s.watchGone += lw.gone
		s.watchRelists += lw.relists
		s.watchSkips += lw.skips
		for why, n := range lw.errors {
			if s.watchErrors == nil {
				s.watchErrors = make(map[string]int)
			}
			s.watchErrors[why] += n
		}
		f.protocol = append(f.protocol, lw.problems...)
		taken := make(map[eventID]bool)
		var last uint64
		for _, e := range lw.events {
			if e.index > through {
				continue // past the sentinel: not part of the check
			}
			s.watchEvents++
			id := eventID{e.index, e.key}
			switch {
			case taken[id]:
				note(&f.repeats, "watcher %d took %s twice", lw.n, e)
				continue
			case e.index < last:
				note(&f.repeats, "watcher %d took %s after an event at %d: out of order", lw.n, e, last)
			}
			taken[id], last = true, max(last, e.index)
			if first, ok := union[id]; ok {
				if first.delete != e.delete || first.value != e.value || first.create != e.create {
					note(&f.disagree, "watcher %d took %s, another %s", lw.n, e, first)
				}
				continue
			}
			union[id] = e
			// The write that made it.
			wr, isAcked := acked[id]
			switch {
			case !strings.HasPrefix(e.key, linearizablePrefix):
				note(&f.foreign, "watcher %d took %s, not under %s", lw.n, e, linearizablePrefix)
			case unchanged[id]:
				note(&f.foreign, "watcher %d took %s, where a write to the key was answered as changing nothing", lw.n, e)
			case isAcked && (wr.in.op == "delete") != e.delete:
				note(&f.foreign, "watcher %d took %s, but the write at that index was %s", lw.n, e, describeKV(wr.in, wr.out))
			case isAcked && !e.delete && wr.in.value != e.value:
				note(&f.foreign, "watcher %d took %s, but the PUT at that index wrote %q", lw.n, e, wr.in.value)
			case isAcked && !e.delete && wr.out.create != e.create:
				note(&f.foreign, "watcher %d took %s, but the PUT's X-Create-Index was %d", lw.n, e, wr.out.create)
			case isAcked:
			case e.delete && unknownDeletes[e.key] == 0:
				note(&f.foreign, "watcher %d took %s, which no DELETE made", lw.n, e)
			case e.delete:
				unknownDeletes[e.key]-- // each may have made one
			default:
				p, ok := puts[e.value]
				switch {
				case !ok || p.in.key != e.key:
					note(&f.foreign, "watcher %d took %s, which no PUT made", lw.n, e)
				case !p.out.unknown:
					note(&f.foreign, "watcher %d took %s, but that PUT was answered %s", lw.n, e, describeKV(p.in, p.out))
				case learned[e.value] != 0:
					note(&f.twice, "watcher %d took %s, but that PUT was applied at %d too", lw.n, e, learned[e.value])
				default:
					learned[e.value] = e.index
					unknownPuts[e.key]--
				}
			}
		}
	}

	// Gaps: each watcher owes every change in the spans it covered: what
	// any watcher took, and every acknowledged write.
	owed := make(map[eventID]seenEvent, len(union)+len(acked))
	for id, e := range union {
		owed[id] = e
	}
	for id, wr := range acked {
		if _, ok := owed[id]; !ok {
			if id.index <= through {
				s.watchUnseen++
			}
			owed[id] = seenEvent{index: id.index, key: id.key, delete: wr.in.op == "delete", value: wr.in.value, create: wr.out.create, from: "the history: " + describeKV(wr.in, wr.out)}
		}
	}
	var coverage []watchSpan
	for _, lw := range w.watchers {
		taken := make(map[eventID]bool, len(lw.events))
		for _, e := range lw.events {
			taken[eventID{e.index, e.key}] = true
		}
		for id, e := range owed {
			if id.index <= through && covers(lw.spans, id.index) && !taken[id] {
				note(&f.gaps, "watcher %d (spans %v) missed %s; its streams then: %s", lw.n, lw.spans, e, strings.Join(lw.trailAt(id.index), " | "))
			}
		}
		coverage = append(coverage, lw.spans...)
	}
	s.watchGaps += len(f.gaps)
	s.watchRepeats += len(f.repeats)
	s.watchForeign += len(f.foreign) + len(f.twice) + len(f.disagree)

	// The log of changes: complete if the watchers together covered every
	// index from the first one's start, where the workload had not begun.
	log := make(changeLog)
	for _, e := range owed {
		log[e.key] = append(log[e.key], e)
	}
	for _, changes := range log {
		slices.SortFunc(changes, func(a, b seenEvent) int { return cmpUint(a.index, b.index) })
	}
	unsure := make(map[string]bool)
	if !coversAll(coverage, through) {
		// A write of unknown outcome no watcher saw may have applied in
		// the hole: its key's state is not known after it.
		for key, n := range unknownPuts {
			if n > 0 {
				unsure[key] = true
			}
		}
		for key, n := range unknownDeletes {
			if n > 0 {
				unsure[key] = true
			}
		}
		s.watchHoles++
	}
	// Replaying each key's changes gives its creation index at each.
	for key, changes := range log {
		if unsure[key] {
			continue
		}
		exists, create := false, uint64(0)
		for _, e := range changes {
			switch {
			case e.delete && (!exists || (e.create != create && e.create != 0)): // 0: a delete no watcher took
				note(&f.replay, "%s: the key existed %t, created %d", e, exists, create)
			case !e.delete && exists && e.create != create:
				note(&f.replay, "%s: the key was created at %d", e, create)
			case !e.delete && !exists && e.create != e.index:
				note(&f.replay, "%s: the key did not exist before", e)
			}
			exists, create = !e.delete, e.create
		}
	}
	s.watchForeign += len(f.replay)
	return f, log, unsure
}

// covers reports whether index is in one of spans.
func covers(spans []watchSpan, index uint64) bool {
	return slices.ContainsFunc(spans, func(sp watchSpan) bool { return sp.after < index && index <= sp.through })
}

// coversAll reports whether spans together cover every index from the
// earliest start through through.
func coversAll(spans []watchSpan, through uint64) bool {
	if len(spans) == 0 {
		return false
	}
	spans = slices.Clone(spans)
	slices.SortFunc(spans, func(a, b watchSpan) int { return cmpUint(a.after, b.after) })
	reach := spans[0].after
	for _, sp := range spans {
		if sp.after > reach {
			return false
		}
		reach = max(reach, sp.through)
	}
	return reach >= through
}

// checkListings compares every listing page with the log's state at the
// page's X-Raft-Index, over the keys the page spans: those under its
// prefix after its after, up to its last key if more follow. A
// consistent page must also reflect every write answered before it was
// asked for, and come no earlier than the page before it.
func (w *workload) checkListings(log changeLog, unsure map[string]bool, s *faultSummary) []string {
	var bad []string
	keys := make([]string, 0, len(log))
	for key := range log {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	for _, p := range w.pages {
		s.pages++
		s.pageKeys += len(p.entries)
		var want []listedEntry
		for _, key := range keys {
			if !strings.HasPrefix(key, p.prefix) || key <= p.after || unsure[key] {
				continue
			}
			if e, ok := log.stateAt(key, p.index); ok {
				want = append(want, listedEntry{key: key, value: e.value, hasValue: true, create: e.create, mod: e.index})
			}
		}
		got := slices.DeleteFunc(slices.Clone(p.entries), func(e listedEntry) bool { return unsure[e.key] })
		var why []string
		if len(p.entries) > p.limit {
			why = append(why, fmt.Sprintf("%d entries, over the limit", len(p.entries)))
		}
		if p.more {
			last := ""
			if len(p.entries) > 0 {
				last = p.entries[len(p.entries)-1].key
			}
			if p.next != last || len(p.entries) != p.limit {
				why = append(why, fmt.Sprintf("more with next %q after %d entries ending %q", p.next, len(p.entries), last))
			}
			// Only the keys up to the last one listed are this page's.
			n := 0
			for n < len(want) && want[n].key <= last {
				n++
			}
			if n == len(want) {
				why = append(why, "more, but no key follows in the state at its index")
			}
			want = want[:n]
		}
		if p.level == "consistent" && p.index < max(p.ackedBefore, p.prevIndex) {
			why = append(why, fmt.Sprintf("a consistent listing at %d, but a write was answered at %d before it and the previous page was at %d", p.index, p.ackedBefore, p.prevIndex))
		}
		for i := range max(len(got), len(want)) {
			var g, wnt listedEntry
			if i < len(got) {
				g = got[i]
			}
			if i < len(want) {
				wnt = want[i]
			}
			if p.names {
				if g.hasValue || g.mod != 0 || g.create != 0 {
					why = append(why, fmt.Sprintf("names only, but %q has a value or indexes", g.key))
				}
				g, wnt = listedEntry{key: g.key}, listedEntry{key: wnt.key}
			}
			if g != wnt {
				why = append(why, fmt.Sprintf("entry %d is %s, the state at %d has %s", i, showEntry(g, i < len(got), p.names), p.index, showEntry(wnt, i < len(want), p.names)))
			}
		}
		if len(why) > 0 {
			s.pagesWrong++
			bad = append(bad, fmt.Sprintf("%s: %s", p, strings.Join(why, "; ")))
		}
	}
	s.pagesUnsure += len(unsure)
	return bad
}

// showEntry shows a listing entry, or "nothing"; only its key if names.
func showEntry(e listedEntry, ok, names bool) string {
	switch {
	case !ok:
		return "nothing"
	case names:
		return strconv.Quote(e.key)
	}
	return fmt.Sprintf("%s=%q mod %d created %d", e.key, e.value, e.mod, e.create)
}

// checkWatchAndListings runs both checks after finishWatchers and fails
// the test on what they find, listing a few of each kind.
func (w *workload) checkWatchAndListings(t *testing.T, seed, through uint64, s *faultSummary) {
	t.Helper()
	f, log, unsure := w.checkWatchers(through, s)
	if len(unsure) > 0 {
		t.Logf("the watchers together left a hole; %d keys with writes of unknown outcome are left out of the listing check", len(unsure))
	}
	pages := w.checkListings(log, unsure, s)
	for _, lw := range w.watchers {
		if len(lw.relistFailed) > 0 {
			t.Logf("watcher %d: relistings without an answer: %v", lw.n, lw.relistFailed)
		}
		for _, r := range lw.relisted {
			t.Logf("watcher %d relisted %s", lw.n, r)
		}

	}
	if len(f.gaps)+len(f.repeats)+len(f.foreign)+len(f.twice)+len(f.disagree)+len(f.replay)+len(f.protocol) > 0 {
		for _, lw := range w.watchers {
			for _, tr := range lw.trail {
				t.Logf("watcher %d: %s", lw.n, tr)
			}
		}
	}
	for _, kind := range []struct {
		what string
		list []string
	}{
		{"a watcher's gap", f.gaps},
		{"a watcher's repeat", f.repeats},
		{"an event no write made", f.foreign},
		{"a PUT applied twice, as events show", f.twice},
		{"watchers that disagree", f.disagree},
		{"events whose creation index the changes before do not give", f.replay},
		{"an answer no member should give to a watcher", f.protocol},
		{"a listing page that is not the state at its index", pages},
	} {
		for i, bad := range kind.list {
			if i == watchProblemsShown {
				t.Errorf("seed %d: ... and %d more of %s", seed, len(kind.list)-i, kind.what)
				break
			}
			t.Errorf("seed %d: %s: %s", seed, kind.what, bad)
		}
	}
}

// watchString is the watchers' and listings' part of the summary line.
func (s faultSummary) watchString() string {
	var errs []string
	for _, why := range slices.Sorted(func(yield func(string) bool) {
		for why := range s.watchErrors {
			if !yield(why) {
				return
			}
		}
	}) {
		errs = append(errs, fmt.Sprintf("%s %d", why, s.watchErrors[why]))
	}
	return fmt.Sprintf("%d events checked, %d gaps found, %d repeated, %d no write made (%d watchers, %d streams: %d ended, %d cut, error events [%s], %d 410s, %d relists, %d skips; %d acknowledged writes no watcher took, %d runs with a hole); %d listing pages checked (%d keys), %d wrong, %d keys unsure",
		s.watchEvents, s.watchGaps, s.watchRepeats, s.watchForeign, s.watchers, s.watchConns, s.watchEnds, s.watchCuts, strings.Join(errs, ", "), s.watchGone, s.watchRelists, s.watchSkips, s.watchUnseen, s.watchHoles, s.pages, s.pageKeys, s.pagesWrong, s.pagesUnsure)
}

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

// sseEvent is one Server-Sent Event as a client reads it.
type sseEvent struct {
	id, kind, data string
}

// watchStream is an open watch, read event by event.
type watchStream struct {
	t      *testing.T
	resp   *http.Response
	events chan sseEvent
	cancel context.CancelFunc
}

// openWatch starts GET target on a client URL, with header lines, and
// fails unless it answers 200 with an event stream.
func openWatch(t *testing.T, rawURL string, header ...string) *watchStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", rawURL, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: e2eClientTLS()}}).Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("GET %s: %d %s", rawURL, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	w := &watchStream{t: t, resp: resp, events: make(chan sseEvent, 1000), cancel: cancel}
	t.Cleanup(w.close)
	go w.read()
	return w
}

// read parses the stream into events until it ends.
func (w *watchStream) read() {
	defer close(w.events)
	sc := bufio.NewScanner(w.resp.Body)
	var e sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if e.kind != "" || e.data != "" {
				w.events <- e
			}
			e = sseEvent{}
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			e.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			e.kind = line[7:]
		case strings.HasPrefix(line, "data: "):
			e.data = line[6:]
		}
	}
}

// next returns the next event, failing after timeout; ok false when the
// stream ended.
func (w *watchStream) next(timeout time.Duration) (sseEvent, bool) {
	w.t.Helper()
	select {
	case e, ok := <-w.events:
		return e, ok
	case <-time.After(timeout):
		w.t.Fatalf("no event within %s", timeout)
		return sseEvent{}, false
	}
}

func (w *watchStream) close() {
	w.cancel()
	w.resp.Body.Close()
}

// watchWant reads the next event and checks it: kind, key, value ("" for a
// delete) and id.
func (w *watchStream) want(kind, key, value string, id uint64) {
	w.t.Helper()
	e, ok := w.next(10 * time.Second)
	if !ok {
		w.t.Fatalf("stream ended; want %s %s", kind, key)
	}
	var d keyspace.View
	if err := json.Unmarshal([]byte(e.data), &d); err != nil {
		w.t.Fatalf("event %+v: %v", e, err)
	}
	got := ""
	if d.Value != nil {
		got = *d.Value
	}
	if e.kind != kind || d.Key != key || got != value || e.id != strconv.FormatUint(id, 10) || d.ModIndex != id {
		w.t.Fatalf("event %s %s (data %s), want %s %s=%q at %d", e.kind, e.id, e.data, kind, key, value, id)
	}
}
