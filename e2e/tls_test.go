package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"raftkv/e2e/testpki"
)

// e2eTLSEnv, set to 1, runs the real-process harness on TLS: members of
// an e2eCluster (TestE2E, TestLinearizable, the benchmarks) get https URLs
// and every TLS flag, with client certificates required on both ports; the
// harness's clients trust the test CA and present its client certificate;
// the fault harness's peer proxies terminate TLS and dial the member
// behind with the peer certificate.
const e2eTLSEnv = "RAFTKV_TLS"

// e2ePKI is the certificates every real-process member of this test
// process uses when e2eTLSEnv is set, made once; TestMain removes them.
var e2ePKI struct {
	once   sync.Once
	dir    string
	pki    *testpki.PKI
	client *tls.Config // what the harness's clients dial with
	err    error
}

// e2eTLS returns the real-process members' certificates, or nil when
// e2eTLSEnv is not set.
func e2eTLS(t testing.TB) *testpki.PKI {
	t.Helper()
	switch os.Getenv(e2eTLSEnv) {
	case "", "0":
		return nil
	case "1":
	default:
		t.Fatalf("%s=%q: want 1 (members on TLS) or 0", e2eTLSEnv, os.Getenv(e2eTLSEnv))
	}
	return e2eCerts(t)
}

// e2eCerts returns the certificates of real-process members on TLS. The
// first call makes them and has e2eTransport, which the harness's own
// clients share, dial with them; a plain http URL ignores them.
func e2eCerts(t testing.TB) *testpki.PKI {
	t.Helper()
	e2ePKI.once.Do(func() {
		if e2ePKI.dir, e2ePKI.err = os.MkdirTemp("", "raftkv-test-pki-"); e2ePKI.err != nil {
			return
		}
		if e2ePKI.pki, e2ePKI.err = testpki.Make(e2ePKI.dir); e2ePKI.err != nil {
			return
		}
		p := e2ePKI.pki
		e2ePKI.client, e2ePKI.err = (transport.TLSInfo{CertFile: p.Client.CertFile, KeyFile: p.Client.KeyFile, TrustedCAFile: p.CAFile}).ClientConfig()
		e2eTransport.TLSClientConfig = e2ePKI.client
	})
	if e2ePKI.err != nil {
		t.Fatalf("make the TLS certificates: %v", e2ePKI.err)
	}
	return e2ePKI.pki
}

// e2eClientTLS is what a client of real-process members dials with: nil
// unless they run on TLS.
func e2eClientTLS() *tls.Config { return e2ePKI.client }

// scheme is the scheme of every URL of c's members.
func (c *e2eCluster) scheme() string {
	if c.pki != nil {
		return "https"
	}
	return "http"
}

// tlsArgs are the TLS flags of c's members; none off TLS.
func (c *e2eCluster) tlsArgs() []string {
	if c.pki == nil {
		return nil
	}
	return c.pki.MemberArgs()
}

// hostPort is a URL's host:port.
func hostPort(u string) string {
	_, hp, _ := strings.Cut(u, "://")
	return hp
}

// urlPort is a URL's port, as --port takes it.
func urlPort(u string) string { return u[strings.LastIndex(u, ":")+1:] }

// proxyTLS is what a peer proxy in front of a member on TLS needs: it
// serves TLS as the member would, requiring a peer certificate, and dials
// the member with the peer certificate, so that it can read who calls
// from the request header.
type proxyTLS struct {
	server, client *tls.Config
}

// newProxyTLS is p's proxyTLS, made by etcd's TLSInfo as the members' own
// configurations are; nil for a plain proxy.
func newProxyTLS(t testing.TB, p *testpki.PKI) *proxyTLS {
	t.Helper()
	if p == nil {
		return nil
	}
	info := transport.TLSInfo{CertFile: p.Server.CertFile, KeyFile: p.Server.KeyFile, TrustedCAFile: p.CAFile, ClientCertAuth: true}
	server, err := info.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	info.ClientCertAuth = false
	client, err := info.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return &proxyTLS{server: server, client: client}
}

// listen wraps a proxy's listener; ln itself for a plain proxy.
func (pt *proxyTLS) listen(ln net.Listener) net.Listener {
	if pt == nil {
		return ln
	}
	return tls.NewListener(ln, pt.server)
}

// dial connects a proxy to the member behind it.
func (pt *proxyTLS) dial(target string) (net.Conn, error) {
	d := &net.Dialer{Timeout: time.Second}
	if pt == nil {
		return d.Dial("tcp", target)
	}
	return tls.DialWithDialer(d, "tcp", target, pt.client)
}

// scheme is the scheme of the peer URL a proxy stands for.
func (pt *proxyTLS) scheme() string {
	if pt == nil {
		return "http"
	}
	return "https"
}

// closeWrite half-closes a proxied connection, TCP or TLS.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// e2eTLSDescription says in a log line whether members run on TLS.
func e2eTLSDescription() string {
	if e2ePKI.pki == nil {
		return "plain http"
	}
	return fmt.Sprintf("TLS for clients and peers (%s=1)", e2eTLSEnv)
}
