package config

import (
	"fmt"
	"regexp"
	"strings"
)

var (
	nameRe       = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	identRe      = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	tablePartRe  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)
	headerNameRe = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

const (
	maxNameLen  = 128
	maxIdentLen = 63 // Postgres NAMEDATALEN-1
)

// ValidName reports whether s may name an endpoint, webhook source or sink.
// Names appear in URL paths (/api/sinks/{name}) and ingest URLs, so they are
// limited to characters that never need escaping, and "." and ".." are out
// because routers clean them away.
func ValidName(s string) bool {
	return len(s) <= maxNameLen && nameRe.MatchString(s) && s != "." && s != ".."
}

func validIdent(s string) bool { return len(s) <= maxIdentLen && identRe.MatchString(s) }

// SplitTable splits a sink table entry, "schema.table" or "schema.*" (table
// is then "*"). Names are matched as written, case-sensitively, against the
// names in the replication stream; quoted identifiers holding dots or other
// punctuation are not supported.
func SplitTable(s string) (schema, table string, ok bool) {
	schema, table, ok = strings.Cut(s, ".")
	if !ok || len(schema) > maxIdentLen || len(table) > maxIdentLen || !tablePartRe.MatchString(schema) {
		return "", "", false
	}
	if table != "*" && !tablePartRe.MatchString(table) {
		return "", "", false
	}
	return schema, table, true
}

// MatchTable reports whether a sink table entry ("public.orders" or
// "public.*") covers schema.table, so every package matches alike.
func MatchTable(pattern, schema, table string) bool {
	ps, pt, ok := SplitTable(pattern)
	return ok && ps == schema && (pt == "*" || pt == table)
}

// checkUnique reports a name used twice within one kind of object.
func checkUnique(ch *checker, p *keyPath, name string, seen map[string]*keyPath, at *keyPath) {
	if name == "" {
		return
	}
	if prev, dup := seen[name]; dup {
		msg := fmt.Sprintf("%s is already used by %s", quote(name), prev.show)
		if l := ch.lineOf(prev); l > 0 {
			msg += fmt.Sprintf(" (line %d)", l)
		}
		ch.errorf(p, "%s", msg)
		return
	}
	seen[name] = at
}

func checkName(ch *checker, p *keyPath, name string) {
	switch {
	case name == "":
		ch.errorf(p, "is required")
	case !ValidName(name):
		ch.errorf(p, "%s is not a valid name (letters, digits, _ . -; at most %d)", quote(name), maxNameLen)
	}
}

func checkIdent(ch *checker, p *keyPath, s, what string) bool {
	if !validIdent(s) {
		ch.errorf(p, "%s is not a valid %s (lower-case letters, digits and _, not starting with a digit, at most %d)", quote(s), what, maxIdentLen)
		return false
	}
	return true
}

// checkTables checks a list of "schema.table" / "schema.*" entries.
func checkTables(ch *checker, p *keyPath, tables []string) {
	seen := map[string]bool{}
	for i, t := range tables {
		tp := p.index(i, "")
		if _, _, ok := SplitTable(t); !ok {
			ch.errorf(tp, "%s is not schema-qualified (want schema.table or schema.*)", quote(t))
			continue
		}
		if seen[t] {
			ch.errorf(tp, "%s is listed twice", quote(t))
		}
		seen[t] = true
	}
}
