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

	"raftkv/bootstrap"
	"raftkv/config"
	"raftkv/datadir"
	"raftkv/e2e/testpki"
	"raftkv/membership"
)

// The peer port (transport.go): raft messages over rafthttp, the peer API
// of package bootstrap beside them, and TLS on both ports.

// TestPeerAPIMembers proves GET /raftkv/members on the peer port answers
// the member table, with the members the answering one is connected to,
// and that the route is read-only.
func TestPeerAPIMembers(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitLeader()
	var got bootstrap.Answer
	eventually(t, 10*time.Second, "member 1 to be connected to members 2 and 3", func() bool {
		r := do(t, "GET", c.peerURLs[0]+bootstrap.MembersPath, "")
		if r.code != http.StatusOK || json.Unmarshal([]byte(r.body), &got) != nil {
			t.Fatalf("GET %s: %d %q", bootstrap.MembersPath, r.code, r.body)
		}
		return len(got.Members) == 3 && got.Members[1].Connected && got.Members[2].Connected
	})
	if got.From != 1 || got.Members[0].Connected {
		t.Errorf("answer %+v: want from 1, not connected to itself", got)
	}
	for i, m := range got.Members {
		if m.ID != uint64(i+1) || len(m.PeerURLs) != 1 || m.PeerURLs[0] != c.peerURLs[i] {
			t.Errorf("member %d in the answer: %+v", i+1, m)
		}
	}
	if r := do(t, "POST", c.peerURLs[0]+bootstrap.MembersPath, "{}"); r.code != http.StatusMethodNotAllowed {
		t.Errorf("POST %s: %d %q, want 405", bootstrap.MembersPath, r.code, r.body)
	}
	// rafthttp parses its version headers with semver.Must: a bad one is
	// refused before it gets there.
	for _, header := range []string{"X-Server-Version", "X-Min-Cluster-Version"} {
		req, _ := http.NewRequest("POST", c.peerURLs[0]+"/raft", strings.NewReader(""))
		req.Header.Set(header, "bogus")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("POST /raft with %s: bogus: %v", header, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), header) {
			t.Errorf("POST /raft with %s: bogus: %d %q, want 400 naming the header", header, resp.StatusCode, body)
		}
	}
}

