package testpki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"testing"
)

// TestTestPKI proves the test certificates are what the TLS tests take
// them for: the server and client certificates verify against the CA for
// their uses, the server one for 127.0.0.1; the other one does not.
func TestTestPKI(t *testing.T) {
	p := New(t)
	roots := func(file string) *x509.CertPool {
		pool := x509.NewCertPool()
		b, err := os.ReadFile(file)
		if err != nil || !pool.AppendCertsFromPEM(b) {
			t.Fatalf("read CA %s: %v", file, err)
		}
		return pool
	}
	leaf := func(c Cert) *x509.Certificate {
		pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
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
		cert  Cert
		ca    string
		usage x509.ExtKeyUsage
		host  string
		ok    bool
	}{
		{"server as server", p.Server, p.CAFile, x509.ExtKeyUsageServerAuth, "127.0.0.1", true},
		{"server as client", p.Server, p.CAFile, x509.ExtKeyUsageClientAuth, "", true},
		{"client as client", p.Client, p.CAFile, x509.ExtKeyUsageClientAuth, "", true},
		{"client as server", p.Client, p.CAFile, x509.ExtKeyUsageServerAuth, "", false},
		{"server for another host", p.Server, p.CAFile, x509.ExtKeyUsageServerAuth, "127.0.0.2", false},
		{"other against the CA", p.Other, p.CAFile, x509.ExtKeyUsageClientAuth, "", false},
		{"other against its own CA", p.Other, p.OtherCAFile, x509.ExtKeyUsageServerAuth, "127.0.0.1", true},
	} {
		_, err := leaf(tc.cert).Verify(x509.VerifyOptions{Roots: roots(tc.ca), DNSName: tc.host, KeyUsages: []x509.ExtKeyUsage{tc.usage}})
		if (err == nil) != tc.ok {
			t.Errorf("%s: verify: %v, want ok %v", tc.name, err, tc.ok)
		}
	}
	if s := fmt.Sprint(leaf(p.Server).IPAddresses); s != "[127.0.0.1]" {
		t.Errorf("server certificate IP SANs %s, want [127.0.0.1]", s)
	}
}
