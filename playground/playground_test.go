package playground

import (
	"bytes"
	"context"
	"io"
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
		t.Skipf("no Postgres server programs: %v", err)
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
	t.Skip("no free port")
	return 0
}
