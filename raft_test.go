package main

import "testing"

// TestTakeWaitingOneWritePerKey proves a batch of proposals never writes one
// key twice: the proposal that would is held back to start the next batch,
// so that each of a key's versions has an index of its own. Proposals that
// write no key (advertise entries) batch freely.
func TestTakeWaitingOneWritePerKey(t *testing.T) {
	proposeC := make(chan proposal, 8)
	rc := &raftNode{proposeC: proposeC}
	for i, key := range []string{"b", "", "c", "", "a", "d"} {
		proposeC <- proposal{requestID: uint64(i + 2), data: []byte("x"), key: key}
	}
	keys := make(map[string]struct{})
	batch, next, held := rc.takeWaiting([]proposal{{requestID: 1, data: []byte("x"), key: "a"}}, keys)
	var ids []uint64
	for _, p := range batch {
		ids = append(ids, p.requestID)
	}
	if len(ids) != 5 || ids[0] != 1 || ids[4] != 5 {
		t.Fatalf("batch holds request ids %v, want 1 to 5: the proposals before the second write to a", ids)
	}
	if !held || next.requestID != 6 {
		t.Fatalf("held back %+v, want request 6, the second write to a", next)
	}
	batch, next, held = rc.takeWaiting([]proposal{next}, keys)
	if len(batch) != 2 || batch[1].requestID != 7 || held {
		t.Errorf("next batch %+v (held back %+v), want requests 6 and 7", batch, next)
	}
}
