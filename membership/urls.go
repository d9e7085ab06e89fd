package membership

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// ErrBadURL is a member URL raftkv refuses: one it could not serve, or one
// that two spellings could make look like two different members.
var ErrBadURL = errors.New("bad URL")

// maxHostBytes is the longest host name DNS allows.
const maxHostBytes = 253

// NormalizeURL checks a peer or client URL and returns its one spelling:
// scheme and host lowercased, the port without leading zeros, no trailing
// "/". URLs are compared as strings everywhere (the member table, rafthttp's
// peer list), so without this " http://h:1", "HTTP://h:1" and
// "http://h:01/" would pass for three members. http and https are
// accepted; whether this member can serve or dial an https URL depends on
// its TLS flags (package tlsconfig).
func NormalizeURL(s string) (string, error) {
	if strings.TrimSpace(s) != s {
		return "", fmt.Errorf("%w %q: surrounding white space", ErrBadURL, s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w %q: %v", ErrBadURL, s, errors.Unwrap(err))
	}
	scheme := strings.ToLower(u.Scheme)
	switch {
	case scheme != "http" && scheme != "https":
		return "", fmt.Errorf("%w %q: scheme must be http or https", ErrBadURL, s)
	case u.Opaque != "" || u.User != nil:
		return "", fmt.Errorf("%w %q: must be %s://host:port, with no user info", ErrBadURL, s, scheme)
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.ForceQuery, u.Fragment != "":
		return "", fmt.Errorf("%w %q: must have no path, query or fragment", ErrBadURL, s)
	}
	host, port := u.Hostname(), u.Port()
	if err := checkHost(host); err != nil {
		return "", fmt.Errorf("%w %q: %v", ErrBadURL, s, err)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", fmt.Errorf("%w %q: needs a port from 1 to 65535", ErrBadURL, s)
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(host), strconv.FormatUint(n, 10)), nil
}

// checkHost accepts an IP address or a DNS host name.
func checkHost(host string) error {
	switch {
	case host == "":
		return errors.New("needs a host")
	case net.ParseIP(host) != nil:
		return nil
	case len(host) > maxHostBytes:
		return fmt.Errorf("host longer than %d bytes", maxHostBytes)
	}
	for label := range strings.SplitSeq(host, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host %q is not a DNS name or an IP address", host)
		}
		for _, c := range label {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("host %q is not a DNS name or an IP address", host)
			}
		}
	}
	return nil
}

// SameURL reports whether two URLs from the member table name the same
// place. Entries written before URLs were normalised may be spelled
// differently, so both sides are normalised; one that does not parse is
// compared as it is.
func SameURL(a, b string) bool {
	if na, err := NormalizeURL(a); err == nil {
		a = na
	}
	if nb, err := NormalizeURL(b); err == nil {
		b = nb
	}
	return a == b
}
