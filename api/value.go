package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"raftkv/limits"
)

// ReadValue reads the body of a request that carries a value, up to max
// bytes, or answers why not: 413 for a larger one, 408 for one that does
// not arrive in time (limits.ErrBodyTimeout; RFC 9110 §15.5.9, and the
// connection is closed), 400 or 415 for one that is not a whole value as
// sent (checkValueHeaders), 400 for one cut short.
func ReadValue(w http.ResponseWriter, r *http.Request, max int64) ([]byte, bool) {
	if !checkValueHeaders(w, r) {
		return nil, false
	}
	tooLarge := func() { http.Error(w, fmt.Sprintf("value exceeds %d bytes", max), http.StatusRequestEntityTooLarge) }
	if r.ContentLength > max {
		tooLarge()
		return nil, false
	}
	value, err := readValue(http.MaxBytesReader(w, r.Body, max), r.ContentLength)
	switch {
	case err == nil:
		return value, true
	case errors.As(err, new(*http.MaxBytesError)):
		tooLarge()
	case errors.Is(err, limits.ErrBodyTimeout):
		w.Header().Set("Connection", "close")
		http.Error(w, OneLine(err), http.StatusRequestTimeout)
	default:
		http.Error(w, "reading value: "+OneLine(err), http.StatusBadRequest)
	}
	return nil, false
}

// checkValueHeaders refuses a body that is not the whole value as
// sent, or answers true. A Content-Range means a part of it (RFC 9110 §14.4
// requires a 400); a Content-Encoding means bytes the client expects
// decoded, while raftkv stores and serves the body as it came (RFC 9110
// §15.5.16: 415, with the codings accepted).
func checkValueHeaders(w http.ResponseWriter, r *http.Request) bool {
	if _, ok := r.Header["Content-Range"]; ok {
		http.Error(w, "Content-Range: a PUT replaces the whole value; partial writes are not supported", http.StatusBadRequest)
		return false
	}
	if coding := r.Header.Get("Content-Encoding"); coding != "" && !strings.EqualFold(coding, "identity") {
		w.Header().Set("Accept-Encoding", "identity")
		http.Error(w, fmt.Sprintf("Content-Encoding %q: values are stored as sent; send them unencoded", coding), http.StatusUnsupportedMediaType)
		return false
	}
	return true
}

// readValue reads a PUT's body. A body whose length the request gave is
// read into a buffer of that size at once; io.ReadAll would grow one from
// 512 bytes, copying a large value many times.
func readValue(body io.Reader, contentLength int64) ([]byte, error) {
	if contentLength < 0 {
		return io.ReadAll(body)
	}
	value := make([]byte, contentLength)
	if _, err := io.ReadFull(body, value); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the body ended before its Content-Length
		}
		return nil, err
	}
	return value, nil
}