// tlsTestClient is an HTTPS client that trusts ca and presents cert (none
// for the zero testpki.Cert); it follows redirects only if follow.
func tlsTestClient(t testing.TB, ca string, cert testpki.Cert, follow bool) *http.Client {
	tr := &http.Transport{TLSClientConfig: testpki.ClientConfig(t, ca, cert)}
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
	r, err := try(hc, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tlsRefused fails the test unless a GET of url with hc fails in TLS,
// before any HTTP answer.
func tlsRefused(t testing.TB, hc *http.Client, url, who string) {
	t.Helper()
	r, err := try(hc, "GET", url, "")
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
	pki := testpki.New(t)
	c := newTestClusterOn(t, "https", 3, func(cfg *config.Config) { cfg.TLS.Client, cfg.TLS.Peer = pki.MemberTLS(pki.Server) })
	hc := tlsTestClient(t, pki.CAFile, pki.Client, false)

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
	follow := tlsTestClient(t, pki.CAFile, pki.Client, true)
	if r := tlsDo(t, follow, "GET", c.url(follower, "/keys/hello"), ""); r.code != http.StatusOK || r.body != "world" {
		t.Errorf("default GET on follower %d, following the redirect: %d %q, want 200 \"world\"", follower, r.code, r.body)
	}

	// --join over https: the new member asks member 1's client URL, and
	// takes the log from the leader over the peer port.
	id4 := c.addMember(1)
	eventually(t, 10*time.Second, "member 4 to serve the key", func() bool {
		r, err := try(hc, "GET", c.url(id4, "/keys/hello?level=consistent"), "")
		return err == nil && r.code == http.StatusOK && r.body == "world"
	})
	var members []membership.View
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
	tlsRefused(t, tlsTestClient(t, pki.CAFile, testpki.Cert{}, false), c.url(1, "/keys/hello"), "a client without a certificate")
	tlsRefused(t, tlsTestClient(t, pki.CAFile, pki.Other, false), c.url(1, "/keys/hello"), "a client with a certificate from another CA")
	if r, err := try(noRedirect, "GET", strings.Replace(c.url(1, "/keys/hello"), "https:", "http:", 1), ""); err == nil {
		t.Errorf("plain http to the https port answered %d %q, want a failed request", r.code, r.body)
	}

	// The bootstrap checks ask the peers over TLS too: member 3 started
	// again with its data dir gone is refused, as the peers have seen it run.
	c.stop(3)
	cfg := c.config(3, "")
	cfg.Cluster = membership.PositionalCluster(c.peerURLs[:3]) // its --cluster, from before member 4 joined
	cfg.ClusterID = membership.DeriveClusterID(cfg.Cluster, membership.DefaultClusterToken)
	if err := os.RemoveAll(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	if err := c.tryStart(cfg); !errors.Is(err, bootstrap.ErrAlreadyBootstrapped) {
		t.Errorf("member 3 started again without its data dir: %v, want %v", err, bootstrap.ErrAlreadyBootstrapped)
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
	pki := testpki.New(t)
	c := newTestClusterOn(t, "https", 3, func(cfg *config.Config) {
		peerCert := pki.Server
		if cfg.ID == 4 {
			peerCert = pki.Other
		}
		cfg.TLS.Client, cfg.TLS.Peer = pki.MemberTLS(peerCert)
	})
	members := c.peerURLs[0] + bootstrap.MembersPath
	if r := tlsDo(t, tlsTestClient(t, pki.CAFile, pki.Server, false), "GET", members, ""); r.code != http.StatusOK {
		t.Fatalf("GET %s with the peer certificate: %d %q, want 200", members, r.code, r.body)
	}
	tlsRefused(t, tlsTestClient(t, pki.CAFile, pki.Other, false), members, "a peer with a certificate from another CA")
	tlsRefused(t, tlsTestClient(t, pki.CAFile, testpki.Cert{}, false), members, "a peer without a certificate")

	leader := c.waitLeader()
	id4 := c.joinMember(leader) // a learner it stays: it never catches up
	hc := tlsTestClient(t, pki.CAFile, pki.Client, false)
	if r := tlsDo(t, hc, "PUT", c.url(leader, "/keys/k"), "v"); r.code != http.StatusCreated {
		t.Fatalf("PUT with member 4 added but cut off: %d %q, want 201 (members 1 to 3 are the voters)", r.code, r.body)
	}
	// The leader sends member 4 a heartbeat every tick and rafthttp
	// redials it every 100 ms: 2 s is a hundred chances to get through.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(testTick) {
		if l := c.server(id4).raft.Leader(); l != 0 {
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

// TestTLSBadFiles proves a certificate, key or CA file that cannot be
// loaded stops a member at start with one line naming the file, before it
// takes a port.
func TestTLSBadFiles(t *testing.T) {
	pki := testpki.New(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		name string
		set  func(*config.Config)
		want string
	}{
		{"client cert missing", func(c *config.Config) { c.TLS.Client.CertFile = missing }, missing},
		{"client CA missing", func(c *config.Config) { c.TLS.Client.TrustedCAFile = missing }, missing},
		{"client key not a key", func(c *config.Config) { c.TLS.Client.KeyFile = pki.CAFile }, "client TLS"},
		{"peer CA not a certificate", func(c *config.Config) { c.TLS.Peer.TrustedCAFile = pki.Server.KeyFile }, "peer TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := flagTestConfig(t, filepath.Join(t.TempDir(), "raftkv-1"))
			cfg.Cluster[1] = strings.Replace(cfg.Cluster[1], "http:", "https:", 1)
			cfg.ClientURL = strings.Replace(cfg.ClientURL, "http:", "https:", 1)
			cfg.TLS.Client, cfg.TLS.Peer = pki.MemberTLS(pki.Server)
			tc.set(&cfg)
			_, err := flagTestStart(t, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.ContainsAny(err.Error(), "\r\n") {
				t.Errorf("startServer: %v, want one line with %q", err, tc.want)
			}
			if datadir.HasWAL(cfg.DataDir) {
				t.Errorf("a start refused for its TLS files left a WAL in %s", cfg.DataDir)
			}
		})
	}
}
