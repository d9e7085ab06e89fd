package main

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// tlsTestClient is an HTTPS client that trusts pki's CA and presents cert
// (none for the zero testCert); it follows redirects only if follow.
func tlsTestClient(t testing.TB, ca string, cert testCert, follow bool) *http.Client {
	tr := &http.Transport{TLSClientConfig: clientConfig(t, ca, cert)}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	if !follow {
		hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	return hc
}

// tlsDo sends one request with hc and reads the whole answer, failing the
// test on a transport error.
func tlsDo(t testing.TB, hc *http.Client, method, url, body string) response {
	t.Helper()
	r, err := e2eTry(hc, method, url, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

// tlsRefused fails the test unless a GET of url with hc fails in TLS,
// before any HTTP answer.
func tlsRefused(t testing.TB, hc *http.Client, url, who string) {
	t.Helper()
	r, err := e2eTry(hc, "GET", url, "")
	if err == nil {
		t.Fatalf("%s: GET %s answered %d %q, want a TLS error", who, url, r.code, r.body)
	}
	if !strings.Contains(err.Error(), "tls") && !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("%s: GET %s: %v, want a TLS error", who, url, err)
	}
}

// TestTLSCluster proves a cluster on TLS for clients and peers, with client
// certificates required on both ports: writes, consistent reads on every
// member, a follower's default-read redirect to the leader's https URL
// followed, a fourth member joining over https, URLs of the wrong scheme
// refused by POST /members, and clients without a certificate from the CA
// refused in the TLS handshake.
func TestTLSCluster(t *testing.T) {
	pki := newTestPKI(t)
	c := newTestClusterOn(t, "https", 3, func(cfg *config) { cfg.clientTLS, cfg.peerTLS = pki.memberTLS(pki.server) })
	hc := tlsTestClient(t, pki.caFile, pki.client, false)

	if r := tlsDo(t, hc, "PUT", c.url(1, "/keys/hello"), "world"); r.code != http.StatusCreated {
		t.Fatalf("PUT over https: %d %q, want 201", r.code, r.body)
	}
	for id := uint64(1); id <= 3; id++ {
		if r := tlsDo(t, hc, "GET", c.url(id, "/keys/hello?level=consistent"), ""); r.code != http.StatusOK || r.body != "world" {
			t.Errorf("consistent GET on member %d: %d %q, want 200 \"world\"", id, r.code, r.body)
		}
	}

	leader, follower := c.waitLeader(), c.follower()
	r := tlsDo(t, hc, "GET", c.url(follower, "/keys/hello"), "")
	if loc, want := r.header.Get("Location"), c.url(leader, "/keys/hello"); r.code != http.StatusTemporaryRedirect || loc != want || !strings.HasPrefix(loc, "https://") {
		t.Errorf("default GET on follower %d: %d Location %q, want 307 to %s", follower, r.code, loc, want)
	}
	follow := tlsTestClient(t, pki.caFile, pki.client, true)
	if r := tlsDo(t, follow, "GET", c.url(follower, "/keys/hello"), ""); r.code != http.StatusOK || r.body != "world" {
		t.Errorf("default GET on follower %d, following the redirect: %d %q, want 200 \"world\"", follower, r.code, r.body)
	}

	// --join over https: the new member asks member 1's client URL, and
	// takes the log from the leader over the peer port.
	id4 := c.addMember(1)
	eventually(t, 10*time.Second, "member 4 to serve the key", func() bool {
		r, err := e2eTry(hc, "GET", c.url(id4, "/keys/hello?level=consistent"), "")
		return err == nil && r.code == http.StatusOK && r.body == "world"
	})
	var members []memberView
	eventually(t, 10*time.Second, "member 4 to list four members, each advertised", func() bool {
		r := tlsDo(t, hc, "GET", c.url(id4, "/members"), "")
		if json.Unmarshal([]byte(r.body), &members) != nil || len(members) != 4 {
			return false
		}
		for _, m := range members {
			if len(m.ClientURLs) == 0 {
				return false
			}
		}
		return true
	})
	for _, m := range members {
		if m.PeerURLs[0] != c.peerURLs[m.ID-1] || m.ClientURLs[0] != c.clients[m.ID-1] {
			t.Errorf("GET /members on member 4: member %d is %v %v, want %s %s", m.ID, m.PeerURLs, m.ClientURLs, c.peerURLs[m.ID-1], c.clients[m.ID-1])
		}
	}

	// A member on https takes no member on http.
	newPeer, newClient := "http://"+freeAddr(t), "https://"+freeAddr(t)
	for _, body := range []string{
		`{"id":9,"peerURL":"` + newPeer + `","clientURL":"` + newClient + `"}`,
		`{"id":9,"peerURL":"` + strings.Replace(newPeer, "http:", "https:", 1) + `","clientURL":"` + strings.Replace(newClient, "https:", "http:", 1) + `"}`,
	} {
		r := tlsDo(t, hc, "POST", c.url(1, "/members"), body)
		if r.code != http.StatusBadRequest || !strings.Contains(r.body, "scheme") || strings.Count(r.body, "\n") != 1 {
			t.Errorf("POST /members %s: %d %q, want a one-line 400 naming the scheme", body, r.code, r.body)
		}
	}

	// Clients without a certificate from the CA get nothing but a TLS error.
	tlsRefused(t, tlsTestClient(t, pki.caFile, testCert{}, false), c.url(1, "/keys/hello"), "a client without a certificate")
	tlsRefused(t, tlsTestClient(t, pki.caFile, pki.other, false), c.url(1, "/keys/hello"), "a client with a certificate from another CA")
	if r, err := e2eTry(noRedirect, "GET", strings.Replace(c.url(1, "/keys/hello"), "https:", "http:", 1), ""); err == nil {
		t.Errorf("plain http to the https port answered %d %q, want a failed request", r.code, r.body)
	}

	// The bootstrap checks ask the peers over TLS too: member 3 started
	// again with its data dir gone is refused, as the peers have seen it run.
	c.stop(3)
	cfg := c.config(3, "")
	cfg.cluster = positionalCluster(c.peerURLs[:3]) // its --cluster, from before member 4 joined
	cfg.clusterID = deriveClusterID(cfg.cluster, defaultClusterToken)
	if err := os.RemoveAll(cfg.dataDir); err != nil {
		t.Fatal(err)
	}
	if err := c.tryStart(cfg); !errors.Is(err, ErrAlreadyBootstrapped) {
		t.Errorf("member 3 started again without its data dir: %v, want %v", err, ErrAlreadyBootstrapped)
	}
}

// TestTLSPeerFromOtherCA proves that with --peer-client-cert-auth nothing
// without a certificate from the peer CA exchanges raft messages with the
// cluster. The peer listener refuses such a connection in the handshake;
// and a member added to the cluster whose peer certificate another CA
// signed (it trusts the cluster's CA itself, and joins through the client
// port with a good client certificate) never hears from the leader, nor
// the leader from it, while the others commit writes.
func TestTLSPeerFromOtherCA(t *testing.T) {
	pki := newTestPKI(t)
	c := newTestClusterOn(t, "https", 3, func(cfg *config) {
		peerCert := pki.server
		if cfg.id == 4 {
			peerCert = pki.other
		}
		cfg.clientTLS, cfg.peerTLS = pki.memberTLS(peerCert)
	})
	members := c.peerURLs[0] + peerMembersPath
	if r := tlsDo(t, tlsTestClient(t, pki.caFile, pki.server, false), "GET", members, ""); r.code != http.StatusOK {
		t.Fatalf("GET %s with the peer certificate: %d %q, want 200", members, r.code, r.body)
	}
	tlsRefused(t, tlsTestClient(t, pki.caFile, pki.other, false), members, "a peer with a certificate from another CA")
	tlsRefused(t, tlsTestClient(t, pki.caFile, testCert{}, false), members, "a peer without a certificate")

	leader := c.waitLeader()
	id4 := c.joinMember(leader) // a learner it stays: it never catches up
	hc := tlsTestClient(t, pki.caFile, pki.client, false)
	if r := tlsDo(t, hc, "PUT", c.url(leader, "/keys/k"), "v"); r.code != http.StatusCreated {
		t.Fatalf("PUT with member 4 added but cut off: %d %q, want 201 (members 1 to 3 are the voters)", r.code, r.body)
	}
	// The leader sends member 4 a heartbeat every tick and rafthttp
	// redials it every 100 ms: 2 s is a hundred chances to get through.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(testTick) {
		if l := c.server(id4).raft.leaderID(); l != 0 {
			t.Fatalf("member 4, with a peer certificate from another CA, learnt of leader %d", l)
		}
		if since := c.server(leader).raft.transport.ActiveSince(types.ID(id4)); !since.IsZero() {
			t.Fatalf("leader %d has had a working connection with member 4 since %s", leader, since)
		}
	}
	if r := tlsDo(t, hc, "GET", c.url(id4, "/keys/k?level=stale"), ""); r.code != http.StatusNotFound {
		t.Errorf("stale GET on member 4: %d %q, want 404: it has applied nothing", r.code, r.body)
	}
}

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

	cfg, err := parseFlags(args([]string{"--id", "2", "--cluster", https3, "--port", "22380", "--join", "https://127.0.0.1:12380"}, client, peer))
	if err != nil {
		t.Fatalf("parseFlags with every TLS flag: %v", err)
	}
	if cfg.clientURL != "https://127.0.0.1:22380" || cfg.peerURL() != "https://127.0.0.1:22379" {
		t.Errorf("client URL %s, peer URL %s; want both https", cfg.clientURL, cfg.peerURL())
	}
	if c, p := cfg.clientTLS, cfg.peerTLS; c.CertFile != "s.pem" || c.KeyFile != "s-key.pem" || c.TrustedCAFile != ca || !c.ClientCertAuth ||
		p.CertFile != "p.pem" || p.KeyFile != "p-key.pem" || p.TrustedCAFile != ca || !p.ClientCertAuth {
		t.Errorf("TLS flags in the config: client %+v, peer %+v", c, p)
	}
	for _, ok := range [][]string{
		args([]string{"--cert-file", "s.pem", "--key-file", "s-key.pem"}), // https clients, plain peers
		args([]string{"--cluster", "https://127.0.0.1:12379"}, peer),      // plain clients, https peers
		args([]string{"--cluster", "https://127.0.0.1:12379", "--peer-cert-file", "p.pem", // peers verified against the system's CAs
			"--peer-key-file", "p-key.pem"}),
	} {
		if _, err := parseFlags(ok); err != nil {
			t.Errorf("parseFlags(%q): %v", ok, err)
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
			_, err := parseFlags(tc.args)
			if err == nil || !errors.Is(err, ErrTLSConfig) || !strings.Contains(err.Error(), tc.want) || strings.ContainsAny(err.Error(), "\r\n") {
				t.Errorf("parseFlags(%q): %v, want one line with %q", tc.args, err, tc.want)
			}
		})
	}
}

