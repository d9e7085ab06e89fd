// Package status is what a member says of itself and of raft: GET /status,
// its raft state as this member sees it. The client API serves it with the
// running member as its Raft.
package status

import (
	"net/http"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/raft/v3"

	"raftkv/api"
)

// Raft is what the status needs of the running member.
type Raft interface {
	// Status is raft's own view of this member.
	Status() raft.Status
	// AppliedIndex is the last index this member's state machine applied.
	AppliedIndex() uint64
	// SnapshotIndex is the index of its newest snapshot on disk.
	SnapshotIndex() uint64
}

// View is the body of GET /status.
type View struct {
	ID        uint64 `json:"id"`
	ClusterID string `json:"clusterID"` // hex, as etcd prints it
	Leader    uint64 `json:"leader"`
	Term      uint64 `json:"term"`
	RaftState string `json:"raftState"` // raft's: StateLeader, StateFollower, StateCandidate, StatePreCandidate
	// IsLearner is a member that gets the log but does not vote: raft
	// calls it a follower.
	IsLearner     bool   `json:"isLearner"`
	CommitIndex   uint64 `json:"commitIndex"`
	AppliedIndex  uint64 `json:"appliedIndex"`
	SnapshotIndex uint64 `json:"snapshotIndex"`
}

// Handler serves GET /status for member id of cluster clusterID.
type Handler struct {
	id, clusterID uint64
	raft          Raft
}

// New returns the status of member id of cluster clusterID, read from r.
func New(id, clusterID uint64, r Raft) *Handler {
	return &Handler{id: id, clusterID: clusterID, raft: r}
}

// Of is this member's view now.
func (h *Handler) Of() View {
	st := h.raft.Status()
	return View{
		ID:            h.id,
		ClusterID:     types.ID(h.clusterID).String(),
		Leader:        st.Lead,
		Term:          st.GetTerm(),
		RaftState:     st.RaftState.String(),
		IsLearner:     isLearner(st, h.id),
		CommitIndex:   st.GetCommit(),
		AppliedIndex:  h.raft.AppliedIndex(),
		SnapshotIndex: h.raft.SnapshotIndex(),
	}
}

// isLearner reports whether raft's configuration has member id as a
// learner.
func isLearner(st raft.Status, id uint64) bool {
	_, learner := st.Config.Learners[id]
	return learner
}

// ServeHTTP handles GET /status.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	api.WriteJSON(w, http.StatusOK, h.Of())
}
