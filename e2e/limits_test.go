package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"raftkv/limits"
)

// A member under a low file descriptor limit (listener.go): clients beyond
// what it leaves for them wait in the accept queue, the WAL and snapshots
// keep being written, and a limit too low to leave any is refused.

// reservedFDs is how many file descriptors a member keeps from its
// clients: a limit at or below it leaves clients none, and is refused.
const reservedFDs = limits.ReservedFDs

// floodFDLimit is the file descriptor limit TestClientConnectionFlood
// runs a member under: room for floodFDLimit-reservedFDs clients.
const floodFDLimit = 256

// TestClientConnectionFlood proves a member under a low file descriptor limit keeps writing its WAL and snapshots while more clients connect than that limit allows, and serves those held back once others leave.
func TestClientConnectionFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a raftkv process")
	}
	bin := e2eBuild(t)
	c := newE2ECluster(t, "/bin/sh") // to lower the limit, then exec raftkv
	id := c.allocate()
	args := append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, floodFDLimit), bin}, c.args(id, 1)...)
	c.start(id, "raftkv1", append(args, "--snapshot-count", "1")...) // every write saves a snapshot: a new file
	c.eventuallyGet(id, "/health", "ok\n", 10*time.Second)

	addr := strings.TrimPrefix(c.clients[0], "http://")
	dial := func() net.Conn {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatalf("connect to member 1: %v", err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	// send sends one request on conn and returns the answer's status line.
	send := func(conn net.Conn, method, path, body string) string {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: flood\r\nContent-Length: %d\r\n\r\n%s", method, path, len(body), body)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err.Error()
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.Status
	}
	first := dial() // accepted and served before the flood
	if got := send(first, "GET", "/health", ""); got != "200 OK" {
		t.Fatalf("GET /health before the flood: %s", got)
	}
	flood := make([]net.Conn, floodFDLimit+50)
	for i := range flood {
		flood[i] = dial() // the kernel completes the handshake; the member may not accept
	}
	for i := range 5 {
		if got := send(first, "PUT", fmt.Sprintf("/keys/k%d", i), "v"); got != "201 Created" {
			t.Fatalf("PUT %d during the flood of %d connections: %s", i, len(flood), got)
		}
	}
	// The last connections were held back in the accept queue; they are
	// accepted and served as the others leave.
	held := flood[len(flood)-20:]
	for _, conn := range flood[:len(flood)-20] {
		conn.Close()
	}
	for i, conn := range held {
		if got := send(conn, "GET", "/keys/k4?level=stale", ""); got != "200 OK" {
			t.Fatalf("GET on held-back connection %d: %s", i, got)
		}
	}
	// The snapshot of the last write is saved just after it is applied.
	c.eventually(5*time.Second, "a snapshot of the last write", func() bool {
		st := c.status(id)
		return st.SnapshotIndex >= st.AppliedIndex
	})
}

// TestClientFDLimitTooLow proves a member whose file descriptor limit leaves no room for clients beyond reservedFDs refuses to start, in one line.
func TestClientFDLimitTooLow(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a raftkv process")
	}
	bin := e2eBuild(t)
	c := newE2ECluster(t, bin)
	id := c.allocate()
	script := fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, reservedFDs)
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, bin}, c.args(id, 1)...)...)
	cmd.Dir = c.dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	dieWithTest(cmd)
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitCode() <= 0 {
			t.Errorf("raftkv under ulimit -n %d: %v, want a non-zero exit status", reservedFDs, err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("raftkv under ulimit -n %d still runs after 10s", reservedFDs)
	}
	// The log's "starting" line may come first; the exit is one line.
	out, ok := strings.CutSuffix(stderr.String(), "\n")
	line := out[strings.LastIndex(out, "\n")+1:]
	if !ok || !strings.HasPrefix(line, "raftkv: ") || !strings.Contains(line, "file descriptor limit") {
		t.Errorf("stderr %q, want a last line about the file descriptor limit", stderr.String())
	}
}
