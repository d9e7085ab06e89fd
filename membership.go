package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
)

// memberView is a member as GET /members shows it.
type memberView struct {
	member
	IsLeader bool `json:"isLeader"`
}

// viewOf is m as the API shows it, with leader the member that leads.
func viewOf(m member, leader uint64) memberView {
	return memberView{member: withLists(m), IsLeader: m.ID == leader}
}

// listMembers handles GET /members.
func (h *httpAPI) listMembers(w http.ResponseWriter, r *http.Request) {
	leader := h.raft.leaderID()
	views := []memberView{}
	for _, m := range h.store.memberList() {
		views = append(views, viewOf(m, leader))
	}
	writeJSON(w, http.StatusOK, views)
}

// addMemberRequest is the body of POST /members.
type addMemberRequest struct {
	ID        uint64 `json:"id"`
	PeerURL   string `json:"peerURL"`
	ClientURL string `json:"clientURL"`
	// Learner adds a member that does not vote until it is promoted
	// (learner.go). Left out when false, so that the Idempotency-Key
	// fingerprint of a request without it is what it always was.
	Learner bool `json:"learner,omitempty"`
}

// addMember handles POST /members: 201 once the new voter or learner is
// committed and in the member table here, 409 if it clashes with a member
// or, for a voter, would cost the cluster its quorum (mayAddMember). The
// new member must then be started with --join.
func (h *httpAPI) addMember(w http.ResponseWriter, r *http.Request) {
	var req addMemberRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxMemberBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			http.Error(w, fmt.Sprintf("member JSON exceeds %d bytes", maxMemberBodyBytes), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "bad member JSON: "+oneLine(err), http.StatusBadRequest)
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		http.Error(w, "bad member JSON: data after the object", http.StatusBadRequest)
		return
	}
	m, err := req.validate()
	if err == nil {
		err = checkMemberSchemes(m, h.raft.cfg.peerURL(), h.clientURL)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	body, _ := json.Marshal(req) // numbers and strings: cannot fail
	idem, ok := h.idempotencyFrom(w, r, "POST", "/members", body, precondition{})
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	if idem.key != "" {
		// A retry of an add that applied would fail the checks below
		// (the member exists now): look for its record first, after one
		// ReadIndex round, so that every earlier attempt is applied here.
		if err := h.afterLeaderSettled(ctx); err != nil {
			h.writeError(w, err)
			return
		}
		if o, ok := h.store.recorded(idem); ok {
			h.answerMemberAdded(w, m, o, o.err)
			return
		}
	}
	if err := h.checkNewMember(m); err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	if err := h.mayAddMember(m); err != nil {
		h.refuseChange(w, err)
		return
	}
	if err := h.afterLeaderSettled(ctx); err != nil {
		h.writeError(w, err)
		return
	}
	o, err := h.store.addMember(ctx, m, idem)
	h.answerMemberAdded(w, m, o, err)
}

// answerMemberAdded answers POST /members: 201 with the member, or err's
// status.
func (h *httpAPI) answerMemberAdded(w http.ResponseWriter, m member, o outcome, err error) {
	if o.replayed {
		w.Header().Set("Idempotent-Replayed", "true")
		h.metrics.replayAnswered()
	}
	if err != nil {
		h.writeError(w, err)
		return
	}
	setRaftIndex(w, o.index)
	w.Header().Set("Location", fmt.Sprintf("/members/%d", m.ID))
	writeJSON(w, http.StatusCreated, withLists(m))
}

// validate checks a POST /members body and returns the member it names.
func (req addMemberRequest) validate() (member, error) {
	if req.ID < 1 || req.ID > maxMemberID {
		return member{}, fmt.Errorf("id must be between 1 and %d", maxMemberID)
	}
	peerURL, err := normalizeURL(req.PeerURL)
	if err != nil {
		return member{}, fmt.Errorf("peerURL: %w", err)
	}
	m := member{ID: req.ID, PeerURLs: []string{peerURL}, IsLearner: req.Learner}
	if req.ClientURL != "" {
		clientURL, err := normalizeURL(req.ClientURL)
		if err != nil {
			return member{}, fmt.Errorf("clientURL: %w", err)
		}
		if clientURL == peerURL {
			return member{}, fmt.Errorf("clientURL and peerURL are both %s", peerURL)
		}
		m.ClientURLs = []string{clientURL}
	}
	return m, nil
}

