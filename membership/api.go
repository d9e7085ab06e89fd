package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"raftkv/api"
	"raftkv/idempotency"
	"raftkv/tlsconfig"
)

// maxBodyBytes bounds the body of POST /members.
const maxBodyBytes = 64 << 10

// Cluster is what the /members routes need of the raft server.
type Cluster interface {
	// Table is a copy of the applied member table.
	Table() *Table
	// Leader is the member this one believes leads, or 0.
	Leader() uint64
	// Connected reports whether this member's peer transport is connected
	// to member id now.
	Connected(id uint64) bool
	// Progress is, on the leader, how far member id's log matches the
	// leader's, by raft's Progress.Match; an error elsewhere.
	Progress(id uint64) (Progress, error)
	// WaitLinearizable returns once this member's applied state is as new
	// as the cluster's was when it was called, by one ReadIndex round: it
	// has then applied the current leader's first entry of its term. A
	// leader elected a moment ago ignores conf changes until it has
	// applied the entries its log held when it won (raft's
	// pendingConfIndex): proposed before that, a change would be dropped
	// without a word and answer 504.
	WaitLinearizable(ctx context.Context) error
	// ProposeMembershipChange proposes cc and waits until this member has
	// applied it: the answer, and whether it is a replay of an earlier
	// attempt's (an add's idempotency key recorded already).
	ProposeMembershipChange(ctx context.Context, cc *raftpb.ConfChange) (a idempotency.Answer, replayed bool, err error)
	// Recorded is the answer recorded for idempotency key k, as an entry
	// carrying k would be answered now, and whether it is a replay (not an
	// ErrKeyReused).
	Recorded(k idempotency.Key) (a idempotency.Answer, replayed, ok bool)
	// TransferLeadership makes another member lead in place of leader and
	// returns once it does and this member has applied its first entry of
	// the term, as WaitLinearizable (ErrLeaderTransfer if not in time).
	TransferLeadership(ctx context.Context, leader uint64) error
	// StoppedRemoved waits, until ctx is done at most, for this member to
	// stop, and reports whether it stopped because it was removed.
	StoppedRemoved(ctx context.Context) bool
	// RedirectToLeader answers 307 with the same request on the leader.
	RedirectToLeader(w http.ResponseWriter, r *http.Request, leader uint64)
}

// Progress is how far a member's log matches the leader's.
type Progress struct {
	Match       uint64 // the member's
	LeaderMatch uint64 // the leader's own
	IsLearner   bool
}

// ErrLeaderTransfer is a leadership transfer that did not finish in time.
var ErrLeaderTransfer = errors.New("leadership transfer did not finish")

// API is the /members routes: GET and POST /members, GET and DELETE
// /members/{id}, POST /members/{id}/promote; and GET /health, which says
// whether this member knows the members it routes requests to. A change is checked against
// the applied table and the strict reconfiguration rules before anything
// is proposed, then proposed as a raft conf change.
type API struct {
	self           uint64
	peerURL        string // this member's: a new member's scheme must match it
	clientURL      string // likewise
	cluster        Cluster
	requestTimeout time.Duration
	idemWindow     uint64 // --idempotency-window, carried in each keyed change
	errs           api.Errors
	replayed       func() // counts an answer with Idempotent-Replayed: true
}

// NewAPI serves the /members routes of member self, reached at peerURL
// and clientURL, with cluster; each request waits requestTimeout at most.
func NewAPI(self uint64, peerURL, clientURL string, cluster Cluster, requestTimeout time.Duration, idemWindow uint64, errs api.Errors, replayed func()) *API {
	return &API{self: self, peerURL: peerURL, clientURL: clientURL, cluster: cluster, requestTimeout: requestTimeout, idemWindow: idemWindow, errs: errs, replayed: replayed}
}

// View is a member as GET /members shows it.
type View struct {
	Member
	IsLeader bool `json:"isLeader"`
}

// viewOf is m as the API shows it, with leader the member that leads.
func viewOf(m Member, leader uint64) View {
	return View{Member: m.WithLists(), IsLeader: m.ID == leader}
}

// writeError answers err: a membership error with its status, the rest
// as api.Errors does.
func (a *API) writeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrMemberNotFound):
		http.Error(w, api.OneLine(err), http.StatusNotFound)
	case errors.Is(err, ErrMemberExists), errors.Is(err, ErrNotLearner),
		errors.Is(err, ErrTooFewHealthy), errors.Is(err, ErrLearnerNotReady):
		http.Error(w, api.OneLine(err), http.StatusConflict)
	case errors.Is(err, ErrLeaderTransfer):
		w.Header().Set("Retry-After", "1")
		http.Error(w, api.OneLine(err), http.StatusServiceUnavailable)
	default:
		a.errs.Write(w, err)
	}
}