// TestTLSBadFiles proves a certificate, key or CA file that cannot be
// loaded stops a member at start with one line naming the file, before it
// takes a port.
func TestTLSBadFiles(t *testing.T) {
	pki := newTestPKI(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		name string
		set  func(*config)
		want string
	}{
		{"client cert missing", func(c *config) { c.clientTLS.CertFile = missing }, missing},
		{"client CA missing", func(c *config) { c.clientTLS.TrustedCAFile = missing }, missing},
		{"client key not a key", func(c *config) { c.clientTLS.KeyFile = pki.caFile }, "client TLS"},
		{"peer CA not a certificate", func(c *config) { c.peerTLS.TrustedCAFile = pki.server.keyFile }, "peer TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := flagTestConfig(t, filepath.Join(t.TempDir(), "raftkv-1"))
			cfg.cluster[1] = strings.Replace(cfg.cluster[1], "http:", "https:", 1)
			cfg.clientURL = strings.Replace(cfg.clientURL, "http:", "https:", 1)
			cfg.clientTLS, cfg.peerTLS = pki.memberTLS(pki.server)
			tc.set(&cfg)
			_, err := flagTestStart(t, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.ContainsAny(err.Error(), "\r\n") {
				t.Errorf("startServer: %v, want one line with %q", err, tc.want)
			}
			if hasWAL(cfg.dataDir) {
				t.Errorf("a start refused for its TLS files left a WAL in %s", cfg.dataDir)
			}
		})
	}
}

