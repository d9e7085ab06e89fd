package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// ReadJSON decodes a request body of at most max bytes into v, refusing
// unknown fields and anything after the value, or answers why not in one
// line that names what was wrong in the client's terms (a field and what
// it should be, or where the JSON breaks), never Go's: 413 for a body too
// large, 400 for the rest.
func ReadJSON(w http.ResponseWriter, r *http.Request, max int64, what string, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, max))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, err2 := dec.Token(); !errors.Is(err2, io.EOF) {
			err = errors.New("data after the object")
		}
	}
	if err == nil {
		return true
	}
	var tooLarge *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooLarge):
		http.Error(w, fmt.Sprintf("%s JSON exceeds %d bytes", what, max), http.StatusRequestEntityTooLarge)
		return false
	case errors.Is(err, io.EOF):
		err = fmt.Errorf("the body is empty: send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		err = fmt.Errorf("the JSON ends too soon")
	case errors.As(err, &syntax):
		err = fmt.Errorf("not JSON at byte %d", syntax.Offset)
	case errors.As(err, &typ) && typ.Field == "":
		err = fmt.Errorf("want a JSON object, not %s", article(typ.Value))
	case errors.As(err, &typ):
		err = fmt.Errorf("field %q: want %s, not %s", typ.Field, kind(typ.Type.Kind().String()), article(typ.Value))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		err = fmt.Errorf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	http.Error(w, fmt.Sprintf("bad %s JSON: %s", what, OneLine(err)), http.StatusBadRequest)
	return false
}

// kind names a Go kind as JSON knows it.
func kind(k string) string {
	switch {
	case strings.HasPrefix(k, "int"), strings.HasPrefix(k, "uint"):
		return "a whole number"
	case strings.HasPrefix(k, "float"):
		return "a number"
	case k == "string":
		return "a string"
	case k == "bool":
		return "true or false"
	case k == "slice", k == "array":
		return "a list"
	}
	return "an object"
}

// article names a JSON value's kind, as json.UnmarshalTypeError.Value
// gives it ("array", "number 1.5", "string").
func article(v string) string {
	switch {
	case strings.HasPrefix(v, "array"), strings.HasPrefix(v, "object"):
		return "an " + v
	case v == "":
		return "that"
	}
	return "a " + v
}
