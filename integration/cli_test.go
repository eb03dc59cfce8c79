package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/walhook/walhook/config"
)

// envUpdateGolden rewrites the CLI golden files instead of comparing.
const envUpdateGolden = "WALHOOK_UPDATE_GOLDEN"

// cliEnv runs the walhook binary against a running API.
type cliEnv struct {
	*apiEnv
	bin string
}

func (c *cliEnv) command(args ...string) *exec.Cmd {
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(), "WALHOOK_URL="+c.base, "WALHOOK_TOKEN="+apiToken)
	return cmd
}

// run runs the binary with no terminal attached and returns its output.
func (c *cliEnv) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := c.command(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("walhook %v: %v", args, err)
	}
	c.bodies.Write(out.Bytes())
	c.bodies.Write(errb.Bytes())
	return out.String(), errb.String(), code
}

// ok runs a command that must succeed.
func (c *cliEnv) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := c.run(t, args...)
	if code != 0 {
		t.Fatalf("walhook %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// fails runs a command that must fail with one line on stderr containing
// want.
func (c *cliEnv) fails(t *testing.T, want string, args ...string) {
	t.Helper()
	out, errOut, code := c.run(t, args...)
	if code == 0 {
		t.Errorf("walhook %s: succeeded: %s", strings.Join(args, " "), out)
		return
	}
	if strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "walhook: ") || !strings.Contains(errOut, want) {
		t.Errorf("walhook %s: stderr %q, want one line with %q", strings.Join(args, " "), errOut, want)
	}
}

var (
	timeRe = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)
	uuidRe = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
)

// golden compares output with testdata/cli/NAME.golden, after replacing
// what changes from run to run (server URL, times, ids).
func (c *cliEnv) golden(t *testing.T, name, got string) {
	t.Helper()
	got = strings.ReplaceAll(got, c.base, "http://WALHOOK")
	got = timeRe.ReplaceAllString(got, "YYYY-MM-DDTHH:MM:SSZ") // same width: tables stay aligned
	got = uuidRe.ReplaceAllString(got, "<uuid>")
	path := filepath.Join("testdata", "cli", name+".golden")
	if os.Getenv(envUpdateGolden) != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with %s=1 to create it)", err, envUpdateGolden)
	}
	if got != string(want) {
		t.Errorf("%s: output differs from %s (run with %s=1 to update)\n--- got:\n%s--- want:\n%s", name, path, envUpdateGolden, got, want)
	}
}

