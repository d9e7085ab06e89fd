// Package tlsconfig is TLS for the client port and the peer port: etcd's
// flags, the checks that they go with the URLs, and the listener and dialer
// settings made from them with etcd's transport package. config.Parse
// defines the flags (AddFlags) and checks them against the URLs (Check);
// startServer loads the files (CheckFiles) and warns of open ports
// (WarnUnauthenticated); the listeners and every client that dials a
// member take their TLSInfo from Listen and Dial.
package tlsconfig

import (
	"cmp"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.uber.org/zap"
)

// TLS, for the client API and for the peer port, is etcd's: the same flags
// (--cert-file, --key-file, --trusted-ca-file, --client-cert-auth, and
// their --peer- twins), each side's kept in a transport.TLSInfo, and
// everything built from it by etcd's transport package. The client port
// listens with transport.NewTLSListener, the peer port with
// transport.NewListenerWithOpts, which also checks that a peer's
// certificate names the address it connects from, as etcd's peer listener
// does. rafthttp dials peers with the peer TLSInfo (its Transport.TLSInfo),
// and so do the bootstrap checks, which ask peers over the peer port;
// --join talks to a member's client URL with the client TLSInfo.
//
// A cluster uses one scheme per port: every peer URL is http, or every
// one is https, and the same for client URLs. The flags make a URL https
// or not (see Check); POST /members holds a new member to this member's
// schemes (CheckMemberSchemes). Unlike etcd, where a trusted CA file alone
// makes a listener require client certificates, a listener here requires
// them only with --client-cert-auth or --peer-client-cert-auth: the CA
// file is also what this member verifies the servers it dials with.

// ErrTLSConfig is a combination of TLS flags and URLs raftkv refuses.
var ErrTLSConfig = errors.New("bad TLS configuration")

// ErrSchemeMismatch is a new member's URL whose scheme is not the
// cluster's.
var ErrSchemeMismatch = errors.New("scheme differs from the cluster's")

// Flags are the TLS flags, as etcd names them, parsed straight into each
// side's TLSInfo; a side without a certificate is plain http.
type Flags struct {
	Client, Peer transport.TLSInfo
}

// AddFlags defines the TLS flags on fs.
func AddFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{}
	fs.StringVar(&f.Client.CertFile, "cert-file", "", "TLS certificate for the client URL, which is then https; members that --join present it as their client certificate")
	fs.StringVar(&f.Client.KeyFile, "key-file", "", "key of --cert-file")
	fs.StringVar(&f.Client.TrustedCAFile, "trusted-ca-file", "", "CA certificate to verify the members this one joins through and, with --client-cert-auth, clients")
	fs.BoolVar(&f.Client.ClientCertAuth, "client-cert-auth", false, "require every client to present a certificate signed by --trusted-ca-file")
	fs.StringVar(&f.Peer.CertFile, "peer-cert-file", "", "TLS certificate for the peer URL, which is then https; also presented to the peers this member dials")
	fs.StringVar(&f.Peer.KeyFile, "peer-key-file", "", "key of --peer-cert-file")
	fs.StringVar(&f.Peer.TrustedCAFile, "peer-trusted-ca-file", "", "CA certificate to verify peers with")
	fs.BoolVar(&f.Peer.ClientCertAuth, "peer-client-cert-auth", false, "require every peer connection to present a certificate signed by --peer-trusted-ca-file")
	return f
}

// ClientScheme is the scheme of the default client URL: https once the
// client port has a certificate.
func (f Flags) ClientScheme() string {
	if f.Client.Empty() {
		return "http"
	}
	return "https"
}

// URLs are a member's URLs, which the TLS flags must serve: its client
// URL, its peer URL and the one it listens on for peers ("" if the same),
// the other members' peer URLs by id, and the client URL of the member it
// joins through ("" if none).
type URLs struct {
	Client, Peer, ListenPeer string
	Cluster                  map[uint64]string
	Join                     string
}

// scheme is a normalised URL's scheme.
func scheme(u string) string {
	s, _, _ := strings.Cut(u, "://")
	return s
}

