// Package listing is GET /keys/{prefix}/ and GET /keys/: the keys under a
// prefix, in key order, a page at a time, as JSON. The client API hands a
// GET whose path ends in '/' to Serve, with the read level it asked for,
// the way to wait for that level, and the kvstore's List.
package listing

import (
	"fmt"
	"net/http"
	"strconv"

	"raftkv/api"
	"raftkv/keyspace"
)

const (
	defaultLimit = 1000
	maxLimit     = 10000
)

// Page is the body of a listing.
type Page struct {
	Index   uint64          `json:"index"` // the applied index the listing reflects, as X-Raft-Index
	Entries []keyspace.View `json:"entries"`
	More    bool            `json:"more"` // keys follow: ask again with ?after=next
	Next    string          `json:"next,omitempty"`
	// NextBase64 is next when it is not valid UTF-8.
	NextBase64 string `json:"nextBase64,omitempty"`
}

// Serve answers a listing of the keys under prefix: a page of ?limit
// (1000 by default, at most 10000) after ?after, with names only for
// ?keys, at the read level given, once await says this member may serve
// it (await answers for it when not). list is the kvstore's: the page,
// whether more follow, and the applied index it reflects.
func Serve(w http.ResponseWriter, r *http.Request, prefix string, await func(http.ResponseWriter, *http.Request) bool,
	list func(prefix, after string, limit int) ([]keyspace.Listed, bool, uint64),
) {
	if len(prefix) > keyspace.MaxKeyBytes {
		http.Error(w, fmt.Sprintf("prefix must be at most %d bytes", keyspace.MaxKeyBytes), http.StatusBadRequest)
		return
	}
	for _, header := range []string{"If-Match", "If-None-Match"} {
		if _, ok := r.Header[header]; ok {
			http.Error(w, header+": a listing has no entity tag", http.StatusBadRequest)
			return
		}
	}
	limit := defaultLimit
	if s, ok := api.QueryValue(r.URL.RawQuery, "limit"); ok {
		var err error
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > maxLimit {
			http.Error(w, fmt.Sprintf("limit %q: must be 1 to %d", s, maxLimit), http.StatusBadRequest)
			return
		}
	}
	after, _ := api.QueryValue(r.URL.RawQuery, "after")
	namesOnly := false
	if s, ok := api.QueryValue(r.URL.RawQuery, "keys"); ok {
		if s != "" && s != "true" {
			http.Error(w, fmt.Sprintf("keys=%q: give keys alone (or keys=true) for names only", s), http.StatusBadRequest)
			return
		}
		namesOnly = true
	}
	if !await(w, r) {
		return
	}
	keys, more, index := list(prefix, after, limit)
	body := Page{Index: index, Entries: make([]keyspace.View, 0, len(keys)), More: more}
	for _, l := range keys {
		body.Entries = append(body.Entries, keyspace.ViewOf(l.Key, l.Value, namesOnly, true))
	}
	if more {
		body.Next, body.NextBase64 = keyspace.TextOrBase64(keys[len(keys)-1].Key)
	}
	api.SetRaftIndex(w, index)
	api.WriteJSON(w, http.StatusOK, body)
}
