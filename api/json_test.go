package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestReadJSON proves a bad JSON body is refused in one line that names
// what was wrong in the client's terms, never Go's ("cannot unmarshal
// array into Go value of type main.addMemberRequest" was what a client
// got for a list).
func TestReadJSON(t *testing.T) {
	type body struct {
		ID   uint64 `json:"id"`
		Name string `json:"name"`
	}
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{`{"id": 4, "name": "a"}`, http.StatusOK, ""},
		{`[1, 2]`, http.StatusBadRequest, `bad thing JSON: want a JSON object, not an array`},
		{`"x"`, http.StatusBadRequest, `bad thing JSON: want a JSON object, not a string`},
		{`{"id": "4"}`, http.StatusBadRequest, `bad thing JSON: field "id": want a whole number, not a string`},
		{`{"id": -1}`, http.StatusBadRequest, `bad thing JSON: field "id": want a whole number, not a number -1`},
		{`{"name": 3}`, http.StatusBadRequest, `bad thing JSON: field "name": want a string, not a number`},
		{`{"id": 4, "nme": "a"}`, http.StatusBadRequest, `bad thing JSON: unknown field "nme"`},
		{`{"id": 4} {}`, http.StatusBadRequest, `bad thing JSON: data after the object`},
		{`{"id": 4`, http.StatusBadRequest, `bad thing JSON: the JSON ends too soon`},
		{`{"id": 4,}`, http.StatusBadRequest, `bad thing JSON: not JSON at byte 10`},
		{``, http.StatusBadRequest, `bad thing JSON: the body is empty: send a JSON object`},
		{`{"name": "` + strings.Repeat("x", 100) + `"}`, http.StatusRequestEntityTooLarge, `thing JSON exceeds 64 bytes`},
	} {
		rec := httptest.NewRecorder()
		var v body
		ok := ReadJSON(rec, httptest.NewRequest("POST", "/", strings.NewReader(tc.body)), 64, "thing", &v)
		got := strings.TrimSpace(rec.Body.String())
		switch {
		case tc.code == http.StatusOK && !ok:
			t.Errorf("%s: refused: %d %q", tc.body, rec.Code, got)
		case tc.code != http.StatusOK && (ok || rec.Code != tc.code || got != tc.want):
			t.Errorf("%s: %v, %d %q; want %d %q", tc.body, ok, rec.Code, got, tc.code, tc.want)
		}
		if strings.Contains(got, "Go ") || strings.Contains(got, "json:") || strings.Contains(got, "\n") {
			t.Errorf("%s: %q speaks Go, or is more than one line", tc.body, got)
		}
	}
}
