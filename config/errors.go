package config

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Error is one problem in a configuration. It carries its position apart
// from the text so the CLI can print compiler-style lines and the HTTP API
// can answer a 400 that names the offending field.
type Error struct {
	File string // the config file; empty for objects that came through the API
	Line int    // 1-based line in File; 0 when unknown
	Col  int    // 1-based byte column; 0 when unknown
	Key  string // the key path as shown to users, e.g. sinks[orders].batch_size
	Msg  string // what is wrong; never contains a secret value
}

// Error formats the problem as one line: "file:line: key: msg".
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0 && e.Col > 0:
		fmt.Fprintf(&b, "%s:%d:%d: ", e.File, e.Line, e.Col)
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// joinErrors sorts problems by line (unknown lines last, otherwise in the
// order they were found) and joins them, one per line.
func joinErrors(errs []*Error) error {
	if len(errs) == 0 {
		return nil
	}
	slices.SortStableFunc(errs, func(a, b *Error) int {
		la, lb := a.Line, b.Line
		if la == 0 {
			la = int(^uint(0) >> 1)
		}
		if lb == 0 {
			lb = int(^uint(0) >> 1)
		}
		return cmp.Compare(la, lb)
	})
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}

// keyPath is a position in the config tree. key is canonical (indexes, used to
// find YAML line numbers); show is what users read (sink names instead of
// indexes where there is a usable name).
type keyPath struct {
	key, show string
	parent    *keyPath
}

func (p *keyPath) field(name string) *keyPath {
	q := &keyPath{key: name, show: name, parent: p}
	if p != nil && p.key != "" {
		q.key = p.key + "." + name
		q.show = p.show + "." + name
	}
	return q
}

func (p *keyPath) index(i int, label string) *keyPath {
	n := strconv.Itoa(i)
	if label == "" || !ValidName(label) {
		label = n
	}
	q := &keyPath{key: "[" + n + "]", show: "[" + label + "]", parent: p}
	if p != nil {
		q.key = p.key + q.key
		q.show = p.show + q.show
	}
	return q
}

func (p *keyPath) entry(k string) *keyPath {
	q := &keyPath{key: "[" + k + "]", show: "[" + k + "]", parent: p}
	if p != nil {
		q.key = p.key + q.key
		q.show = p.show + q.show
	}
	return q
}

func (p *keyPath) String() string {
	if p == nil {
		return ""
	}
	return p.show
}

// checker collects every problem instead of stopping at the first, so one
// `config check` run shows the user everything to fix.
type checker struct {
	file  string
	lines map[string]int // canonical key path -> line; nil without a file
	errs  []*Error
}

func (c *checker) lineOf(p *keyPath) int {
	for q := p; q != nil; q = q.parent {
		if l, ok := c.lines[q.key]; ok && q.key != "" {
			return l
		}
	}
	return 0
}

func (c *checker) errorf(p *keyPath, format string, args ...any) {
	c.errs = append(c.errs, &Error{File: c.file, Line: c.lineOf(p), Key: p.String(), Msg: fmt.Sprintf(format, args...)})
}

func (c *checker) list() []error {
	if len(c.errs) == 0 {
		return nil
	}
	out := make([]error, len(c.errs))
	for i, e := range c.errs {
		out[i] = e
	}
	return out
}

// quote shows a user value in a message, shortened so one bad value cannot
// flood the terminal.
func quote(s string) string {
	const max = 80
	if r := []rune(s); len(r) > max {
		s = string(r[:max]) + "…"
	}
	return strconv.Quote(s)
}

// Suggest returns ` (did you mean "x"?)` when one candidate is close to s
// (case ignored; the first of equally close ones), else "". It is the one
// rule for misspelt keys and names, in config files and API bodies alike.
func Suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" || bestD > max(1, len(s)/3) {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 64 || len(rb) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
