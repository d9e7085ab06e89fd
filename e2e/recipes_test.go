package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readmeMember is the client URL the README's commands use: member 1 of the
// Procfile's cluster. The recipes run against a test member in its place.
const readmeMember = "http://127.0.0.1:12380"

// readmeRecipes reads the shell blocks the README marks with
// <!-- recipe: NAME -->, by name, so that the test runs what a user copies.
func readmeRecipes(t *testing.T) map[string]string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	recipes := make(map[string]string)
	re := regexp.MustCompile("(?s)<!-- recipe: ([a-z]+) -->\n```sh\n(.*?)```")
	for _, m := range re.FindAllStringSubmatch(string(readme), -1) {
		recipes[m[1]] = m[2]
	}
	return recipes
}

// recipeRun is one recipe running under bash in a process group of its own,
// so that its background loops can be killed with it, as a crashed client's
// would be.
type recipeRun struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

// Write collects the recipe's output; bash writes from several processes.
func (r *recipeRun) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.Write(p)
}

// output is what the recipe has printed so far.
func (r *recipeRun) output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.String()
}

// kill ends the recipe and every process it started.
func (r *recipeRun) kill() {
	syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
	<-r.done
}

// runRecipe starts recipe against member url with args as $1..., and kills
// it when the test ends.
func runRecipe(t *testing.T, recipe, url string, args ...string) *recipeRun {
	t.Helper()
	script := strings.ReplaceAll(recipe, readmeMember, url)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	r := &recipeRun{done: make(chan struct{})}
	r.cmd = exec.CommandContext(ctx, "bash", append([]string{"-c", script, "recipe"}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = r, r
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r.cmd.Cancel = func() error { return syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) }
	if err := r.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		r.cmd.Wait()
		close(r.done)
		cancel()
	}()
	t.Cleanup(r.kill)
	return r
}

// TestReadmeRecipes runs the README's lease recipes, a service registry, a
// lock and a leader election, as a user pastes them, against a live
// cluster, and checks that each does what the README says it does.
func TestReadmeRecipes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs raftkv processes")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("the README's recipes need curl: apt-get install curl")
	}
	recipes := readmeRecipes(t)
	for _, name := range []string{"service", "lock", "election"} {
		if recipes[name] == "" {
			t.Fatalf("README.md has no <!-- recipe: %s --> sh block", name)
		}
	}
	c := newE2ECluster(t, e2eBuild(t))
	if c.pki != nil {
		t.Skip("the README's recipes use plain http")
	}
	c.startThree()
	c.eventually(20*time.Second, "member 1 to answer GET /health with 200", func() bool {
		r, err := e2eTry(e2eClient, "GET", c.url(1, "/health"), "")
		return err == nil && r.code == http.StatusOK
	})
	member := c.url(1, "")

	// The recipes run one after another, on the test's own goroutine, as the
	// cluster's helpers fail the test from it.
	{ // service
		start := time.Now()
		r := runRecipe(t, recipes["service"], member)
		select {
		case <-r.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("the service recipe did not end within 20 s:\n%s", r.output())
		}
		out := r.output()
		// The recipe's lease has a 5 s TTL; the keepalive loop dies at once,
		// so the instance's key goes within 5 s and a quarter after its last
		// keepalive, and never before.
		if !strings.Contains(out, `"key":"services/web/a"`) {
			t.Errorf("the listing does not show the instance:\n%s", out)
		}
		if !strings.Contains(out, "event: delete\n") || !strings.Contains(out, `"reason":"expired"`) {
			t.Errorf("the watch does not show the instance's expiry:\n%s", out)
		}
		if took := time.Since(start); took < 5*time.Second || took > 12*time.Second {
			t.Errorf("the instance's key went %s after the recipe started, want 5 s to 12 s", took)
		}
		c.expect("GET", 1, "/keys/services/web/a?level=consistent", "", 404, "")
	}

	{ // lock
		r := runRecipe(t, recipes["lock"], member)
		<-r.done
		out := r.output()
		if !regexp.MustCompile(`(?m)^HTTP/1.1 201`).MatchString(out) || !regexp.MustCompile(`(?mi)^etag: "\d+"`).MatchString(out) {
			t.Errorf("taking the lock did not answer 201 with an ETag:\n%s", out)
		}
		// Revoking the lease released the lock: the key is gone.
		c.expect("GET", 1, "/keys/locks/db?level=consistent", "", 404, "")
	}

	{ // election
		a := runRecipe(t, recipes["election"], member, "a")
		c.eventually(10*time.Second, "candidate a to lead", func() bool { return strings.Contains(a.output(), "a leads") })
		b := runRecipe(t, recipes["election"], member, "b")
		// b is refused and waits on its watch. Watch it for longer than the
		// 5 s TTL: a leads as long as its keepalives hold its lease.
		time.Sleep(6 * time.Second)
		if strings.Contains(b.output(), "leads") {
			t.Fatalf("b leads while a lives:\n%s", b.output())
		}
		c.expect("GET", 1, "/keys/election/web?level=consistent", "", 200, "a")
		a.kill()
		died := time.Now()
		c.eventually(15*time.Second, "candidate b to lead after a died", func() bool { return strings.Contains(b.output(), "b leads") })
		if took := time.Since(died); took > 7*time.Second {
			t.Errorf("b led %s after a died, want within the 5 s TTL and a margin", took)
		}
		c.expect("GET", 1, "/keys/election/web?level=consistent", "", 200, "b")
	}
}
