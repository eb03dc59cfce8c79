package playground

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/pgcluster"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The playground starts from nothing, prints a psql line that works, and
// prints the delivery of the change that line makes, run the moment the
// line appears.
func TestPlayground(t *testing.T) {
	if _, err := pgcluster.FindBinaries(context.Background(), ""); err != nil {
		skipUnlessCI(t, "no Postgres server programs: %v", err)
	}
	// Not t.TempDir: as root, Postgres runs as the postgres user, which
	// must be able to reach the data folder.
	dir, err := os.MkdirTemp("", "walhook-playground-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{DataDir: dir, PGPort: freePort(t), Listen: "127.0.0.1:0", Out: out, Log: io.Discard})
	}()
	re := regexp.MustCompile(`psql '([^']+)' -c "(INSERT[^"]+)"`)
	var m []string
	deadline := time.Now().Add(60 * time.Second)
	for m == nil {
		if time.Now().After(deadline) {
			t.Fatalf("no psql line printed:\n%s", out)
		}
		select {
		case err := <-done:
			t.Fatalf("playground stopped: %v\n%s", err, out)
		default:
		}
		m = re.FindStringSubmatch(out.String())
		time.Sleep(50 * time.Millisecond)
	}
	checkConsoleLink(t, out.String())
	conn, err := pgx.Connect(ctx, m[1])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, m[2]); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), `"customer_id": 42`) {
		if time.Now().After(deadline) {
			t.Fatalf("delivery not printed:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkReceiveLine(t, out.String())
	conn.Close(ctx)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("playground exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("playground did not stop on cancel")
	}
}

func freePort(t *testing.T) int {
	for p := 55100; p < 55400; p++ {
		if portFree(p) {
			return p
		}
	}
	skipUnlessCI(t, "no free port in 55100-55399")
	return 0
}

// skipUnlessCI skips a test that cannot run on this machine, except under
// CI=true, where every test must run: there it fails.
func skipUnlessCI(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format+" (under CI=true this test must run)", args...)
	}
	t.Skipf(format, args...)
}

// checkConsoleLink follows the banner's console link as the page does:
// the page loads, the link's code signs in once (it stands for the
// token, which is not in the link), and never again.
func checkConsoleLink(t *testing.T, banner string) {
	t.Helper()
	m := regexp.MustCompile(`Console:\s+(http://[^/\s]+)/#login=([0-9a-f]+)`).FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("no console sign-in link in the banner:\n%s", banner)
	}
	base, code := m[1], m[2]
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "/console/app.js") {
		t.Fatalf("GET / of the console: %d %s", resp.StatusCode, page)
	}
	redeem := func() (int, string) {
		resp, err := http.Post(base+"/console/login", "application/json", strings.NewReader(`{"code":"`+code+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Token string `json:"token"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Token
	}
	if status, token := redeem(); status != 200 || token != "dev" {
		t.Fatalf("sign-in link: %d, token %q", status, token)
	}
	if status, _ := redeem(); status != 401 {
		t.Errorf("the sign-in link worked twice (status %d)", status)
	}
}

// checkReceiveLine runs what the banner's walhook receive line does,
// through the API: the pull sink has the change too.
func checkReceiveLine(t *testing.T, banner string) {
	t.Helper()
	m := regexp.MustCompile(`walhook receive (\S+) --follow --ack --url (\S+) --token (\S+)`).FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("no walhook receive line in the banner:\n%s", banner)
	}
	req, err := http.NewRequest("POST", m[2]+"/api/sinks/"+m[1]+"/receive", strings.NewReader(`{"wait": "10s"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+m[3])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"customer_id":42`) {
		t.Errorf("receive from %s: %d %s", m[1], resp.StatusCode, body)
	}
}
