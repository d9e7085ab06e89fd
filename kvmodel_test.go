package main

import (
	"strings"
	"testing"

	"github.com/anishathalye/porcupine"
)

// TestKVModel proves that TestLinearizable's model catches what
// conditional writes and versions can get wrong, on hand-made histories:
// each bad one is a planted bug (a lost update, an ETag no write
// produced, a create-only PUT over an existing key...) and must be
// rejected, while its good twin must pass. Without this, a model that
// accepts everything would let TestLinearizable pass whatever the server
// does.
func TestKVModel(t *testing.T) {
	const never = 1000 // the return time of a write of unknown outcome
	put := func(value string, cond kvCond) kvInput { return kvInput{op: "put", key: "k", value: value, cond: cond} }
	del := func(cond kvCond) kvInput { return kvInput{op: "delete", key: "k", cond: cond} }
	get := kvInput{op: "get", key: "k"}
	none := kvCond{}
	ifMatch := func(tag uint64) kvCond { return kvCond{kind: precondIfMatch, tag: tag} }
	createOnly := kvCond{kind: precondCreateOnly}
	// Answers: a 201 or 204 to a PUT, a 412, a 200 to a GET, a DELETE's.
	created := func(etag uint64) kvOutput { return kvOutput{created: true, etag: etag, create: etag, index: etag} }
	replaced := func(etag, create uint64) kvOutput { return kvOutput{etag: etag, create: create, index: etag} }
	refused := func(index, etag, create uint64) kvOutput {
		return kvOutput{failed: true, etag: etag, create: create, index: index}
	}
	read := func(value string, etag, create, index uint64) kvOutput {
		return kvOutput{found: true, value: value, etag: etag, create: create, index: index}
	}
	unknown := kvOutput{unknown: true}
	op := func(client int, call, ret int64, in kvInput, out kvOutput) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Call: call, Return: ret, Input: in, Output: out}
	}
	// Every history starts with a, created at index 5.
	start := op(0, 0, 1, put("a", none), created(5))
	for _, tc := range []struct {
		name string
		ok   bool
		ops  []porcupine.Operation
	}{
		{"compare-and-set: one of two wins, the other is refused with the winner's ETag", true, []porcupine.Operation{
			op(1, 2, 5, put("b", ifMatch(5)), replaced(7, 5)),
			op(2, 3, 6, put("c", ifMatch(5)), refused(8, 7, 5)),
			op(0, 7, 8, get, read("b", 7, 5, 8)),
		}},
		{"lost update: two compare-and-sets on the same ETag both succeed", false, []porcupine.Operation{
			op(1, 2, 5, put("b", ifMatch(5)), replaced(7, 5)),
			op(2, 3, 6, put("c", ifMatch(5)), replaced(8, 5)),
		}},
		{"lost update, one of the two of unknown outcome but seen", false, []porcupine.Operation{
			op(1, 2, never, put("b", ifMatch(5)), unknown),
			op(0, 3, 4, get, read("b", 7, 5, 7)),
			op(2, 5, 6, put("c", ifMatch(5)), replaced(8, 5)),
		}},
		{"compare-and-set on a stale ETag takes effect", false, []porcupine.Operation{
			op(1, 2, 3, put("b", none), replaced(6, 5)),
			op(1, 4, never, put("c", ifMatch(5)), unknown),
			op(0, 5, 6, get, read("c", 9, 5, 9)),
		}},
		{"a 412 although the ETag matched", false, []porcupine.Operation{
			op(1, 2, 3, put("b", ifMatch(5)), refused(6, 5, 5)),
		}},
		{"a 412 showing an ETag the key never had", false, []porcupine.Operation{
			op(1, 2, 3, put("b", ifMatch(4)), refused(6, 3, 5)),
		}},
		{"a read shows the ETag of the value's write", true, []porcupine.Operation{
			op(0, 2, 3, get, read("a", 5, 5, 9)),
		}},
		{"a read shows an ETag no write produced", false, []porcupine.Operation{
			op(0, 2, 3, get, read("a", 6, 5, 9)),
		}},
		{"a read shows the wrong creation index", false, []porcupine.Operation{
			op(1, 2, 3, put("b", none), replaced(6, 5)),
			op(0, 4, 5, get, read("b", 6, 6, 6)),
		}},
		{"a read after a write of unknown outcome takes its ETag", true, []porcupine.Operation{
			op(1, 2, never, put("b", none), unknown),
			op(0, 3, 4, get, read("b", 9, 5, 9)),
			op(0, 5, 6, get, read("b", 9, 5, 9)),
		}},
		{"reads after a write of unknown outcome disagree on its ETag", false, []porcupine.Operation{
			op(1, 2, never, put("b", none), unknown),
			op(0, 3, 4, get, read("b", 9, 5, 9)),
			op(0, 5, 6, get, read("b", 10, 5, 10)),
		}},
		{"a write of unknown outcome with an ETag below an earlier one", false, []porcupine.Operation{
			op(1, 2, never, put("b", none), unknown),
			op(0, 3, 4, get, read("b", 4, 5, 9)),
		}},
		{"create-only PUT on an absent key", true, []porcupine.Operation{
			op(1, 2, 3, del(none), kvOutput{found: true, index: 6}),
			op(1, 4, 5, put("b", createOnly), created(7)),
		}},
		{"create-only PUT on an existing key is refused", true, []porcupine.Operation{
			op(1, 2, 3, put("b", createOnly), refused(6, 5, 5)),
		}},
		{"create-only PUT succeeds on an existing key", false, []porcupine.Operation{
			op(1, 2, 3, put("b", createOnly), created(6)),
		}},
		{"create-only PUT replaces an existing key", false, []porcupine.Operation{
			op(1, 2, 3, put("b", createOnly), replaced(6, 5)),
		}},
		{"a 201 for a key that existed", false, []porcupine.Operation{
			op(1, 2, 3, put("b", none), created(6)),
		}},
		{"a write's ETag below the value's before it", false, []porcupine.Operation{
			op(1, 2, 3, put("b", none), replaced(4, 5)),
		}},
		{"a conditional DELETE of an absent key is 412, not 404", true, []porcupine.Operation{
			op(1, 2, 3, del(none), kvOutput{found: true, index: 6}),
			op(1, 4, 5, del(ifMatch(5)), refused(7, 0, 0)),
		}},
		{"a conditional DELETE of an absent key answers 404", false, []porcupine.Operation{
			op(1, 2, 3, del(none), kvOutput{found: true, index: 6}),
			op(1, 4, 5, del(ifMatch(5)), kvOutput{index: 7}),
		}},
		{"a read after a DELETE sees the value", false, []porcupine.Operation{
			op(1, 2, 3, del(none), kvOutput{found: true, index: 6}),
			op(0, 4, 5, get, read("a", 5, 5, 6)),
		}},
	} {
		ops := append([]porcupine.Operation{start}, tc.ops...)
		if got := porcupine.CheckOperations(kvModel(), ops); got != tc.ok {
			var steps []string
			for _, o := range ops {
				steps = append(steps, describeKV(o.Input.(kvInput), o.Output.(kvOutput)))
			}
			t.Errorf("%s: linearizable %t, want %t: %s", tc.name, got, tc.ok, strings.Join(steps, "; "))
		}
	}
}

// TestVersionLog proves that a value seen with two ETags, a PUT applied
// twice, is reported once, and that agreeing sightings are not.
func TestVersionLog(t *testing.T) {
	var l versionLog
	l.saw("1.1", 5, "the PUT's 204")
	l.saw("1.1", 5, "a consistent read")
	l.saw("1.2", 7, "the PUT's 204")
	if len(l.twice) != 0 {
		t.Fatalf("agreeing sightings reported: %q", l.twice)
	}
	l.saw("1.1", 9, "a stale read")
	l.saw("1.1", 11, "another stale read")
	if len(l.twice) != 1 || !strings.Contains(l.twice[0], `"1.1" was ETag 5 (the PUT's 204) and ETag 9 (a stale read)`) {
		t.Fatalf("a value seen with ETags 5, 9 and 11 reported as %q, want once, naming 5 and 9", l.twice)
	}
}
