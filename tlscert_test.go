package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// testPKI is a throwaway certificate authority and the certificates TLS
// tests need, as PEM files in one directory: made in Go, never checked in,
// valid for an hour.
type testPKI struct {
	caFile string // the CA every member trusts, for clients and peers
	// server is for 127.0.0.1 and localhost, for server and client
	// authentication: a member serves both ports with it and presents it
	// when it dials a peer or joins.
	server testCert
	client testCert // client authentication only, no names: what curl presents
	// otherCAFile is a second CA, which no member trusts; other is a
	// certificate it signed, shaped like server.
	otherCAFile string
	other       testCert
}

// testCert is a certificate file and its key file.
type testCert struct{ certFile, keyFile string }

// newTestPKI makes a testPKI in a temp dir of t's.
func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p, err := makeTestPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// makeTestPKI writes a testPKI into dir.
func makeTestPKI(dir string) (*testPKI, error) {
	ca, err := newTestCA(dir, "ca")
	if err != nil {
		return nil, err
	}
	other, err := newTestCA(dir, "other-ca")
	if err != nil {
		return nil, err
	}
	p := &testPKI{caFile: ca.certFile, otherCAFile: other.certFile}
	serverUsage := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	if p.server, err = ca.issue(dir, "server", serverUsage, loopback); err != nil {
		return nil, err
	}
	if p.client, err = ca.issue(dir, "client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil); err != nil {
		return nil, err
	}
	if p.other, err = other.issue(dir, "other", serverUsage, loopback); err != nil {
		return nil, err
	}
	return p, nil
}

// testCA is a CA that signs test certificates.
type testCA struct {
	testCert
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// newTestCA makes a self-signed CA and writes it as <name>.pem and
// <name>-key.pem.
func newTestCA(dir, name string) (*testCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := testCertTemplate(name)
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	files, err := writeTestCert(dir, name, der, key)
	if err != nil {
		return nil, err
	}
	return &testCA{testCert: files, cert: cert, key: key}, nil
}

// issue makes a certificate signed by ca for usage and ips, with a key of
// its own, and writes it as <name>.pem and <name>-key.pem. A certificate
// with IP addresses also names localhost.
func (ca *testCA) issue(dir, name string, usage []x509.ExtKeyUsage, ips []net.IP) (testCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return testCert{}, err
	}
	tmpl := testCertTemplate(name)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = usage
	tmpl.IPAddresses = ips
	if len(ips) > 0 {
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return testCert{}, err
	}
	return writeTestCert(dir, name, der, key)
}

// testCertTemplate is what every test certificate shares: a random
// serial, the name, and an hour's validity from a minute ago (for clocks
// a little apart).
func testCertTemplate(name string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "raftkv test " + name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
	}
}

// writeTestCert writes a certificate and its key as PEM files.
func writeTestCert(dir, name string, der []byte, key *ecdsa.PrivateKey) (testCert, error) {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return testCert{}, err
	}
	c := testCert{certFile: filepath.Join(dir, name+".pem"), keyFile: filepath.Join(dir, name+"-key.pem")}
	if err := os.WriteFile(c.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return testCert{}, err
	}
	if err := os.WriteFile(c.keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return testCert{}, err
	}
	return c, nil
}

// memberTLS is what a member of a cluster on TLS for clients and peers,
// with client certificates required on both, is configured with: peer is
// the certificate it uses on the peer port.
func (p *testPKI) memberTLS(peer testCert) (client, peerInfo transport.TLSInfo) {
	client = transport.TLSInfo{CertFile: p.server.certFile, KeyFile: p.server.keyFile, TrustedCAFile: p.caFile, ClientCertAuth: true}
	peerInfo = transport.TLSInfo{CertFile: peer.certFile, KeyFile: peer.keyFile, TrustedCAFile: p.caFile, ClientCertAuth: true}
	return client, peerInfo
}

// memberArgs are memberTLS's flags, for a member process.
func (p *testPKI) memberArgs() []string {
	return []string{
		"--cert-file", p.server.certFile, "--key-file", p.server.keyFile,
		"--trusted-ca-file", p.caFile, "--client-cert-auth",
		"--peer-cert-file", p.server.certFile, "--peer-key-file", p.server.keyFile,
		"--peer-trusted-ca-file", p.caFile, "--peer-client-cert-auth",
	}
}

// clientConfig is a client's TLS configuration, made by etcd's TLSInfo as
// the members' own: it trusts ca and, unless cert is the zero testCert,
// presents cert.
func clientConfig(t testing.TB, ca string, cert testCert) *tls.Config {
	t.Helper()
	cfg, err := (transport.TLSInfo{CertFile: cert.certFile, KeyFile: cert.keyFile, TrustedCAFile: ca}).ClientConfig()
	if err != nil {
		t.Fatalf("client TLS config: %v", err)
	}
	return cfg
}

// TestTestPKI proves the test certificates are what the TLS tests take
// them for: the server and client certificates verify against the CA for
// their uses, the server one for 127.0.0.1; the other one does not.
func TestTestPKI(t *testing.T) {
	p := newTestPKI(t)
	roots := func(file string) *x509.CertPool {
		pool := x509.NewCertPool()
		b, err := os.ReadFile(file)
		if err != nil || !pool.AppendCertsFromPEM(b) {
			t.Fatalf("read CA %s: %v", file, err)
		}
		return pool
	}
	leaf := func(c testCert) *x509.Certificate {
		pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	for _, tc := range []struct {
		name  string
		cert  testCert
		ca    string
		usage x509.ExtKeyUsage
		host  string
		ok    bool
	}{
		{"server as server", p.server, p.caFile, x509.ExtKeyUsageServerAuth, "127.0.0.1", true},
		{"server as client", p.server, p.caFile, x509.ExtKeyUsageClientAuth, "", true},
		{"client as client", p.client, p.caFile, x509.ExtKeyUsageClientAuth, "", true},
		{"client as server", p.client, p.caFile, x509.ExtKeyUsageServerAuth, "", false},
		{"server for another host", p.server, p.caFile, x509.ExtKeyUsageServerAuth, "127.0.0.2", false},
		{"other against the CA", p.other, p.caFile, x509.ExtKeyUsageClientAuth, "", false},
		{"other against its own CA", p.other, p.otherCAFile, x509.ExtKeyUsageServerAuth, "127.0.0.1", true},
	} {
		_, err := leaf(tc.cert).Verify(x509.VerifyOptions{Roots: roots(tc.ca), DNSName: tc.host, KeyUsages: []x509.ExtKeyUsage{tc.usage}})
		if (err == nil) != tc.ok {
			t.Errorf("%s: verify: %v, want ok %v", tc.name, err, tc.ok)
		}
	}
	if s := fmt.Sprint(leaf(p.server).IPAddresses); s != "[127.0.0.1]" {
		t.Errorf("server certificate IP SANs %s, want [127.0.0.1]", s)
	}
}
