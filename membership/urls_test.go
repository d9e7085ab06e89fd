package membership

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
		if got, err := NormalizeURL(in); err != nil || got != want {
			t.Errorf("NormalizeURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "http://", "http://:1", "http://h", "http://h:", "http://h:x", "http://h:65536",
		"http://h:1/p", "http://h:1?", "http://h:1#f", "http://u@h:1", "http:h:1", "https:h:1", "https://h", "https://u@h:1", "unix://h:1",
		"http://h_1:1", "http://-h:1", "http://h..i:1", "http://h:1 ", "\thttp://h:1"} {
		if got, err := NormalizeURL(in); !errors.Is(err, ErrBadURL) {
			t.Errorf("NormalizeURL(%q) = %q, %v; want ErrBadURL", in, got, err)
		}
	}
}

// TestSameURL proves two spellings of one URL are the same place, two
// places are not, and a URL that does not parse is compared as it is.
func TestSameURL(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"http://127.0.0.1:1", "HTTP://127.0.0.1:01/", true},
		{"http://Host:1", "http://host:1", true},
		{"http://127.0.0.1:1", "http://127.0.0.1:2", false},
		{"http://127.0.0.1:1", "https://127.0.0.1:1", false},
		{"not a url", "not a url", true},
		{"not a url", "http://127.0.0.1:1", false},
	} {
		if got := SameURL(tc.a, tc.b); got != tc.same {
			t.Errorf("SameURL(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
}