// Check refuses TLS flags that do not go together, and URLs whose
// scheme the flags do not serve: an https URL without a certificate, an
// http one with a certificate that would go unused, a --cluster that
// mixes schemes, and a --join or --listen-peer-url whose scheme is not
// this member's own for that port.
func (f Flags) Check(u URLs) error {
	if err := checkTLSInfo(f.Client, ""); err != nil {
		return err
	}
	if err := checkTLSInfo(f.Peer, "peer-"); err != nil {
		return err
	}
	if err := checkURLTLS("--client-url", u.Client, f.Client, ""); err != nil {
		return err
	}
	peerScheme := scheme(u.Peer)
	for id, other := range u.Cluster {
		if scheme(other) != peerScheme {
			return fmt.Errorf("%w: --cluster mixes http and https (member %d's %s, this member's %s): every member's peer URL uses one scheme", ErrTLSConfig, id, other, u.Peer)
		}
	}
	if err := checkURLTLS("--cluster", u.Peer, f.Peer, "peer-"); err != nil {
		return err
	}
	if u.ListenPeer != "" && scheme(u.ListenPeer) != peerScheme {
		return fmt.Errorf("%w: --listen-peer-url %s is %s but this member's peer URL %s is %s: peers dial the one this member listens on", ErrTLSConfig, u.ListenPeer, scheme(u.ListenPeer), u.Peer, peerScheme)
	}
	if u.Join != "" && scheme(u.Join) != scheme(u.Client) {
		return fmt.Errorf("%w: --join %s is %s but this member's client URL %s is %s: a cluster's client URLs all use one scheme (https needs --cert-file and --key-file)", ErrTLSConfig, u.Join, scheme(u.Join), u.Client, scheme(u.Client))
	}
	return nil
}

// checkTLSInfo refuses one side's TLS flags (prefix "" for the client
// side, "peer-" for the peer side) that make no sense together.
func checkTLSInfo(info transport.TLSInfo, prefix string) error {
	switch {
	case (info.CertFile == "") != (info.KeyFile == ""):
		return fmt.Errorf("%w: --%scert-file and --%skey-file go together: give both or neither", ErrTLSConfig, prefix, prefix)
	case info.ClientCertAuth && info.TrustedCAFile == "":
		return fmt.Errorf("%w: --%sclient-cert-auth needs --%strusted-ca-file, the CA that signs the certificates it accepts", ErrTLSConfig, prefix, prefix)
	case info.Empty() && info.TrustedCAFile != "":
		return fmt.Errorf("%w: --%strusted-ca-file needs --%scert-file and --%skey-file: without them this port is plain http", ErrTLSConfig, prefix, prefix, prefix)
	}
	return nil
}

// checkURLTLS refuses an https URL without a certificate for its port, and
// an http one with a certificate that would be left unused.
func checkURLTLS(flagName, u string, info transport.TLSInfo, prefix string) error {
	switch s := scheme(u); {
	case s == "https" && info.Empty():
		return fmt.Errorf("%w: %s %s: https needs TLS: give --%scert-file and --%skey-file", ErrTLSConfig, flagName, u, prefix, prefix)
	case s == "http" && !info.Empty():
		return fmt.Errorf("%w: %s %s is plain http, but --%scert-file is given: use https", ErrTLSConfig, flagName, u, prefix)
	}
	return nil
}

// CheckMemberSchemes holds a member that POST /members would add, with
// peerURLs and clientURLs, to the schemes of the member asked, whose
// peerURL and clientURL are given: a peer on another scheme could not talk
// to the cluster's peers, and a client URL on another would redirect
// clients to a port that speaks another protocol.
func CheckMemberSchemes(peerURLs, clientURLs []string, peerURL, clientURL string) error {
	for _, u := range peerURLs {
		if scheme(u) != scheme(peerURL) {
			return fmt.Errorf("peerURL %s: %w: the cluster's peer URLs are %s (https needs --peer-cert-file and --peer-key-file on every member)", u, ErrSchemeMismatch, scheme(peerURL))
		}
	}
	for _, u := range clientURLs {
		if scheme(u) != scheme(clientURL) {
			return fmt.Errorf("clientURL %s: %w: the cluster's client URLs are %s (https needs --cert-file and --key-file on every member)", u, ErrSchemeMismatch, scheme(clientURL))
		}
	}
	return nil
}

