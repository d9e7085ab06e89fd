package tlsconfig_test

import (
	"errors"
	"flag"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"raftkv/e2e/testpki"
	"raftkv/tlsconfig"
)

// TestTLSWarnUnauthenticated proves the start-up warning names each port on
// a non-loopback address that takes requests from anyone, and only those.
func TestTLSWarnUnauthenticated(t *testing.T) {
	withAuth := func(f tlsconfig.Flags) tlsconfig.Flags {
		f.Client.ClientCertAuth, f.Peer.ClientCertAuth = true, true
		return f
	}
	at := func(client, peer string) tlsconfig.URLs {
		return tlsconfig.URLs{Client: client, Peer: peer, Cluster: map[uint64]string{1: peer}}
	}
	for _, tc := range []struct {
		name  string
		flags tlsconfig.Flags
		urls  tlsconfig.URLs
		want  []string // the ports warned of
	}{
		{"loopback http", tlsconfig.Flags{}, at("http://127.0.0.1:1", "http://localhost:2"), nil},
		{"any address http", tlsconfig.Flags{}, at("http://0.0.0.0:1", "http://[::]:2"), []string{"client port", "peer port"}},
		{"host name http", tlsconfig.Flags{}, at("http://db.example:1", "http://127.0.0.1:2"), []string{"client port"}},
		{"https without client certificates", tlsconfig.Flags{}, at("https://10.0.0.1:1", "https://10.0.0.1:2"), []string{"client port", "peer port"}},
		{"https with client certificates", withAuth(tlsconfig.Flags{}), at("https://10.0.0.1:1", "https://10.0.0.1:2"), nil},
		{"peer listen URL decides", tlsconfig.Flags{}, func() tlsconfig.URLs {
			u := at("http://127.0.0.1:1", "http://10.0.0.1:2")
			u.ListenPeer = "http://127.0.0.1:3"
			return u
		}(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.WarnLevel)
			tc.flags.WarnUnauthenticated(tc.urls, zap.New(core))
			var got []string
			for _, e := range logs.All() {
				if !strings.Contains(e.Message, "anyone who can reach it can write and change membership") {
					t.Errorf("warning %q does not say what is at stake", e.Message)
				}
				for _, port := range []string{"client port", "peer port"} {
					if strings.Contains(e.Message, port) {
						got = append(got, port)
					}
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("warned of %v, want %v", got, tc.want)
			}
		})
	}
}

// TestAddFlags proves the TLS flags, as etcd names them, land in each
// side's TLSInfo, and that a client certificate makes the default client
// URL https.
func TestAddFlags(t *testing.T) {
	fs := flag.NewFlagSet("raftkv", flag.ContinueOnError)
	f := tlsconfig.AddFlags(fs)
	if got := f.ClientScheme(); got != "http" {
		t.Errorf("ClientScheme without flags = %s, want http", got)
	}
	err := fs.Parse([]string{"--cert-file", "s.pem", "--key-file", "s-key.pem", "--trusted-ca-file", "ca.pem", "--client-cert-auth",
		"--peer-cert-file", "p.pem", "--peer-key-file", "p-key.pem", "--peer-trusted-ca-file", "pca.pem", "--peer-client-cert-auth"})
	if err != nil {
		t.Fatal(err)
	}
	want := tlsconfig.Flags{
		Client: transport.TLSInfo{CertFile: "s.pem", KeyFile: "s-key.pem", TrustedCAFile: "ca.pem", ClientCertAuth: true},
		Peer:   transport.TLSInfo{CertFile: "p.pem", KeyFile: "p-key.pem", TrustedCAFile: "pca.pem", ClientCertAuth: true},
	}
	if f.Client.CertFile != want.Client.CertFile || f.Client.KeyFile != want.Client.KeyFile || f.Client.TrustedCAFile != want.Client.TrustedCAFile || !f.Client.ClientCertAuth ||
		f.Peer.CertFile != want.Peer.CertFile || f.Peer.KeyFile != want.Peer.KeyFile || f.Peer.TrustedCAFile != want.Peer.TrustedCAFile || !f.Peer.ClientCertAuth {
		t.Errorf("flags parsed to client %+v, peer %+v", f.Client, f.Peer)
	}
	if got := f.ClientScheme(); got != "https" {
		t.Errorf("ClientScheme with --cert-file = %s, want https", got)
	}
}