// checkNewMember refuses, before anything is proposed, an id or a URL the
// cluster already uses, and ids of removed members: their old process may
// still be running, and peers turn their messages away.
func (h *httpAPI) checkNewMember(m member) error {
	if _, ok := h.store.lookupMember(m.ID); ok {
		return fmt.Errorf("member %d: %w", m.ID, ErrMemberExists)
	}
	if h.store.isIDRemoved(m.ID) {
		return fmt.Errorf("member %d was removed; member ids cannot be reused", m.ID)
	}
	for _, other := range h.store.memberList() {
		for _, u := range slices.Concat(other.PeerURLs, other.ClientURLs) {
			for _, mine := range slices.Concat(m.PeerURLs, m.ClientURLs) {
				if sameURL(u, mine) {
					return fmt.Errorf("URL %s is used by member %d", mine, other.ID)
				}
			}
		}
	}
	return nil
}

// getMember handles GET /members/{id}, the Location a 201 to POST /members
// names: the member as GET /members lists it.
func (h *httpAPI) getMember(w http.ResponseWriter, r *http.Request) {
	m, ok := h.memberFrom(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, viewOf(m, h.raft.leaderID()))
}

// memberFrom returns the member the {id} in the request path names, or
// answers 400 for an id that is not a number from 1 up, and 404 for one
// that is not a member.
func (h *httpAPI) memberFrom(w http.ResponseWriter, r *http.Request) (member, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		http.Error(w, fmt.Sprintf("bad member id %q", r.PathValue("id")), http.StatusBadRequest)
		return member{}, false
	}
	m, ok := h.store.lookupMember(id)
	if !ok {
		http.Error(w, fmt.Sprintf("member %d: %s", id, ErrMemberNotFound), http.StatusNotFound)
		return member{}, false
	}
	return m, true
}

// removeMember handles DELETE /members/{id}: 204 once applied here, 409
// if it would cost the cluster its quorum (mayRemoveMember). The leader
// first hands leadership over (handOffLeadership). The removed member
// stops itself when it learns of it.
func (h *httpAPI) removeMember(w http.ResponseWriter, r *http.Request) {
	m, ok := h.memberFrom(w, r)
	if !ok {
		return
	}
	if !m.IsLearner && len(h.store.voters()) == 1 {
		http.Error(w, "cannot remove the only voter", http.StatusConflict)
		return
	}
	if err := h.mayRemoveMember(m.ID); err != nil {
		h.refuseChange(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	if m.ID == h.raft.leaderID() {
		if err := h.handOffLeadership(ctx, m.ID); err != nil {
			h.refuseChange(w, err)
			return
		}
	} else if err := h.afterLeaderSettled(ctx); err != nil {
		h.writeError(w, err)
		return
	}
	o, err := h.store.removeMember(ctx, m.ID)
	if errors.Is(err, ErrStopped) && m.ID == h.id && h.raft.stoppedRemoved(ctx) {
		// A member removing itself may hear of it from a peer that applied
		// the removal, and stop, before it has applied the entry itself:
		// the removal is done, at an index this member never learnt.
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err != nil {
		h.writeError(w, err)
		return
	}
	setRaftIndex(w, o.index)
	w.WriteHeader(http.StatusNoContent)
}

// afterLeaderSettled returns once this member has applied the current
// leader's first entry of its term, by one ReadIndex round. A leader
// elected a moment ago ignores conf changes until it has applied the
// entries its log held when it won (see handoff.go): proposed before that,
// an add or a removal would be dropped without a word and answer 504.
func (h *httpAPI) afterLeaderSettled(ctx context.Context) error {
	return h.reads.wait(ctx)
}