// CheckFiles loads every certificate, key and CA file the flags name, so
// that a missing or broken one stops the member at start with one line,
// not at the first connection that needs it (the client CA, say, is read
// only when joining).
func (f Flags) CheckFiles() error {
	for _, side := range []struct {
		name string
		info transport.TLSInfo
	}{{"client", f.Client}, {"peer", f.Peer}} {
		if side.info.Empty() {
			continue
		}
		if _, err := side.info.ServerConfig(); err != nil {
			return fmt.Errorf("%s TLS: %w", side.name, err)
		}
		if _, err := side.info.ClientConfig(); err != nil {
			return fmt.Errorf("%s TLS: %w", side.name, err)
		}
	}
	return nil
}

// Listen is the TLSInfo a listener serves with: info, logging the
// connections it refuses. Without client-cert-auth the CA file is left
// out, since etcd's ServerConfig requires client certificates whenever it
// has one. nil for a plain http port.
func Listen(info transport.TLSInfo, lg *zap.Logger, port string) *transport.TLSInfo {
	if info.Empty() {
		return nil
	}
	if !info.ClientCertAuth {
		info.TrustedCAFile = ""
	}
	info.Logger = lg
	info.HandshakeFailure = logHandshakeFailure(lg, "refused a TLS connection on the "+port+" port")
	return &info
}

// Dial is the TLSInfo this member dials with: info, with its logger.
func Dial(info transport.TLSInfo, lg *zap.Logger) transport.TLSInfo {
	info.Logger = lg
	return info
}

// logHandshakeFailure logs a connection whose TLS handshake or
// certificate check failed, as etcd does: one that closed before finishing
// (a port check, say) only at debug level.
func logHandshakeFailure(lg *zap.Logger, msg string) func(*tls.Conn, error) {
	return func(conn *tls.Conn, err error) {
		log := lg.Warn
		if errors.Is(err, io.EOF) {
			log = lg.Debug
		}
		log(msg, zap.String("remote-addr", conn.RemoteAddr().String()), zap.Error(err))
	}
}

// NewDialClient is an HTTP client that dials with info, built by etcd's
// transport package: for http URLs it is a plain client, for https ones
// it verifies the server with info's CA and presents info's certificate.
func NewDialClient(info transport.TLSInfo, timeout time.Duration) (*http.Client, error) {
	tr, err := transport.NewTransport(info, timeout)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: tr, Timeout: timeout}, nil
}

// WarnUnauthenticated warns, at start, of each port on an address other
// hosts may reach that takes requests from anyone: plain http, or https
// without client certificates required. Anyone who reaches the client
// port can write and change membership through the API; anyone who
// reaches the peer port can do the same by sending raft messages.
func (f Flags) WarnUnauthenticated(u URLs, lg *zap.Logger) {
	ports := []struct {
		name, url, fix string
		certAuth       bool
	}{
		{"client", u.Client, "--cert-file, --key-file, --trusted-ca-file and --client-cert-auth", f.Client.ClientCertAuth},
		{"peer", cmp.Or(u.ListenPeer, u.Peer), "--peer-cert-file, --peer-key-file, --peer-trusted-ca-file and --peer-client-cert-auth", f.Peer.ClientCertAuth},
	}
	for _, p := range ports {
		pu, err := url.Parse(p.url)
		if err != nil || isLoopback(pu.Hostname()) {
			continue
		}
		how := "plain http"
		if pu.Scheme == "https" {
			if p.certAuth {
				continue
			}
			how = "https without client certificates"
		}
		lg.Warn(fmt.Sprintf("the %s port is on a non-loopback address with %s: anyone who can reach it can write and change membership; set %s", p.name, how, p.fix),
			zap.String(p.name+"-url", p.url))
	}
}

// isLoopback reports whether host names this machine only: a loopback IP
// address, or localhost. Any other name may resolve to an address others
// reach.
func isLoopback(host string) bool {
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	return strings.EqualFold(host, "localhost")
}