// List handles GET /members.
func (a *API) List(w http.ResponseWriter, r *http.Request) {
	leader := a.cluster.Leader()
	views := []View{}
	for _, m := range a.cluster.Table().List() {
		views = append(views, viewOf(m, leader))
	}
	api.WriteJSON(w, http.StatusOK, views)
}

// Get handles GET /members/{id}, the Location a 201 to POST /members
// names: the member as GET /members lists it.
func (a *API) Get(w http.ResponseWriter, r *http.Request) {
	m, ok := a.memberFrom(w, r)
	if !ok {
		return
	}
	api.WriteJSON(w, http.StatusOK, viewOf(m, a.cluster.Leader()))
}

// memberFrom returns the member the {id} in the request path names, or
// answers 400 for an id that is not a number from 1 up, and 404 for one
// that is not a member.
func (a *API) memberFrom(w http.ResponseWriter, r *http.Request) (Member, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		http.Error(w, fmt.Sprintf("bad member id %q", r.PathValue("id")), http.StatusBadRequest)
		return Member{}, false
	}
	m, ok := a.cluster.Table().Lookup(id)
	if !ok {
		http.Error(w, fmt.Sprintf("member %d: %s", id, ErrMemberNotFound), http.StatusNotFound)
		return Member{}, false
	}
	return m, true
}

// AddRequest is the body of POST /members.
type AddRequest struct {
	ID        uint64 `json:"id"`
	PeerURL   string `json:"peerURL"`
	ClientURL string `json:"clientURL"`
	// Learner adds a member that does not vote until it is promoted.
	// Left out when false, so that the Idempotency-Key fingerprint of a
	// request without it is what it always was.
	Learner bool `json:"learner,omitempty"`
}

// Add handles POST /members: 201 once the new voter or learner is
// committed and in the member table here, 409 if it clashes with a member
// or, for a voter, would cost the cluster its quorum (CheckAddVoter). The
// new member must then be started with --join.
func (a *API) Add(w http.ResponseWriter, r *http.Request) {
	var req AddRequest
	if !api.ReadJSON(w, r, maxBodyBytes, "member", &req) {
		return
	}
	m, err := req.Validate()
	if err == nil {
		err = tlsconfig.CheckMemberSchemes(m.PeerURLs, m.ClientURLs, a.peerURL, a.clientURL)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// The fingerprint's parts are a PUT's (method, target, body, and its
	// If-Match and If-None-Match, which a POST /members cannot carry).
	body, _ := json.Marshal(req) // numbers and strings: cannot fail
	idem, err := idempotency.KeyOf(r.Header, a.idemWindow, []byte("POST"), []byte("/members"), body, nil, nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.requestTimeout)
	defer cancel()
	if idem.Name != "" {
		// A retry of an add that applied would fail the checks below
		// (the member exists now): look for its record first, after one
		// ReadIndex round, so that every earlier attempt is applied here.
		if err := a.cluster.WaitLinearizable(ctx); err != nil {
			a.writeError(w, err)
			return
		}
		if answer, replayed, ok := a.cluster.Recorded(idem); ok {
			a.answerAdded(w, m, answer, replayed, answer.Err)
			return
		}
	}
	table := a.cluster.Table()
	if err := checkNew(table, m); err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	if err := a.mayChange(); err != nil {
		a.writeError(w, err)
		return
	}
	if !m.IsLearner {
		if err := CheckAddVoter(table.Voters(), m.ID, a.healthy); err != nil {
			a.writeError(w, err)
			return
		}
	}
	if err := a.cluster.WaitLinearizable(ctx); err != nil {
		a.writeError(w, err)
		return
	}
	answer, replayed, err := a.cluster.ProposeMembershipChange(ctx, AddChange(m, idem))
	a.answerAdded(w, m, answer, replayed, err)
}

// answerAdded answers POST /members: 201 with the member, or err's
// status.
func (a *API) answerAdded(w http.ResponseWriter, m Member, answer idempotency.Answer, replayed bool, err error) {
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
		a.replayed()
	}
	if err != nil {
		a.writeError(w, err)
		return
	}
	api.SetRaftIndex(w, answer.Index)
	w.Header().Set("Location", fmt.Sprintf("/members/%d", m.ID))
	api.WriteJSON(w, http.StatusCreated, m.WithLists())
}

