// Package testpki makes throwaway certificate authorities and
// certificates for raftkv's TLS tests, in Go: never checked in, valid for
// an hour.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// PKI is a throwaway certificate authority and the certificates TLS
// tests need, as PEM files in one directory: made in Go, never checked in,
// valid for an hour.
type PKI struct {
	CAFile string // the CA every member trusts, for clients and peers
	// Server is for 127.0.0.1 and localhost, for server and client
	// authentication: a member serves both ports with it and presents it
	// when it dials a peer or joins.
	Server Cert
	Client Cert // client authentication only, no names: what curl presents
	// OtherCAFile is a second CA, which no member trusts; Other is a
	// certificate it signed, shaped like Server.
	OtherCAFile string
	Other       Cert
}

// Cert is a certificate file and its key file.
type Cert struct{ CertFile, KeyFile string }

// New makes a PKI in a temp dir of t's.
func New(t testing.TB) *PKI {
	t.Helper()
	p, err := Make(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Make writes a PKI into dir.
func Make(dir string) (*PKI, error) {
	ca, err := newCA(dir, "ca")
	if err != nil {
		return nil, err
	}
	other, err := newCA(dir, "other-ca")
	if err != nil {
		return nil, err
	}
	p := &PKI{CAFile: ca.CertFile, OtherCAFile: other.CertFile}
	serverUsage := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	if p.Server, err = ca.issue(dir, "server", serverUsage, loopback); err != nil {
		return nil, err
	}
	if p.Client, err = ca.issue(dir, "client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil); err != nil {
		return nil, err
	}
	if p.Other, err = other.issue(dir, "other", serverUsage, loopback); err != nil {
		return nil, err
	}
	return p, nil
}

// ca is a CA that signs test certificates.
type ca struct {
	Cert
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// newCA makes a self-signed CA and writes it as <name>.pem and
// <name>-key.pem.
func newCA(dir, name string) (*ca, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := certTemplate(name)
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
	files, err := writeCert(dir, name, der, key)
	if err != nil {
		return nil, err
	}
	return &ca{Cert: files, cert: cert, key: key}, nil
}

// issue makes a certificate signed by ca for usage and ips, with a key of
// its own, and writes it as <name>.pem and <name>-key.pem. A certificate
// with IP addresses also names localhost.
func (c *ca) issue(dir, name string, usage []x509.ExtKeyUsage, ips []net.IP) (Cert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Cert{}, err
	}
	tmpl := certTemplate(name)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = usage
	tmpl.IPAddresses = ips
	if len(ips) > 0 {
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return Cert{}, err
	}
	return writeCert(dir, name, der, key)
}

// certTemplate is what every test certificate shares: a random
// serial, the name, and an hour's validity from a minute ago (for clocks
// a little apart).
func certTemplate(name string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "raftkv test " + name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
	}
}

// writeCert writes a certificate and its key as PEM files.
func writeCert(dir, name string, der []byte, key *ecdsa.PrivateKey) (Cert, error) {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Cert{}, err
	}
	c := Cert{CertFile: filepath.Join(dir, name+".pem"), KeyFile: filepath.Join(dir, name+"-key.pem")}
	if err := os.WriteFile(c.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return Cert{}, err
	}
	if err := os.WriteFile(c.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return Cert{}, err
	}
	return c, nil
}

// MemberTLS is what a member of a cluster on TLS for clients and peers,
// with client certificates required on both, is configured with: peer is
// the certificate it uses on the peer port.
func (p *PKI) MemberTLS(peer Cert) (client, peerInfo transport.TLSInfo) {
	client = transport.TLSInfo{CertFile: p.Server.CertFile, KeyFile: p.Server.KeyFile, TrustedCAFile: p.CAFile, ClientCertAuth: true}
	peerInfo = transport.TLSInfo{CertFile: peer.CertFile, KeyFile: peer.KeyFile, TrustedCAFile: p.CAFile, ClientCertAuth: true}
	return client, peerInfo
}

// MemberArgs are MemberTLS's flags, for a member process.
func (p *PKI) MemberArgs() []string {
	return []string{
		"--cert-file", p.Server.CertFile, "--key-file", p.Server.KeyFile,
		"--trusted-ca-file", p.CAFile, "--client-cert-auth",
		"--peer-cert-file", p.Server.CertFile, "--peer-key-file", p.Server.KeyFile,
		"--peer-trusted-ca-file", p.CAFile, "--peer-client-cert-auth",
	}
}

// ClientConfig is a client's TLS configuration, made by etcd's TLSInfo as
// the members' own: it trusts ca and, unless cert is the zero Cert,
// presents cert.
func ClientConfig(t testing.TB, ca string, cert Cert) *tls.Config {
	t.Helper()
	cfg, err := (transport.TLSInfo{CertFile: cert.CertFile, KeyFile: cert.KeyFile, TrustedCAFile: ca}).ClientConfig()
	if err != nil {
		t.Fatalf("client TLS config: %v", err)
	}
	return cfg
}