// The client commands against a running service: tables (golden files),
// JSON for scripts, and one clear line for every failure.
func TestCLI(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`, "public.t")
	// The first failed attempt fails the message: one try, every run.
	b.cfg.Sinks[0].Retry.MaxAge = config.Duration(time.Microsecond)
	c := &cliEnv{apiEnv: startAPI(t, b), bin: walhookBin(t)}
	var healthy atomic.Bool
	healthy.Store(true)
	b.recv.setRespond(func(*request) int {
		if healthy.Load() {
			return 200
		}
		return 503
	})

	// Webhook sources.
	if out := c.ok(t, "source", "webhook", "add", "gh"); out != c.base+"/api/webhook/gh\n" {
		t.Errorf("source webhook add: %q", out)
	}
	c.fails(t, "NAME is required (no terminal to ask for it on)", "source", "webhook", "add")
	c.fails(t, `webhook source "gh": already exists`, "source", "webhook", "add", "gh")
	c.fails(t, "name: ", "source", "webhook", "add", "bad/name")
	c.golden(t, "source_list", c.ok(t, "source", "webhook", "list"))
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(c.ok(t, "source", "webhook", "list", "--json")), "\n") {
		names = append(names, decodeAs[map[string]any](t, []byte(line))["name"].(string))
	}
	if strings.Join(names, ",") != "gh,hook,tiny" {
		t.Errorf("source webhook list --json: %v", names)
	}
	if out := c.ok(t, "source", "webhook", "rm", "gh"); out != "removed webhook source gh\n" {
		t.Errorf("rm: %q", out)
	}
	c.fails(t, `webhook source "gh": not found`, "source", "webhook", "rm", "gh")

	// Queue three messages on a paused sink, in a known order.
	if out := c.ok(t, "sink", "pause", "s"); out != "sink s is paused\n" {
		t.Errorf("pause: %q", out)
	}
	c.must(t, 200, "POST", "/api/webhook/hook", `{"n": 1}`)
	c.must(t, 200, "POST", "/api/webhook/hook", `{"n": 2}`)
	b.exec(t, `INSERT INTO t VALUES (1, 'one')`)
	waitFor(t, 20*time.Second, "three pending messages", func() bool { return len(c.messages(t, "s", "?state=pending")) == 3 })

	c.golden(t, "sink_list", c.ok(t, "sink", "list"))
	c.golden(t, "sink_info", c.ok(t, "sink", "info", "s"))
	c.golden(t, "messages", c.ok(t, "messages", "s"))
	c.golden(t, "source_info", c.ok(t, "source", "webhook", "info", "hook"))
	lines := strings.Split(strings.TrimSpace(c.ok(t, "messages", "s", "--json", "--state", "pending", "--limit", "2")), "\n")
	if len(lines) != 2 {
		t.Fatalf("messages --json --limit 2: %d lines", len(lines))
	}
	for _, l := range lines {
		m := decodeAs[apiMessage](t, []byte(l))
		if m.State != "pending" || !json.Valid(m.Message) || m.Message[0] != '{' {
			t.Errorf("messages --json line: %s", l)
		}
	}
	sinkJSON := decodeAs[apiSink](t, []byte(c.ok(t, "sink", "info", "s", "--json")))
	if sinkJSON.Status != "paused" || sinkJSON.RawCounts["pending"] != 3 || sinkJSON.SigningSecret != "********" {
		t.Errorf("sink info --json: %+v", sinkJSON)
	}
	c.fails(t, `"lost" is not one of`, "messages", "s", "--state", "lost")
	c.fails(t, `sink "nope": not found`, "sink", "info", "nope")

	if out := c.ok(t, "sink", "resume", "s"); out != "sink s is active\n" {
		t.Errorf("resume: %q", out)
	}
	b.recv.waitCount(t, 3, 20*time.Second)

	// A failed message, redelivered.
	healthy.Store(false)
	b.exec(t, `INSERT INTO t VALUES (2, 'two')`)
	waitFor(t, 20*time.Second, "a failed message", func() bool { return len(c.messages(t, "s", "?state=failed")) == 1 })
	c.golden(t, "messages_failed", c.ok(t, "messages", "s", "--state", "failed"))
	healthy.Store(true)
	if out := c.ok(t, "redeliver", "s", "--failed"); out != "1 message(s) of sink s made deliverable now\n" {
		t.Errorf("redeliver --failed: %q", out)
	}
	b.recv.waitCount(t, 4, 20*time.Second)
	c.fails(t, "either --id (one or more) or --failed", "redeliver", "s")
	c.fails(t, "message 999999: not found", "redeliver", "s", "--id", "999999")

	// observe prints messages as they arrive; Ctrl-C ends it cleanly.
	obs := c.command("observe", "--sink", "s")
	stdout, err := obs.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var obsErr bytes.Buffer
	obs.Stderr = &obsErr
	if err := obs.Start(); err != nil {
		t.Fatal(err)
	}
	lineCh := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lineCh <- sc.Text()
		}
		close(lineCh)
	}()
	// The tail starts when observe connects; keep changing rows until it
	// shows one.
	var seen string
	for i := 10; seen == "" && i < 200; i++ {
		b.exec(t, `INSERT INTO t VALUES ($1, 'observed')`, i)
		select {
		case seen = <-lineCh:
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !regexp.MustCompile(`^\d+  s  public\.t:\d+  insert  \{"id":\d+,"v":"observed"\}$`).MatchString(seen) {
		t.Errorf("observe line: %q", seen)
	}
	_ = obs.Process.Signal(syscall.SIGINT)
	if err := obs.Wait(); err != nil {
		t.Errorf("observe after Ctrl-C: %v: %s", err, obsErr.String())
	}

	// Clear failures: one line each.
	c.fails(t, "rejected the token", "sink", "list", "--token", "wrong")
	c.fails(t, "cannot reach walhook at http://127.0.0.1:1 (connection refused)", "sink", "list", "--url", "http://127.0.0.1:1")
	c.fails(t, "needs a token", "sink", "list", "--token", " ")
	c.fails(t, "--url:", "sink", "list", "--url", "ftp://x")
}

// sink info on a pull sink: its kind (how consumers reach it) instead of
// an endpoint, none of the delivery workers' settings, and a message
// received but not acked counted in flight.
func TestCLIPullSinkInfo(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	c := &cliEnv{apiEnv: startAPI(t, b), bin: walhookBin(t)}
	b.exec(t, `INSERT INTO t VALUES (1)`)
	// Fewer than batch_size: no read ahead, so exactly one in flight.
	if got := c.receive(t, "s", map[string]any{"wait": "10s", "batch_size": 10, "visibility_timeout": "10m"}); len(got) != 1 {
		t.Fatalf("receive: %+v", got)
	}

	out := c.ok(t, "sink", "info", "s")
	c.golden(t, "sink_info_pull", out)
	for _, want := range []string{`(?m)^kind:\s+pull \(walhook receive s\)$`, `(?m)^in flight:\s+1$`, `(?m)^pending:\s+0$`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("sink info of a pull sink does not match %s:\n%s", want, out)
		}
	}
	for _, not := range []string{"concurrency", "request_timeout", "endpoint:", "path:"} {
		if strings.Contains(out, not) {
			t.Errorf("sink info of a pull sink shows %q:\n%s", not, out)
		}
	}
}
