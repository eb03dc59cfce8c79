package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Binaries are the PostgreSQL server programs a cluster is run with.
type Binaries struct {
	// InitDB, PGCtl and Postgres are absolute paths with symlinks resolved:
	// initdb and pg_ctl locate their sibling programs and the share folder
	// relative to their real location, so a symlink farm such as
	// /usr/local/bin must not be mistaken for the install folder.
	InitDB, PGCtl, Postgres string
	// Version is the server version, e.g. "15.8"; Major is its major
	// number (15), compared with a reused data folder's PG_VERSION.
	Version string
	Major   int
}

// binaryNames are the programs a cluster needs.
var binaryNames = []string{"initdb", "pg_ctl", "postgres"}

// searchGlobs are the install folders of the common packagings, searched when
// PATH does not have all three programs: Debian/Ubuntu keep the server
// programs off PATH (only wrappers such as pg_ctlcluster are on it), RHEL's
// PGDG packages use /usr/pgsql-N, and a source build defaults to
// /usr/local/pgsql.
var searchGlobs = []string{
	"/usr/lib/postgresql/*/bin",
	"/usr/pgsql-*/bin",
	"/usr/local/pgsql/bin",
}

// FindBinaries locates initdb, pg_ctl and postgres. With dir set it looks
// only there. Otherwise PATH wins when it has all three (the user's explicit
// choice); else the highest version among the usual install folders
// (/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, /usr/local/pgsql/bin) that
// has all three. The error names what is missing and where it looked.
func FindBinaries(ctx context.Context, dir string) (*Binaries, error) {
	if dir != "" {
		b, missing := binariesIn(dir)
		if b == nil {
			return nil, fmt.Errorf("pgcluster: %s missing in %s", strings.Join(missing, ", "), dir)
		}
		return b.withVersion(ctx)
	}

	var onPath []string
	var missingOnPath []string
	for _, name := range binaryNames {
		p, err := exec.LookPath(name)
		if err != nil {
			missingOnPath = append(missingOnPath, name)
			continue
		}
		onPath = append(onPath, p)
	}
	if len(missingOnPath) == 0 {
		b := &Binaries{}
		for i, dst := range []*string{&b.InitDB, &b.PGCtl, &b.Postgres} {
			real, err := resolve(onPath[i])
			if err != nil {
				return nil, fmt.Errorf("pgcluster: resolve %s: %w", onPath[i], err)
			}
			*dst = real
		}
		return b.withVersion(ctx)
	}

	type candidate struct {
		dir     string
		version []int
	}
	var candidates []candidate
	var searched []string
	for _, g := range searchGlobs {
		searched = append(searched, g)
		dirs, _ := filepath.Glob(g) // the patterns are constant and valid
		for _, d := range dirs {
			candidates = append(candidates, candidate{d, versionFromPath(d)})
		}
	}
	sort.SliceStable(candidates, func(i, j int) bool {
		return compareVersions(candidates[i].version, candidates[j].version) > 0
	})
	var incomplete []string
	for _, c := range candidates {
		b, missing := binariesIn(c.dir)
		if b == nil {
			incomplete = append(incomplete, fmt.Sprintf("%s lacks %s", c.dir, strings.Join(missing, ", ")))
			continue
		}
		return b.withVersion(ctx)
	}

	msg := fmt.Sprintf("pgcluster: PostgreSQL server programs not found: need initdb, pg_ctl and postgres; "+
		"looked on PATH (missing %s) and in %s", strings.Join(missingOnPath, ", "), strings.Join(searched, ", "))
	if len(incomplete) > 0 {
		msg += " (" + strings.Join(incomplete, "; ") + ")"
	} else {
		msg += " (none exist)"
	}
	msg += "; install the PostgreSQL server package (e.g. apt install postgresql) or put its bin folder on PATH"
	return nil, errors.New(msg)
}

// binariesIn returns the three programs of dir, or the names missing there.
func binariesIn(dir string) (*Binaries, []string) {
	var paths [3]string
	var missing []string
	for i, name := range binaryNames {
		p := filepath.Join(dir, name)
		real, err := resolve(p)
		if err != nil || !isExecutable(real) {
			missing = append(missing, name)
			continue
		}
		paths[i] = real
	}
	if len(missing) > 0 {
		return nil, missing
	}
	return &Binaries{InitDB: paths[0], PGCtl: paths[1], Postgres: paths[2]}, nil
}

func resolve(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)(?:\.(\d+))?`)

// withVersion asks postgres for its version. `postgres --version` is
// answered before the server's refusal to run as root, so it works for
// every caller.
func (b *Binaries) withVersion(ctx context.Context) (*Binaries, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.Postgres, "--version")
	cmd.Env = cleanEnv(nil)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %s --version: %w", b.Postgres, err)
	}
	m := versionRE.FindStringSubmatch(string(out))
	if m == nil {
		return nil, fmt.Errorf("pgcluster: %s --version: unexpected output %q", b.Postgres, strings.TrimSpace(string(out)))
	}
	b.Major, _ = strconv.Atoi(m[1])
	b.Version = m[1]
	if m[2] != "" {
		b.Version += "." + m[2]
	}
	return b, nil
}

var numbersRE = regexp.MustCompile(`\d+`)

// versionFromPath reads the version from an install folder name such as
// /usr/lib/postgresql/15/bin or /usr/pgsql-9.6/bin.
func versionFromPath(dir string) []int {
	parent := filepath.Base(filepath.Dir(dir))
	var v []int
	for _, s := range numbersRE.FindAllString(parent, -1) {
		n, _ := strconv.Atoi(s)
		v = append(v, n)
	}
	return v
}

func compareVersions(a, b []int) int {
	for i := 0; i < len(a) || i < len(b); i++ {
		var x, y int
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// cleanEnv is the environment for the Postgres programs: the caller's,
// without PG* variables (PGDATA, PGPORT, PGHOST, ... would silently
// redirect pg_ctl or the server), plus extra.
func cleanEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		if len(extra) > 0 {
			name, _, _ := strings.Cut(kv, "=")
			overridden := false
			for _, e := range extra {
				if strings.HasPrefix(e, name+"=") {
					overridden = true
					break
				}
			}
			if overridden {
				continue
			}
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}
