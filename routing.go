package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// What a request is refused for before its handler runs: a query
// parameter its route does not take. It is answered with a one-line
// reason, never silently ignored: a client that sent ?levle=consistent
// meant something, and serving it as if it had not is a misread it cannot
// see.

// Errors in a request's query.
var (
	ErrBadQuery          = errors.New("bad query")
	ErrUnknownParameter  = errors.New("unknown query parameter")
	ErrRepeatedParameter = errors.New("query parameter given more than once")
)

// handle registers handler for pattern, taking only the query parameters
// named in params (at most 64). Every route is
// registered this way, so a route added later declares its parameters
// where it is registered.
func (h *httpAPI) handle(pattern string, handler http.HandlerFunc, params ...string) {
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if err := checkQuery(r.URL.RawQuery, params); err != nil {
			http.Error(w, oneLine(err), http.StatusBadRequest)
			return
		}
		handler(w, r)
	})
}

// checkQuery refuses a query that does not parse, names a parameter not in
// params, or gives one twice. It parses as url.ParseQuery does (empty
// pairs between '&'s are skipped), but strictly: ParseQuery drops a pair
// it cannot decode and goes on, so "level=consistent;" would quietly be a
// read at the default level. It allocates nothing for a query without
// escapes, which is every query clients normally send.
func checkQuery(rawQuery string, params []string) error {
	var given uint64 // bit i: params[i] was given
	for rest := rawQuery; rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		if pair == "" {
			continue
		}
		if strings.Contains(pair, ";") {
			return fmt.Errorf("%w: ';' does not separate parameters, '&' does", ErrBadQuery)
		}
		rawName, rawValue, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(rawName)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadQuery, err)
		}
		if _, err := url.QueryUnescape(rawValue); err != nil {
			return fmt.Errorf("%w: %w", ErrBadQuery, err)
		}
		i := slices.Index(params, name)
		switch {
		case i < 0 && len(params) == 0:
			return fmt.Errorf("%w %q: this route takes none", ErrUnknownParameter, name)
		case i < 0:
			return fmt.Errorf("%w %q: this route takes %s", ErrUnknownParameter, name, strings.Join(params, ", "))
		case given&(1<<i) != 0:
			return fmt.Errorf("%w: %q", ErrRepeatedParameter, name)
		}
		given |= 1 << i
	}
	return nil
}

// queryValue returns the value of parameter name in a query that
// checkQuery accepted, and whether it was given. Accepted means every
// name and value decodes, so the decoding errors cannot happen here.
func queryValue(rawQuery, name string) (string, bool) {
	for rest := rawQuery; rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		rawName, rawValue, _ := strings.Cut(pair, "=")
		if n, _ := url.QueryUnescape(rawName); n == name {
			v, _ := url.QueryUnescape(rawValue)
			return v, true
		}
	}
	return "", false
}