// Validate checks a POST /members body and returns the member it names.
func (req AddRequest) Validate() (Member, error) {
	if req.ID < 1 || req.ID > MaxMemberID {
		return Member{}, fmt.Errorf("id must be between 1 and %d", MaxMemberID)
	}
	peerURL, err := NormalizeURL(req.PeerURL)
	if err != nil {
		return Member{}, fmt.Errorf("peerURL: %w", err)
	}
	m := Member{ID: req.ID, PeerURLs: []string{peerURL}, IsLearner: req.Learner}
	if req.ClientURL != "" {
		clientURL, err := NormalizeURL(req.ClientURL)
		if err != nil {
			return Member{}, fmt.Errorf("clientURL: %w", err)
		}
		if clientURL == peerURL {
			return Member{}, fmt.Errorf("clientURL and peerURL are both %s", peerURL)
		}
		m.ClientURLs = []string{clientURL}
	}
	return m, nil
}

// checkNew refuses, before anything is proposed, an id or a URL the
// cluster already uses, and ids of removed members: their old process may
// still be running, and peers turn their messages away.
func checkNew(t *Table, m Member) error {
	if _, ok := t.Lookup(m.ID); ok {
		return fmt.Errorf("member %d: %w", m.ID, ErrMemberExists)
	}
	if t.IsRemoved(m.ID) {
		return fmt.Errorf("member %d was removed; member ids cannot be reused", m.ID)
	}
	for _, other := range t.List() {
		for _, u := range slices.Concat(other.PeerURLs, other.ClientURLs) {
			for _, mine := range slices.Concat(m.PeerURLs, m.ClientURLs) {
				if SameURL(u, mine) {
					return fmt.Errorf("URL %s is used by member %d", mine, other.ID)
				}
			}
		}
	}
	return nil
}

// mayChange refuses any change while no leader is known: then no change
// can commit, as no write can, and a member cut off from the rest would
// take every other member for down.
func (a *API) mayChange() error {
	if a.cluster.Leader() == 0 {
		return api.ErrNoLeader
	}
	return nil
}

// healthy reports whether this member counts member id as healthy: itself,
// and every member it is connected to.
func (a *API) healthy(id uint64) bool { return id == a.self || a.cluster.Connected(id) }