// TestCheckMemberSchemes proves a member POST /members would add is held to
// the schemes of the member asked, port by port, and refused with
// ErrSchemeMismatch naming the URL otherwise.
func TestCheckMemberSchemes(t *testing.T) {
	const peer, client = "https://10.0.0.1:2380", "http://10.0.0.1:2379"
	if err := tlsconfig.CheckMemberSchemes([]string{"https://10.0.0.2:2380"}, []string{"http://10.0.0.2:2379"}, peer, client); err != nil {
		t.Errorf("a member on the cluster's schemes: %v", err)
	}
	if err := tlsconfig.CheckMemberSchemes([]string{"https://10.0.0.2:2380"}, nil, peer, client); err != nil {
		t.Errorf("a member without client URLs yet: %v", err)
	}
	for _, tc := range []struct {
		peers, clients []string
		want           string
	}{
		{[]string{"http://10.0.0.2:2380"}, nil, "peerURL http://10.0.0.2:2380"},
		{[]string{"https://10.0.0.2:2380", "http://10.0.0.3:2380"}, nil, "peerURL http://10.0.0.3:2380"},
		{[]string{"https://10.0.0.2:2380"}, []string{"https://10.0.0.2:2379"}, "clientURL https://10.0.0.2:2379"},
	} {
		err := tlsconfig.CheckMemberSchemes(tc.peers, tc.clients, peer, client)
		if !errors.Is(err, tlsconfig.ErrSchemeMismatch) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckMemberSchemes(%q, %q) = %v, want ErrSchemeMismatch naming %s", tc.peers, tc.clients, err, tc.want)
		}
	}
}

// TestCheckFiles proves every certificate, key and CA file the flags name
// is loaded when checked, so that a missing or broken one is refused in
// one line naming the side (and, if missing, the file) before the member
// takes a port; good files, or none, pass.
func TestCheckFiles(t *testing.T) {
	pki := testpki.New(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	good := func() tlsconfig.Flags {
		var f tlsconfig.Flags
		f.Client, f.Peer = pki.MemberTLS(pki.Server)
		return f
	}
	if err := good().CheckFiles(); err != nil {
		t.Fatalf("CheckFiles of good files: %v", err)
	}
	if err := (tlsconfig.Flags{}).CheckFiles(); err != nil {
		t.Errorf("CheckFiles without TLS: %v", err)
	}
	for _, tc := range []struct {
		name string
		set  func(*tlsconfig.Flags)
		want string
	}{
		{"client cert missing", func(f *tlsconfig.Flags) { f.Client.CertFile = missing }, missing},
		{"client CA missing", func(f *tlsconfig.Flags) { f.Client.TrustedCAFile = missing }, missing},
		{"client key not a key", func(f *tlsconfig.Flags) { f.Client.KeyFile = pki.CAFile }, "client TLS"},
		{"peer CA not a certificate", func(f *tlsconfig.Flags) { f.Peer.TrustedCAFile = pki.Server.KeyFile }, "peer TLS"},
		{"peer cert missing", func(f *tlsconfig.Flags) { f.Peer.CertFile = missing }, "peer TLS"},
	} {
		f := good()
		tc.set(&f)
		if err := f.CheckFiles(); err == nil || !strings.Contains(err.Error(), tc.want) || strings.ContainsAny(err.Error(), "\r\n") {
			t.Errorf("%s: CheckFiles = %v, want one line with %q", tc.name, err, tc.want)
		}
	}
}
