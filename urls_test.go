package main

import (
	"errors"
	"testing"
)

// TestNormalizeURL proves each accepted spelling of a member URL, http or
// https, comes out as one string, and each refused one is an ErrBadURL.
func TestNormalizeURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:12379":  "http://127.0.0.1:12379",
		"HTTP://127.0.0.1:12379/": "http://127.0.0.1:12379",
		"http://Node-1.LAN:080":   "http://node-1.lan:80",
		"http://[::1]:12379":      "http://[::1]:12379",
		"http://[::1]:12379/":     "http://[::1]:12379",
		"HTTPS://127.0.0.1:0443/": "https://127.0.0.1:443",
	} {
		if got, err := normalizeURL(in); err != nil || got != want {
			t.Errorf("normalizeURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "http://", "http://:1", "http://h", "http://h:", "http://h:x", "http://h:65536",
		"http://h:1/p", "http://h:1?", "http://h:1#f", "http://u@h:1", "http:h:1", "https:h:1", "https://h", "https://u@h:1", "unix://h:1",
		"http://h_1:1", "http://-h:1", "http://h..i:1", "http://h:1 ", "\thttp://h:1"} {
		if got, err := normalizeURL(in); !errors.Is(err, ErrBadURL) {
			t.Errorf("normalizeURL(%q) = %q, %v; want ErrBadURL", in, got, err)
		}
	}
}
