package pgtest

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestPGDBName(t *testing.T) {
	valid := regexp.MustCompile(`^wt_[a-z0-9_]{0,30}_[0-9a-f]{8}$`)
	for _, name := range []string{"TestX", "TestVeryLong/sub test with spaces and ÜNICODE/and more levels", ""} {
		got := dbName(name)
		if !valid.MatchString(got) || len(got) > 63 {
			t.Errorf("dbName(%q) = %q", name, got)
		}
	}
	if first, second := dbName("TestX"), dbName("TestX"); first == second {
		t.Error("two databases of one test share a name")
	}
}

func TestPGWithDatabase(t *testing.T) {
	got, err := withDatabase("postgres://u:p@h:5432/postgres?sslmode=disable", "wt_x")
	if err != nil || got != "postgres://u:p@h:5432/wt_x?sslmode=disable" {
		t.Errorf("got %q, %v", got, err)
	}
	if _, err := withDatabase("host=h dbname=postgres password=secret", "x"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("keyword/value DSN: %v", err)
	}
	if r := redact("postgres://u:secret@h/db"); strings.Contains(r, "secret") {
		t.Errorf("redact: %s", r)
	}
}

// Without an engine the Docker probe must answer quickly: it runs on every
// machine that lacks the local programs.
func TestPGDockerProbeIsQuick(t *testing.T) {
	began := time.Now()
	err := dockerAnswers(t.Context())
	t.Logf("docker: %v (%v)", err, time.Since(began))
	if time.Since(began) > 12*time.Second {
		t.Errorf("probe took %v", time.Since(began))
	}
}