// TestTLSWarnUnauthenticated proves the start-up warning names each port on
// a non-loopback address that takes requests from anyone, and only those.
func TestTLSWarnUnauthenticated(t *testing.T) {
	withAuth := func(cfg config) config {
		cfg.clientTLS.ClientCertAuth, cfg.peerTLS.ClientCertAuth = true, true
		return cfg
	}
	base := config{id: 1}
	at := func(client, peer string) config {
		cfg := base
		cfg.clientURL, cfg.cluster = client, map[uint64]string{1: peer}
		return cfg
	}
	for _, tc := range []struct {
		name string
		cfg  config
		want []string // the ports warned of
	}{
		{"loopback http", at("http://127.0.0.1:1", "http://localhost:2"), nil},
		{"any address http", at("http://0.0.0.0:1", "http://[::]:2"), []string{"client port", "peer port"}},
		{"host name http", at("http://db.example:1", "http://127.0.0.1:2"), []string{"client port"}},
		{"https without client certificates", at("https://10.0.0.1:1", "https://10.0.0.1:2"), []string{"client port", "peer port"}},
		{"https with client certificates", withAuth(at("https://10.0.0.1:1", "https://10.0.0.1:2")), nil},
		{"peer listen URL decides", func() config {
			cfg := at("http://127.0.0.1:1", "http://10.0.0.1:2")
			cfg.listenPeerURL = "http://127.0.0.1:3"
			return cfg
		}(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.WarnLevel)
			warnUnauthenticated(tc.cfg, zap.New(core))
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

// TestTLSHandshakeFailureLogged proves a refused TLS connection is logged,
// with the address it came from.
func TestTLSHandshakeFailureLogged(t *testing.T) {
	pki := newTestPKI(t)
	core, logs := observer.New(zapcore.WarnLevel)
	client, _ := pki.memberTLS(pki.server)
	ln, err := listenClients("127.0.0.1:0", listenTLS(client, zap.New(core), "client"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(ln)
	defer srv.Close()
	url := "https://" + ln.Addr().String() + "/"
	if r := tlsDo(t, tlsTestClient(t, pki.caFile, pki.client, false), "GET", url, ""); r.code != http.StatusOK {
		t.Fatalf("GET with a client certificate: %d %q", r.code, r.body)
	}
	tlsRefused(t, tlsTestClient(t, pki.caFile, testCert{}, false), url, "a client without a certificate")
	eventually(t, 5*time.Second, "the refused connection to be logged", func() bool {
		for _, e := range logs.All() {
			if strings.Contains(e.Message, "refused a TLS connection on the client port") && e.ContextMap()["remote-addr"] != nil {
				return true
			}
		}
		return false
	})
}