// Remove handles DELETE /members/{id}: 204 once applied here, 409 if it
// would cost the cluster its quorum (CheckRemoveVoter). The leader first
// hands leadership over (Cluster.TransferLeadership). The removed member
// stops itself when it learns of it.
func (a *API) Remove(w http.ResponseWriter, r *http.Request) {
	m, ok := a.memberFrom(w, r)
	if !ok {
		return
	}
	table := a.cluster.Table()
	if !m.IsLearner && len(table.Voters()) == 1 {
		http.Error(w, "cannot remove the only voter", http.StatusConflict)
		return
	}
	if err := a.mayChange(); err != nil {
		a.writeError(w, err)
		return
	}
	if !m.IsLearner {
		if err := CheckRemoveVoter(table.Voters(), m.ID, a.healthy); err != nil {
			a.writeError(w, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.requestTimeout)
	defer cancel()
	if m.ID == a.cluster.Leader() {
		// A leader that applies its own removal steps down and stops, and
		// the others hear nothing until an election timeout has passed: it
		// hands leadership over first, so that no write waits for that.
		if err := a.cluster.TransferLeadership(ctx, m.ID); err != nil {
			a.writeError(w, err)
			return
		}
	} else if err := a.cluster.WaitLinearizable(ctx); err != nil {
		a.writeError(w, err)
		return
	}
	answer, _, err := a.cluster.ProposeMembershipChange(ctx, RemoveChange(m.ID))
	if errors.Is(err, api.ErrStopped) && m.ID == a.self && a.cluster.StoppedRemoved(ctx) {
		// A member removing itself may hear of it from a peer that applied
		// the removal, and stop, before it has applied the entry itself:
		// the removal is done, at an index this member never learnt.
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err != nil {
		a.writeError(w, err)
		return
	}
	api.SetRaftIndex(w, answer.Index)
	w.WriteHeader(http.StatusNoContent)
}

// Promote handles POST /members/{id}/promote: 200 with the member, a
// voter now, once that is applied here; 409 if it is no learner, while it
// lags behind the leader, or if the voters it would make could not keep a
// quorum (CheckPromote). A follower redirects to the leader, which alone
// can tell how far the learner has got.
func (a *API) Promote(w http.ResponseWriter, r *http.Request) {
	m, ok := a.memberFrom(w, r)
	if !ok {
		return
	}
	if b, _ := io.ReadAll(io.LimitReader(r.Body, 1)); len(b) > 0 {
		http.Error(w, "POST /members/{id}/promote takes no body", http.StatusBadRequest)
		return
	}
	if !m.IsLearner {
		http.Error(w, fmt.Sprintf("member %d is %s: it votes already", m.ID, ErrNotLearner), http.StatusConflict)
		return
	}
	leader := a.cluster.Leader()
	if leader == 0 {
		a.writeError(w, api.ErrNoLeader)
		return
	}
	if leader != a.self {
		a.cluster.RedirectToLeader(w, r, leader)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.requestTimeout)
	defer cancel()
	// A leader elected a moment ago knows nobody's progress yet, and drops
	// conf changes (see Cluster.WaitLinearizable).
	if err := a.cluster.WaitLinearizable(ctx); err != nil {
		a.writeError(w, err)
		return
	}
	if err := a.learnerReady(m.ID); err != nil {
		a.writeError(w, err)
		return
	}
	if err := CheckPromote(a.cluster.Table().Voters(), m.ID, a.healthy); err != nil {
		a.writeError(w, err)
		return
	}
	answer, _, err := a.cluster.ProposeMembershipChange(ctx, PromoteChange(m.ID))
	if err != nil {
		a.writeError(w, err)
		return
	}
	promoted, _ := a.cluster.Table().Lookup(m.ID)
	api.SetRaftIndex(w, answer.Index)
	api.WriteJSON(w, http.StatusOK, viewOf(promoted, a.cluster.Leader()))
}

// learnerReady reports, on the leader, whether learner id has caught up
// enough to be promoted: its log matches the leader's by CheckLearnerLag,
// and the leader is connected to it.
func (a *API) learnerReady(id uint64) error {
	p, err := a.cluster.Progress(id)
	if err != nil {
		return err
	}
	if !p.IsLearner {
		return fmt.Errorf("member %d is %w: it votes already", id, ErrNotLearner)
	}
	if err := CheckLearnerLag(id, p.Match, p.LeaderMatch); err != nil {
		return err
	}
	// A learner that stopped while the cluster was idle still matches the
	// leader's log; it is not catching up all the same.
	if !a.cluster.Connected(id) {
		return fmt.Errorf("%w: the leader, member %d, is not connected to member %d", ErrLearnerNotReady, a.self, id)
	}
	return nil
}

// Health handles GET /health: 200 ok once this member can route every
// request, else 503 with Retry-After and why not. It says nothing of how
// far this member has applied the log (a stale read may lag): it says that
// a leader is known, and that both this member's and the leader's client
// URLs are in the member table. Knowing a leader is not enough: a follower
// answers a default read with a redirect to the leader's client URL, which
// it knows only once the leader has advertised it through the log
// (join.Advertise); and should this member lead, the others can redirect
// to it only once it has advertised its own. Right after a cluster starts,
// a leader is known a moment before either URL is applied.
//
// A voter that stops hearing from its leader campaigns after an election
// timeout, and so forgets the leader. A learner never campaigns: raft lets
// it name a leader it lost long ago, so for a learner only the peer
// transport can tell that the leader is still there.
func (a *API) Health(w http.ResponseWriter, r *http.Request) {
	leaderID := a.cluster.Leader()
	table := a.cluster.Table()
	self, _ := table.Lookup(a.self)
	leader, _ := table.Lookup(leaderID)
	var notReady string
	switch {
	case leaderID == 0:
		notReady = api.ErrNoLeader.Error()
	case self.IsLearner && !a.cluster.Connected(leaderID):
		notReady = fmt.Sprintf("this member (%d) is a learner and cannot reach the leader, member %d", a.self, leaderID)
	case len(leader.ClientURLs) == 0:
		notReady = fmt.Sprintf("leader %d has not advertised its client URL yet", leaderID)
	case len(self.ClientURLs) != 1 || self.ClientURLs[0] != a.clientURL:
		notReady = fmt.Sprintf("this member (%d) has not advertised its client URL yet", a.self)
	}
	if notReady != "" {
		w.Header().Set("Retry-After", "1")
		http.Error(w, notReady, http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

// AddChange is the conf change that adds m, as a learner if m.IsLearner
// and as a voter otherwise, carrying the POST's idempotency key, if any.
// The proposer gives it its request id.
func AddChange(m Member, idem idempotency.Key) *raftpb.ConfChange {
	c := AddContext{Member: m}
	if idem.Name != "" {
		c.Idempotency = &idem
	}
	memberCtx, _ := json.Marshal(c) // numbers, strings and bools: cannot fail
	typ := raftpb.ConfChangeAddNode
	if m.IsLearner {
		typ = raftpb.ConfChangeAddLearnerNode
	}
	return &raftpb.ConfChange{Type: typ.Enum(), NodeId: new(m.ID), Context: memberCtx}
}

// PromoteChange is the conf change that makes learner id a voter. Whether
// the learner has caught up is for the caller to check first: raft
// promotes whatever it is told to.
func PromoteChange(id uint64) *raftpb.ConfChange {
	memberCtx, _ := json.Marshal(AddContext{Member: Member{ID: id}, Promote: true})
	return &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(id), Context: memberCtx}
}

// RemoveChange is the conf change that removes member id.
func RemoveChange(id uint64) *raftpb.ConfChange {
	return &raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode.Enum(), NodeId: new(id)}
}
