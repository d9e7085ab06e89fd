package config

import (
	"errors"
	"strings"
	"testing"

	"raftkv/tlsconfig"
)

// TestTLSFlags proves the TLS flags land in the config, make the default
// client URL https, and are refused, in one line, where they and the URLs
// do not go together.
func TestTLSFlags(t *testing.T) {
	const (
		https3 = "https://127.0.0.1:12379,https://127.0.0.1:22379,https://127.0.0.1:32379"
		ca     = "ca.pem"
	)
	client := []string{"--cert-file", "s.pem", "--key-file", "s-key.pem", "--trusted-ca-file", ca, "--client-cert-auth"}
	peer := []string{"--peer-cert-file", "p.pem", "--peer-key-file", "p-key.pem", "--peer-trusted-ca-file", ca, "--peer-client-cert-auth"}
	args := func(parts ...[]string) []string {
		var all []string
		for _, p := range parts {
			all = append(all, p...)
		}
		return all
	}

	cfg, err := Parse(args([]string{"--id", "2", "--cluster", https3, "--port", "22380", "--join", "https://127.0.0.1:12380"}, client, peer))
	if err != nil {
		t.Fatalf("Parse with every TLS flag: %v", err)
	}
	if cfg.ClientURL != "https://127.0.0.1:22380" || cfg.PeerURL() != "https://127.0.0.1:22379" {
		t.Errorf("client URL %s, peer URL %s; want both https", cfg.ClientURL, cfg.PeerURL())
	}
	if c, p := cfg.TLS.Client, cfg.TLS.Peer; c.CertFile != "s.pem" || c.KeyFile != "s-key.pem" || c.TrustedCAFile != ca || !c.ClientCertAuth ||
		p.CertFile != "p.pem" || p.KeyFile != "p-key.pem" || p.TrustedCAFile != ca || !p.ClientCertAuth {
		t.Errorf("TLS flags in the config: client %+v, peer %+v", c, p)
	}
	for _, ok := range [][]string{
		args([]string{"--cert-file", "s.pem", "--key-file", "s-key.pem"}), // https clients, plain peers
		args([]string{"--cluster", "https://127.0.0.1:12379"}, peer),      // plain clients, https peers
		args([]string{"--cluster", "https://127.0.0.1:12379", "--peer-cert-file", "p.pem", // peers verified against the system's CAs
			"--peer-key-file", "p-key.pem"}),
	} {
		if _, err := Parse(ok); err != nil {
			t.Errorf("Parse(%q): %v", ok, err)
		}
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"--cert-file", "s.pem"}, "--cert-file and --key-file go together"},
		{"peer key without cert", []string{"--cluster", "https://127.0.0.1:1", "--peer-key-file", "p-key.pem"}, "--peer-cert-file and --peer-key-file go together"},
		{"client cert auth without CA", []string{"--cert-file", "s.pem", "--key-file", "k.pem", "--client-cert-auth"}, "--client-cert-auth needs --trusted-ca-file"},
		{"peer client cert auth without CA", []string{"--cluster", "https://127.0.0.1:1", "--peer-cert-file", "p.pem", "--peer-key-file", "k.pem", "--peer-client-cert-auth"}, "--peer-client-cert-auth needs --peer-trusted-ca-file"},
		{"CA without cert", []string{"--trusted-ca-file", ca}, "--trusted-ca-file needs --cert-file"},
		{"peer CA without cert", []string{"--peer-trusted-ca-file", ca}, "--peer-trusted-ca-file needs --peer-cert-file"},
		{"https client URL without cert", []string{"--client-url", "https://127.0.0.1:1"}, "https needs TLS: give --cert-file and --key-file"},
		{"http client URL with cert", args([]string{"--client-url", "http://127.0.0.1:1"}, client), "is plain http, but --cert-file is given"},
		{"https cluster without peer cert", []string{"--cluster", https3}, "https needs TLS: give --peer-cert-file and --peer-key-file"},
		{"http cluster with peer cert", args(peer), "is plain http, but --peer-cert-file is given"},
		{"cluster mixing schemes", args([]string{"--cluster", "https://127.0.0.1:1,http://127.0.0.1:2"}, peer), "--cluster mixes http and https"},
		{"listen peer URL on another scheme", args([]string{"--cluster", https3, "--listen-peer-url", "http://127.0.0.1:2"}, peer), "--listen-peer-url http://127.0.0.1:2 is http"},
		{"https join from an http member", []string{"--join", "https://127.0.0.1:1"}, "--join https://127.0.0.1:1 is https"},
		{"http join from an https member", args([]string{"--join", "http://127.0.0.1:1"}, client), "--join http://127.0.0.1:1 is http"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.args)
			if err == nil || !errors.Is(err, tlsconfig.ErrTLSConfig) || !strings.Contains(err.Error(), tc.want) || strings.ContainsAny(err.Error(), "\r\n") {
				t.Errorf("Parse(%q): %v, want one line with %q", tc.args, err, tc.want)
			}
		})
	}
}
