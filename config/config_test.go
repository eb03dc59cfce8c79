package config

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const file = "walhook.yaml"

// testKey is base64 of 32 bytes.
const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func parse(t *testing.T, src string, env map[string]string) (*Config, error) {
	t.Helper()
	return Parse(file, []byte(src), envOf(env))
}

func mustParse(t *testing.T, src string, env map[string]string) *Config {
	t.Helper()
	c, err := parse(t, src, env)
	if err != nil {
		t.Fatalf("Parse: unexpected error:\n%v\n--- input:\n%s", err, src)
	}
	return c
}

// base is a minimal valid config; sinkBase(extra) appends keys to its sink.
const base = `database:
  url: postgres://app@localhost:5432/app
http_endpoints:
  - name: api
    url: http://localhost:8080
webhook_sources:
  - name: hook
sinks:
  - name: orders
    endpoint: api
    tables: [public.orders]
`

// baseSinkLines is the line count of base: keys added by sinkBase start on
// the next line.
var baseSinkLines = strings.Count(base, "\n")

func sinkBase(extra string) string {
	var b strings.Builder
	b.WriteString(base)
	for l := range strings.SplitSeq(strings.TrimRight(extra, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}

func TestResolvePath(t *testing.T) {
	t.Setenv(EnvPath, "")
	if got := ResolvePath(""); got != "walhook.yaml" {
		t.Errorf("default: got %q", got)
	}
	t.Setenv(EnvPath, "/etc/walhook/env.yaml")
	if got := ResolvePath(""); got != "/etc/walhook/env.yaml" {
		t.Errorf("env: got %q", got)
	}
	if got := ResolvePath("flag.yaml"); got != "flag.yaml" {
		t.Errorf("flag: got %q", got)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "w.yaml")
	t.Setenv("WALHOOK_TEST_DB", "postgres://app@db:5432/app")
	if err := os.WriteFile(p, []byte("database: {url: \"${WALHOOK_TEST_DB}\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Database.URL != "postgres://app@db:5432/app" || c.Path != p {
		t.Errorf("got url %q path %q", c.Database.URL, c.Path)
	}

	_, err = Load(filepath.Join(dir, "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") || !strings.Contains(err.Error(), EnvPath) {
		t.Errorf("missing file: got %v", err)
	}
}

func TestExpandEnv(t *testing.T) {
	t.Parallel()
	env := map[string]string{"SET": "value", "EMPTY": "", "MULTI": "a\n    b"}
	tests := []struct {
		name, in, want string
	}{
		{"set", "x: ${SET}", "x: value"},
		{"unset is empty", "x: '${NOPE}'", "x: ''"},
		{"default when unset", "x: ${NOPE:-dflt}", "x: dflt"},
		{"default when empty", "x: ${EMPTY:-dflt}", "x: dflt"},
		{"default unused when set", "x: ${SET:-dflt}", "x: value"},
		{"empty default", "x: '${NOPE:-}'", "x: ''"},
		{"default with colon and slash", "x: ${NOPE:-postgres://h:5432/db}", "x: postgres://h:5432/db"},
		{"dollar dollar", "x: $$HOME and $${SET}", "x: $HOME and ${SET}"},
		{"lone dollar kept", "x: a$b $ $", "x: a$b $ $"},
		{"several on a line", "x: ${SET}-${SET}", "x: value-value"},
		{"no braces no expansion", "x: $SET", "x: $SET"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, errs := expandEnv(file, []byte(tt.in), envOf(env))
			if len(errs) > 0 {
				t.Fatalf("errors: %v", errs)
			}
			if string(out) != tt.want {
				t.Errorf("got %q, want %q", out, tt.want)
			}
		})
	}

	malformed := []struct {
		name, in string
		want     []string
	}{
		{"unterminated", "a: 1\nb: ${SET\n", []string{"walhook.yaml:2:4:", "unterminated ${"}},
		{"unterminated at eof", "a: ${", []string{"walhook.yaml:1:4:", "unterminated ${"}},
		{"bad name", "a: 1\n\nb: x${1BAD}\n", []string{"walhook.yaml:3:5:", `invalid variable name "1BAD"`}},
		{"empty name", "a: ${}", []string{"walhook.yaml:1:4:", "empty variable name"}},
		{"space in name", "a: ${A B}", []string{"walhook.yaml:1:4:", `"A B"`}},
	}
	for _, tt := range malformed {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.in, env)
			assertErr(t, err, tt.want...)
		})
	}

	// Through Parse: a value with a newline must not shift later line numbers.
	src := "database:\n  url: |\n    ${MULTI}\n  slot: Bad\n"
	_, err := parse(t, src, env)
	assertErr(t, err, "walhook.yaml:4: database.slot:", `"Bad"`)
}

func TestEmptyFileOnlyNeedsDatabase(t *testing.T) {
	t.Parallel()
	for _, src := range []string{"", "\n", "# only a comment\n", "---\n", "~\n"} {
		_, err := parse(t, src, nil)
		assertErr(t, err, "walhook.yaml", "database.url: is required")
		if n := len(strings.Split(err.Error(), "\n")); n != 1 {
			t.Errorf("%q: want exactly one error, got %d:\n%v", src, n, err)
		}
	}
}

func TestUnknownKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, src string
		want      []string
	}{
		{"top level", "database: {url: postgres://h/db}\nsinkz: []\n", []string{"walhook.yaml:2: sinkz: unknown key", `did you mean "sinks"`}},
		{"nested", "database:\n  url: postgres://h/db\n  slots: x\n", []string{"walhook.yaml:3: database.slots: unknown key", `"slot"`}},
		{"in a sink", sinkBase("bach_size: 3"), []string{"walhook.yaml:12: sinks[orders].bach_size: unknown key", `"batch_size"`}},
		{"in retry", sinkBase("retry: {initial: 1s}"), []string{"walhook.yaml:12: sinks[orders].retry.initial: unknown key"}},
		{"in filter", sinkBase("filters:\n  - {column: a, op: '=', value: 1, extra: 2}"), []string{"walhook.yaml:13: sinks[orders].filters[0].extra: unknown key"}},
		{"in endpoint", strings.Replace(base, "url: http://localhost:8080", "url: http://localhost:8080\n    timeout: 3s", 1), []string{"walhook.yaml:6: http_endpoints[api].timeout: unknown key"}},
		{"in log", base + "log: {level: info, colour: red}\n", []string{"walhook.yaml:12: log.colour: unknown key"}},
		{"yaml-only field Path", "database: {url: postgres://h/db}\npath: x\n", []string{"walhook.yaml:2: path: unknown key"}},
		{"duplicate key", "database: {url: postgres://h/db}\nlog: {level: info}\nlog: {level: debug}\n", []string{"walhook.yaml:3: log: is given twice (first at line 2)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.src, nil)
			assertErr(t, err, tt.want...)
		})
	}
}

func TestTypeErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, src string
		want      []string
	}{
		{"bad duration", sinkBase("request_timeout: 30x"), []string{"walhook.yaml:12: sinks[orders].request_timeout:", `"30x" is not a duration`}},
		{"bare number duration", sinkBase("retry: {max_age: 5}"), []string{"sinks[orders].retry.max_age:", `"5" is not a duration`}},
		{"list duration", "database: {url: postgres://h/db}\nretention: {keep: [1s]}\n", []string{"walhook.yaml:2: retention.keep: must be a duration"}},
		{"int", sinkBase("batch_size: lots"), []string{"walhook.yaml:12: sinks[orders].batch_size:", `"lots" is not a whole number`}},
		{"list for scalar", sinkBase("message: [change]"), []string{"sinks[orders].message: must be text, not a list"}},
		{"scalar for list", sinkBase("actions: insert"), []string{"sinks[orders].actions: must be a list, not a single value"}},
		{"scalar for mapping", "database: postgres://h/db\n", []string{"walhook.yaml:1: database: must be a mapping"}},
		{"top level list", "- a\n", []string{"walhook.yaml:1:", "top level must be a mapping"}},
		{"syntax", "database: {url: x\n", []string{"walhook.yaml:"}},
		{"two documents", "database: {url: postgres://h/db}\n---\nlog: {}\n", []string{"walhook.yaml:2:", "only one YAML document"}},
		{"unnamed sink uses index", "database: {url: postgres://h/db}\nsinks:\n  - batch_size: x\n", []string{"walhook.yaml:3: sinks[0].batch_size:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.src, nil)
			assertErr(t, err, tt.want...)
		})
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c := mustParse(t, base, nil)
	want := Config{
		Database: Database{URL: "postgres://app@localhost:5432/app", Slot: "walhook", Publication: "walhook", LeaderLease: Duration(15 * time.Second)},
		State:    State{URL: "postgres://app@localhost:5432/app", Schema: "walhook"},
		Server:   Server{Listen: "127.0.0.1:7376", PublicURL: "http://127.0.0.1:7376"},
		Log:      Log{Level: "info", Format: "json"},
		Egress:   Egress{Deny: []string{"169.254.0.0/16", "fe80::/10"}},
		HTTPEndpoints: []HTTPEndpoint{
			{Name: "api", URL: "http://localhost:8080"},
		},
		WebhookSources: []WebhookSource{{Name: "hook", MaxBodyBytes: 1048576}},
		Sinks: []Sink{{
			Name:           "orders",
			Kind:           "webhook",
			Endpoint:       "api",
			Tables:         []string{"public.orders"},
			Actions:        []string{"insert", "update", "delete"},
			Message:        "change",
			BatchSize:      1,
			RequestTimeout: Duration(30 * time.Second),
			MaxAckPending:  10000,
			Retry:          Retry{InitialBackoff: Duration(time.Second), MaxBackoff: Duration(3 * time.Minute)},
			Start:          "end",
			Concurrency:    32, // batch_size 1 (DefaultConcurrencyFor)
		}},
		Path: file,
	}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", *c, want)
	}

	// Defaults must not alias the package-level Actions slice.
	c.Sinks[0].Actions[0] = "changed"
	if Actions[0] != "insert" {
		t.Fatal("ApplyDefaults shares the Actions slice")
	}

	tests := []struct {
		listen, public string
	}{
		{":7376", "http://localhost:7376"},
		{"0.0.0.0:9000", "http://localhost:9000"},
		{"[::]:9000", "http://localhost:9000"},
		{"[::1]:9000", "http://[::1]:9000"},
		{"example.com:80", "http://example.com:80"},
	}
	for _, tt := range tests {
		c := mustParse(t, "database: {url: postgres://h/db}\nserver: {listen: '"+tt.listen+"'}\n", nil)
		if c.Server.PublicURL != tt.public {
			t.Errorf("listen %q: public_url %q, want %q", tt.listen, c.Server.PublicURL, tt.public)
		}
	}

	// A state.url that is set is kept; a large initial_backoff lifts the
	// default max_backoff instead of failing on a key the user never wrote.
	c = mustParse(t, sinkBase("retry: {initial_backoff: 10m}")+"state: {url: 'postgres://other/db'}\n", nil)
	if c.State.URL != "postgres://other/db" {
		t.Errorf("state.url = %q", c.State.URL)
	}
	if got := c.Sinks[0].Retry.MaxBackoff.D(); got != 10*time.Minute {
		t.Errorf("max_backoff = %v, want 10m", got)
	}

	// An empty value (here an unset variable) means the default; an
	// explicit zero is an error (TestValidation).
	c = mustParse(t, sinkBase("batch_size: ${BATCH}\nrequest_timeout: ${TIMEOUT}\nretry: {initial_backoff: }"), nil)
	if s := c.Sinks[0]; s.BatchSize != 1 || s.RequestTimeout.D() != 30*time.Second || s.Retry.InitialBackoff.D() != time.Second {
		t.Errorf("empty values: %+v", s)
	}

	// The exported ApplyDefaults treat zero as unset (API objects).
	var s Sink
	s.ApplyDefaults()
	if s.BatchSize != 1 || s.Concurrency != 32 || s.RequestTimeout.D() != 30*time.Second || s.Start != "end" || len(s.Actions) != 3 {
		t.Errorf("Sink.ApplyDefaults: %+v", s)
	}
	var w WebhookSource
	w.ApplyDefaults()
	if w.MaxBodyBytes != DefaultMaxBodyBytes {
		t.Errorf("WebhookSource.ApplyDefaults: %+v", w)
	}
	var cfg Config
	cfg.Database.URL = "postgres://h/db"
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate after ApplyDefaults: %v", err)
	}
}

const specExample = `
database:                        # the source: needs wal_level=logical, a role with REPLICATION
  url: postgres://app@localhost:5432/app
  slot: walhook                  # created if missing (pgoutput)
  publication: walhook           # created if missing, for the tables the sinks name
state:                           # where walhook keeps its own tables (outbox, sinks, ...)
  url: ""                        # default: database.url
  schema: walhook
server:
  listen: 127.0.0.1:7376
  public_url: http://localhost:7376   # used to print ingest URLs
  api_tokens: ["${WALHOOK_API_TOKEN}"]
encryption_key: ${WALHOOK_ENCRYPTION_KEY}  # base64 of 32 bytes; required when any encrypted_headers exist
log: {level: info, format: json}   # format: json | console

http_endpoints:
  - name: orders_api
    url: http://localhost:8080   # base URL
    headers: {X-Env: prod}
    encrypted_headers: {Authorization: "Bearer ${ORDERS_TOKEN}"}  # stored encrypted, never shown

webhook_sources:
  - name: my_webhook
    max_body_bytes: 1048576

retention:                       # change retention: captured changes kept for replays
  tables: [public.orders]
  keep: 168h

sinks:
  - name: orders_webhook
    endpoint: orders_api
    path: /hooks/orders          # appended to the endpoint URL
    tables: [public.orders]      # schema-qualified; "public.*" = every table of a schema
    actions: [insert, update, delete]     # default: all three; backfill "read" always flows
    webhook_sources: [my_webhook]         # subscriptions: inbound webhooks also go to this sink
    filters:                     # all must hold; ops: = != < <= > >= in not_in is_null is_not_null changed
      - {column: status, op: "=", value: shipped}
    message: change              # change | row
    group_by: {public.orders: [customer_id]}   # default: the table's primary key
    batch_size: 1                # 1..1000
    request_timeout: 30s
    max_ack_pending: 10000       # messages delivered-but-unacked, backing-off included
    retry: {initial_backoff: 1s, max_backoff: 3m, max_age: 0s}   # max_age 0 = retry forever
    signing_secret: ""           # whsec_...: sign requests (Standard Webhooks)
    start: end                   # end | beginning (beginning = backfill every table first)
`

var specEnv = map[string]string{
	"WALHOOK_API_TOKEN":      "tok_0123456789",
	"WALHOOK_ENCRYPTION_KEY": testKey,
	"ORDERS_TOKEN":           "s3cr3t",
}

func TestSpecExample(t *testing.T) {
	t.Parallel()
	c := mustParse(t, specExample, specEnv)
	if c.Server.APITokens[0] != "tok_0123456789" || c.EncryptionKey != testKey {
		t.Errorf("expansion: %+v / %q", c.Server, c.EncryptionKey)
	}
	if got := c.HTTPEndpoints[0].EncryptedHeaders["Authorization"]; got != "Bearer s3cr3t" {
		t.Errorf("encrypted header = %q", got)
	}
	if c.State.URL != c.Database.URL {
		t.Errorf("state.url = %q", c.State.URL)
	}
	s := c.Sinks[0]
	if s.Filters[0] != (Filter{Column: "status", Op: "=", Value: "shipped"}) {
		t.Errorf("filter = %#v", s.Filters[0])
	}
	if !reflect.DeepEqual(s.GroupBy, map[string][]string{"public.orders": {"customer_id"}}) {
		t.Errorf("group_by = %v", s.GroupBy)
	}
	if c.Retention.Keep.D() != 168*time.Hour || s.Retry.MaxBackoff.D() != 3*time.Minute || s.Retry.MaxAge != 0 {
		t.Errorf("durations: %v %v %v", c.Retention.Keep, s.Retry.MaxBackoff, s.Retry.MaxAge)
	}
	if c.Sinks[0].Concurrency != DefaultConcurrencyFor(c.Sinks[0].BatchSize) {
		t.Errorf("concurrency = %d", c.Sinks[0].Concurrency)
	}

	// Without the environment: empty token and missing key are reported,
	// one line each, and the list names the file.
	_, err := parse(t, specExample, nil)
	assertErr(t, err, "walhook.yaml:12: server.api_tokens[0]: is empty", "walhook.yaml:13: encryption_key: is required because http_endpoints[orders_api] has encrypted_headers")
}

// TestValidation covers every rule; each case asserts the file, the line
// where it is known, the key path and the bad value.
func TestValidation(t *testing.T) {
	t.Parallel()
	sl := func(n int) string { // line of the n-th key added by sinkBase
		return "walhook.yaml:" + strconv.Itoa(baseSinkLines+n) + ": "
	}
	top := func(s string) string { return "database: {url: 'postgres://app@h/db'}\n" + s }
	tests := []struct {
		name string
		src  string
		want []string
	}{
		// database / state
		{"database url required", "log: {level: info}\n", []string{"walhook.yaml: database.url: is required"}},
		{"database url bad port", "database: {url: 'postgres://app@h:99999/db'}\n", []string{"walhook.yaml:1: database.url:", `"postgres://app@h:99999/db"`, "invalid port"}},
		{"database dsn", "database: {url: 'host=h port=x'}\n", []string{"walhook.yaml:1: database.url:", `"host=h port=x"`}},
		{"slot", "database: {url: 'postgres://h/db', slot: My-Slot}\n", []string{"walhook.yaml:1: database.slot:", `"My-Slot"`}},
		{"publication too long", "database:\n  url: postgres://h/db\n  publication: " + strings.Repeat("p", 64) + "\n", []string{"walhook.yaml:3: database.publication:", "ppp", "at most 63"}},
		{"state url", top("state: {url: 'postgres://h:x/db'}\n"), []string{"walhook.yaml:2: state.url:", `"postgres://h:x/db"`}},
		{"state schema", top("state: {schema: 9lives}\n"), []string{"walhook.yaml:2: state.schema:", `"9lives"`}},
		{"state schema pg_", top("state: {schema: pg_walhook}\n"), []string{"walhook.yaml:2: state.schema:", `"pg_walhook"`, "reserved"}},
		{"state schema captured", strings.Replace(base, "tables: [public.orders]", "tables: [walhook.outbox]", 1),
			[]string{"walhook.yaml:11: sinks[orders].tables[0]:", `"walhook.outbox"`, "state schema"}},
		// server / log / key
		{"listen", top("server: {listen: localhost}\n"), []string{"walhook.yaml:2: server.listen:", `"localhost"`, "host:port"}},
		{"listen port", top("server: {listen: 'h:70000'}\n"), []string{"walhook.yaml:2: server.listen:", `"h:70000"`}},
		{"public url", top("server: {public_url: 'localhost:7376'}\n"), []string{"walhook.yaml:2: server.public_url:", `"localhost:7376"`, "http"}},
		{"api token with space", top("server: {api_tokens: ['a b']}\n"), []string{"walhook.yaml:2: server.api_tokens[0]:", "spaces"}},
		{"log level", top("log: {level: verbose}\n"), []string{"walhook.yaml:2: log.level:", `"verbose"`, "trace, debug, info, warn, error"}},
		{"log format", top("log: {format: text}\n"), []string{"walhook.yaml:2: log.format:", `"text"`, "json, console"}},
		{"encryption key short", top("encryption_key: c2hvcnQ=\n"), []string{"walhook.yaml:2: encryption_key:", "decodes to 5 bytes, want 32"}},
		{"encryption key not base64", top("encryption_key: '!!!'\n"), []string{"walhook.yaml:2: encryption_key:", "not valid base64"}},
		{"encryption key required", top("http_endpoints:\n  - {name: e, url: 'http://h', encrypted_headers: {A: b}}\n"), []string{"walhook.yaml: encryption_key: is required because http_endpoints[e] has encrypted_headers"}},
		// egress
		{"egress allow not a cidr", top("egress: {allow: [10.0.0.0/8, 'not-a-net']}\n"), []string{"walhook.yaml:2: egress.allow[1]:", `"not-a-net" is not a CIDR`}},
		{"egress deny bad mask", top("egress:\n  deny: [10.0.0.0/33]\n"), []string{"walhook.yaml:3: egress.deny[0]:", `"10.0.0.0/33" is not a CIDR`}},
		// endpoints
		{"endpoint name dup", top("http_endpoints:\n  - {name: e, url: 'http://h'}\n  - {name: e, url: 'http://h'}\n"), []string{"walhook.yaml:4: http_endpoints[e].name:", `"e" is already used by http_endpoints[0] (line 3)`}},
		{"endpoint name empty", top("http_endpoints:\n  - {url: 'http://h'}\n"), []string{"walhook.yaml:3: http_endpoints[0].name: is required"}},
		{"endpoint name chars", top("http_endpoints:\n  - {name: 'a b', url: 'http://h'}\n"), []string{"walhook.yaml:3: http_endpoints[0].name:", `"a b" is not a valid name`}},
		{"endpoint name dotdot", top("http_endpoints:\n  - {name: '..', url: 'http://h'}\n"), []string{`".." is not a valid name`}},
		{"endpoint url relative", top("http_endpoints:\n  - name: e\n    url: /hooks\n"), []string{"walhook.yaml:4: http_endpoints[e].url:", `"/hooks"`, "absolute"}},
		{"endpoint url scheme", top("http_endpoints:\n  - name: e\n    url: ftp://h\n"), []string{"walhook.yaml:4: http_endpoints[e].url:", `"ftp://h"`}},
		{"endpoint url required", top("http_endpoints:\n  - name: e\n"), []string{"walhook.yaml:3: http_endpoints[e].url: is required"}},
		{"header name", top("http_endpoints:\n  - name: e\n    url: http://h\n    headers: {'X Bad': v}\n"), []string{"walhook.yaml:5: http_endpoints[e].headers[X Bad]:", `"X Bad" is not a valid HTTP header name`}},
		{"header twice", top("encryption_key: " + testKey + "\nhttp_endpoints:\n  - name: e\n    url: http://h\n    headers: {Authorization: a}\n    encrypted_headers: {authorization: b}\n"), []string{"walhook.yaml:7: http_endpoints[e].encrypted_headers[authorization]: is also in headers"}},
		// webhook sources
		{"webhook name", top("webhook_sources:\n  - name: 'a/b'\n"), []string{"walhook.yaml:3: webhook_sources[0].name:", `"a/b"`}},
		{"webhook dup", top("webhook_sources:\n  - name: a\n  - name: a\n"), []string{"walhook.yaml:4: webhook_sources[a].name:", `"a" is already used`}},
		{"webhook body", top("webhook_sources:\n  - name: a\n    max_body_bytes: -1\n"), []string{"walhook.yaml:4: webhook_sources[a].max_body_bytes: -1 must be greater than 0"}},
		{"webhook body explicit zero", top("webhook_sources:\n  - name: a\n    max_body_bytes: 0\n"), []string{"walhook.yaml:4: webhook_sources[a].max_body_bytes: 0 must be greater than 0"}},
		// retention
		{"retention table", top("retention:\n  tables: [orders]\n  keep: 1h\n"), []string{"walhook.yaml:3: retention.tables[0]:", `"orders" is not schema-qualified`}},
		{"retention keep", top("retention:\n  tables: [public.orders]\n"), []string{"walhook.yaml:2: retention.keep: is required"}},
		{"retention keep zero", top("retention:\n  tables: [public.orders]\n  keep: 0s\n"), []string{"walhook.yaml:4: retention.keep: is required"}},
		{"retention keep negative", top("retention:\n  keep: -1h\n"), []string{"walhook.yaml:3: retention.keep: -1h0m0s must not be negative"}},
		// sinks
		{"sink dup", base + "  - {name: orders, endpoint: api, tables: [public.x]}\n", []string{"walhook.yaml:12: sinks[orders].name:", `"orders" is already used by sinks[0] (line 9)`}},
		{"sink name", strings.Replace(base, "name: orders", "name: 'or ders'", 1), []string{"walhook.yaml:9: sinks[0].name:", `"or ders"`}},
		{"sink endpoint", strings.Replace(base, "endpoint: api", "endpoint: apx", 1), []string{"walhook.yaml:10: sinks[orders].endpoint:", `"apx" is not a defined http_endpoint`, `did you mean "api"`}},
		{"sink endpoint required", strings.Replace(base, "    endpoint: api\n", "", 1), []string{"walhook.yaml:9: sinks[orders].endpoint: is required"}},
		{"sink needs tables or sources", strings.Replace(base, "    tables: [public.orders]\n", "", 1), []string{"walhook.yaml:9: sinks[orders].tables: a sink needs tables, webhook_sources or both"}},
		{"sink sources only ok", strings.Replace(base, "    tables: [public.orders]\n", "    webhook_sources: [hook]\n", 1), nil},
		{"sink table unqualified", strings.Replace(base, "[public.orders]", "[public.orders, orders]", 1), []string{"walhook.yaml:11: sinks[orders].tables[1]:", `"orders" is not schema-qualified`}},
		{"sink table wildcard ok", strings.Replace(base, "[public.orders]", "['public.*']", 1), nil},
		{"sink table bad wildcard", strings.Replace(base, "[public.orders]", "['*.orders']", 1), []string{"sinks[orders].tables[0]:", `"*.orders"`}},
		{"sink table dup", strings.Replace(base, "[public.orders]", "[public.a, public.a]", 1), []string{"sinks[orders].tables[1]:", `"public.a" is listed twice`}},
		{"sink webhook source", sinkBase("webhook_sources: [hok]"), []string{sl(1) + "sinks[orders].webhook_sources[0]:", `"hok" is not a defined webhook source`, `"hook"`}},
		{"sink action", sinkBase("actions: [insert, upsert]"), []string{sl(1) + "sinks[orders].actions[1]:", `"upsert" is not one of insert, update, delete`}},
		{"sink action read", sinkBase("actions: [read]"), []string{`"read" is not one of`}},
		{"sink actions empty", sinkBase("actions: []"), []string{sl(1) + "sinks[orders].actions: must list at least one"}},
		{"filter column", sinkBase("filters: [{op: is_null}]"), []string{sl(1) + "sinks[orders].filters[0].column: is required"}},
		{"filter op", sinkBase("filters: [{column: a, op: '==', value: 1}]"), []string{sl(1) + "sinks[orders].filters[0].op:", `"==" is not an operator`}},
		{"filter op missing", sinkBase("filters: [{column: a, value: 1}]"), []string{sl(1) + "sinks[orders].filters[0].op: is required"}},
		{"filter value missing", sinkBase("filters: [{column: a, op: '>='}]"), []string{sl(1) + "sinks[orders].filters[0].value: is required for op \">=\""}},
		{"filter value null", sinkBase("filters: [{column: a, op: '=', value: null}]"), []string{"sinks[orders].filters[0].value: is required", "is_null"}},
		{"filter value list for =", sinkBase("filters: [{column: a, op: '!=', value: [1, 2]}]"), []string{sl(1) + "sinks[orders].filters[0].value: must be a single value for op \"!=\", not a list"}},
		{"filter value map", sinkBase("filters: [{column: a, op: '<', value: {x: 1}}]"), []string{"sinks[orders].filters[0].value: must be a single value", "not a mapping"}},
		{"filter in needs list", sinkBase("filters: [{column: a, op: in, value: 3}]"), []string{sl(1) + "sinks[orders].filters[0].value: must be a list for op in, not a single value"}},
		{"filter in missing", sinkBase("filters: [{column: a, op: not_in}]"), []string{"sinks[orders].filters[0].value: is required for op not_in"}},
		{"filter in empty", sinkBase("filters: [{column: a, op: in, value: []}]"), []string{"sinks[orders].filters[0].value: must list at least one value"}},
		{"filter in nested", sinkBase("filters: [{column: a, op: in, value: [1, [2]]}]"), []string{"sinks[orders].filters[0].value[1]: must be a single, non-null value, not a list"}},
		{"filter is_null value", sinkBase("filters: [{column: a, op: is_null, value: 1}]"), []string{sl(1) + "sinks[orders].filters[0].value: must be left out for op is_null"}},
		{"filter changed value", sinkBase("filters: [{column: a, op: changed, value: x}]"), []string{"sinks[orders].filters[0].value: must be left out for op changed"}},
		{"message", sinkBase("message: rows"), []string{sl(1) + "sinks[orders].message:", `"rows" is not one of change, row`, `did you mean "row"`}},
		{"group_by table not in sink", sinkBase("group_by: {public.items: [id]}"), []string{sl(1) + "sinks[orders].group_by[public.items]:", `"public.items" is not among the sink's tables`}},
		{"group_by covered by wildcard", strings.Replace(base, "[public.orders]", "['public.*']", 1) + "    group_by: {public.items: [id]}\n", nil},
		{"group_by unqualified", sinkBase("group_by: {orders: [id]}"), []string{"sinks[orders].group_by[orders]:", `"orders" is not a schema-qualified table`}},
		{"group_by no columns", sinkBase("group_by: {public.orders: []}"), []string{sl(1) + "sinks[orders].group_by[public.orders]: must list at least one column"}},
		{"batch_size high", sinkBase("batch_size: 5000"), []string{sl(1) + "sinks[orders].batch_size: 5000 is out of range 1..1000"}},
		{"batch_size zero", sinkBase("batch_size: 0"), []string{sl(1) + "sinks[orders].batch_size: 0 is out of range 1..1000"}},
		{"batch_size negative", sinkBase("batch_size: -1"), []string{sl(1) + "sinks[orders].batch_size: -1 is out of range 1..1000"}},
		{"request_timeout zero", sinkBase("request_timeout: 0s"), []string{sl(1) + "sinks[orders].request_timeout: 0s must be greater than 0"}},
		{"request_timeout negative", sinkBase("request_timeout: -5s"), []string{sl(1) + "sinks[orders].request_timeout: -5s must be greater than 0"}},
		{"max_ack_pending zero", sinkBase("max_ack_pending: 0"), []string{sl(1) + "sinks[orders].max_ack_pending: 0 must be at least 1"}},
		{"max_ack_pending below batch", sinkBase("batch_size: 100\nmax_ack_pending: 50"), []string{sl(2) + "sinks[orders].max_ack_pending: 50 is less than batch_size 100"}},
		{"initial_backoff zero", sinkBase("retry: {initial_backoff: 0s}"), []string{sl(1) + "sinks[orders].retry.initial_backoff: 0s must be greater than 0"}},
		{"max_backoff below initial", sinkBase("retry:\n  initial_backoff: 2s\n  max_backoff: 1s"), []string{sl(3) + "sinks[orders].retry.max_backoff: 1s is less than initial_backoff 2s"}},
		{"max_age negative", sinkBase("retry: {max_age: -1m}"), []string{sl(1) + "sinks[orders].retry.max_age: -1m0s must not be negative"}},
		{"signing secret prefix", sinkBase("signing_secret: abc"), []string{sl(1) + "sinks[orders].signing_secret:", `must start with "whsec_"`}},
		{"signing secret base64", sinkBase("signing_secret: 'whsec_***'"), []string{sl(1) + "sinks[orders].signing_secret:", "followed by base64"}},
		{"signing secret empty key", sinkBase("signing_secret: whsec_"), []string{sl(1) + "sinks[orders].signing_secret:", "followed by base64"}},
		{"signing secret ok", sinkBase("signing_secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), nil},
		{"start", sinkBase("start: now"), []string{sl(1) + "sinks[orders].start:", `"now" is not one of end, beginning`}},
		{"concurrency zero", sinkBase("concurrency: 0"), []string{sl(1) + "sinks[orders].concurrency: 0 is out of range 1..64"}},
		{"concurrency high", sinkBase("concurrency: 65"), []string{sl(1) + "sinks[orders].concurrency: 65 is out of range 1..64"}},
		{"path", sinkBase("path: hooks"), []string{sl(1) + "sinks[orders].path:", `"hooks" must start with /`}},
		{"kind", sinkBase("kind: queue"), []string{sl(1) + "sinks[orders].kind:", `"queue" is not one of webhook, pull`}},
		{"pull with endpoint", sinkBase("kind: pull"), []string{"walhook.yaml:10: sinks[orders].endpoint:", "must be left out for a pull sink"}},
		{"pull with path and secret", strings.Replace(sinkBase("kind: pull\npath: /h\nsigning_secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "    endpoint: api\n", "", 1),
			[]string{"sinks[orders].path: must be left out for a pull sink", "sinks[orders].signing_secret: must be left out"}},
		{"pull ok", strings.Replace(sinkBase("kind: pull\nmax_ack_pending: 50\nretry: {max_age: 1h}"), "    endpoint: api\n", "", 1), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.src, nil)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v\n--- input:\n%s", err, tt.src)
				}
				return
			}
			assertErr(t, err, tt.want...)
		})
	}
}

func TestAllErrorsReported(t *testing.T) {
	t.Parallel()
	src := sinkBase("batch_size: 5000\nconcurrency: 0\nstart: never") + "log: {level: loud}\n"
	_, err := parse(t, src, nil)
	assertErr(t, err, "batch_size", "concurrency", "start", "log.level")
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 4 {
		t.Fatalf("want 4 errors, got %d:\n%v", len(lines), err)
	}
	// Sorted by line: the log line comes last.
	if !strings.Contains(lines[3], "log.level") {
		t.Errorf("errors not in file order:\n%v", err)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.File != file || ce.Line == 0 || ce.Key == "" {
		t.Errorf("errors.As(*Error): %+v", ce)
	}
}

func TestSecretsNeverInErrors(t *testing.T) {
	t.Parallel()
	const secret = "Sup3rS3cretValue"
	tests := []struct {
		name, src string
		env       map[string]string
	}{
		{"encryption key", "encryption_key: ${K}\n", map[string]string{"K": secret}},
		{"encryption key base64 wrong size", "encryption_key: U3VwM3JTM2NyZXRWYWx1ZQ==\n", nil}, // base64 of the secret
		{"encryption key type", "encryption_key: [" + secret + "]\n", nil},
		{"api token with space", "server: {api_tokens: ['" + secret + " x']}\n", nil},
		{"api token scalar", "server: {api_tokens: " + secret + "}\n", nil},
		{"api token mapping", "server: {api_tokens: [{" + secret + ": 1}]}\n", nil},
		{"encrypted header newline", "http_endpoints:\n  - name: e\n    url: http://h\n    encrypted_headers: {Authorization: \"Bearer " + secret + "\\r\\nX: y\"}\n", nil},
		{"encrypted header list", "http_endpoints:\n  - name: e\n    url: http://h\n    encrypted_headers: {Authorization: [" + secret + "]}\n", nil},
		{"plain header newline", "http_endpoints:\n  - name: e\n    url: http://h\n    headers: {Authorization: \"" + secret + "\\n\"}\n", nil},
		{"signing secret", sinkBase("signing_secret: " + secret), nil},
		{"signing secret bad base64", sinkBase("signing_secret: whsec_" + secret + "!"), nil},
		{"signing secret type", sinkBase("signing_secret: {a: " + secret + "}"), nil},
		{"db url password", "database: {url: 'postgres://app:" + secret + "@h:99999/db'}\n", nil},
		{"db url password unparsable", "database: {url: 'postgres://app:" + secret + " x@h/db'}\n", nil},
		{"db dsn password", "database: {url: 'host=h port=x password=" + secret + "'}\n", nil},
		{"db dsn quoted password", "database: {url: \"host=h port=x password='" + secret + " x'\"}\n", nil},
		{"state url password", "database: {url: 'postgres://h/db'}\nstate: {url: 'postgres://u:" + secret + "@h:x/db'}\n", nil},
		{"endpoint url password", "http_endpoints:\n  - name: e\n    url: 'ftp://u:" + secret + "@h'\n", nil},
		{"endpoint url password broken", "http_endpoints:\n  - name: e\n    url: 'http://u:" + secret + "@h:port/x'\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.src, tt.env)
			if err == nil {
				t.Fatalf("expected an error for:\n%s", tt.src)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), secret[:7]) {
				t.Errorf("secret leaked:\n%v", err)
			}
		})
	}
}

func TestValidateSinkForAPI(t *testing.T) {
	t.Parallel()
	s := Sink{Name: "s", Endpoint: "e", Tables: []string{"public.t"}}
	s.ApplyDefaults()
	if errs := ValidateSink(s, map[string]bool{"e": true}, nil); errs != nil {
		t.Fatalf("valid sink: %v", errs)
	}
	s.BatchSize = 2000
	s.WebhookSources = []string{"nope"}
	errs := ValidateSink(s, map[string]bool{"x": true}, map[string]bool{})
	got := errors.Join(errs...).Error()
	for _, want := range []string{
		`endpoint: "e" is not a defined http_endpoint`,
		`webhook_sources[0]: "nope" is not a defined webhook source`,
		"batch_size: 2000 is out of range 1..1000",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	if len(errs) != 3 || strings.Contains(got, "sinks[") || strings.Contains(got, file) {
		t.Errorf("want 3 relative errors, got:\n%s", got)
	}

	if errs := ValidateEndpoint(HTTPEndpoint{Name: "e", URL: "http://h", EncryptedHeaders: map[string]string{"A": "b"}}, false); len(errs) != 1 ||
		errs[0].Error() != "encrypted_headers: need encryption_key in the service config" {
		t.Errorf("ValidateEndpoint: %v", errs)
	}
	if errs := ValidateEndpoint(HTTPEndpoint{Name: "e", URL: "https://h/base"}, false); errs != nil {
		t.Errorf("ValidateEndpoint valid: %v", errs)
	}
	if errs := ValidateWebhookSource(WebhookSource{Name: "w"}); len(errs) != 1 || !strings.Contains(errs[0].Error(), "max_body_bytes: 0") {
		t.Errorf("ValidateWebhookSource: %v", errs)
	}
}

func TestFilterValues(t *testing.T) {
	t.Parallel()
	c := mustParse(t, sinkBase(`filters:
  - {column: d, op: "=", value: 2024-01-02}
  - {column: n, op: in, value: [1, 2.5, true, x, 2024-01-02T10:00:00Z]}`), nil)
	if v := c.Sinks[0].Filters[0].Value; v != "2024-01-02" {
		t.Errorf("date value = %#v, want the string as written", v)
	}
	want := []any{1, 2.5, true, "x", "2024-01-02T10:00:00Z"}
	if v := c.Sinks[0].Filters[1].Value; !reflect.DeepEqual(v, want) {
		t.Errorf("list value = %#v, want %#v", v, want)
	}
}

func TestDurationJSON(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(Retry{InitialBackoff: Duration(time.Second), MaxBackoff: Duration(3 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"initial_backoff":"1s","max_backoff":"3m0s","max_age":"0s"}`; string(b) != want {
		t.Errorf("marshal: %s, want %s", b, want)
	}
	var r Retry
	if err := json.Unmarshal([]byte(`{"initial_backoff":"250ms","max_backoff":"1h","max_age":null}`), &r); err != nil {
		t.Fatal(err)
	}
	if r.InitialBackoff.D() != 250*time.Millisecond || r.MaxBackoff.D() != time.Hour || r.MaxAge != 0 {
		t.Errorf("unmarshal: %+v", r)
	}
	for _, bad := range []string{`{"max_age":"soon"}`, `{"max_age":5}`, `{"max_age":true}`} {
		if err := json.Unmarshal([]byte(bad), &r); err == nil || !strings.Contains(err.Error(), "duration") {
			t.Errorf("%s: got %v", bad, err)
		}
	}
}

func TestTablesAndSecrets(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		pattern, schema, table string
		want                   bool
	}{
		{"public.orders", "public", "orders", true},
		{"public.*", "public", "orders", true},
		{"public.*", "other", "orders", false},
		{"public.orders", "public", "order", false},
		{"orders", "public", "orders", false},
	} {
		if got := MatchTable(tt.pattern, tt.schema, tt.table); got != tt.want {
			t.Errorf("MatchTable(%q, %q, %q) = %v", tt.pattern, tt.schema, tt.table, got)
		}
	}
	if k, err := DecodeEncryptionKey(testKey); err != nil || len(k) != 32 {
		t.Errorf("DecodeEncryptionKey: %v", err)
	}
	s := Sink{SigningSecret: "whsec_dGVzdA=="}
	if k, err := s.SigningKey(); err != nil || string(k) != "test" {
		t.Errorf("SigningKey: %q %v", k, err)
	}
	if k, err := (&Sink{}).SigningKey(); k != nil || err != nil {
		t.Errorf("empty SigningKey: %q %v", k, err)
	}
}

func TestHostileInputDoesNotPanicOrHang(t *testing.T) {
	t.Parallel()
	laughs := `a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
`
	bombInFilter := "database: {url: postgres://h/db}\nx: &x [1,1,1,1,1,1,1,1,1,1]\n"
	inputs := []string{
		laughs,
		bombInFilter,
		laughs + "retention:\n  tables: *g\n",
		laughs + "sinks: [{name: s, filters: [{column: a, op: in, value: *g}]}]\n",
		sinkBase("filters: [{column: a, op: in, value: &v [1, *v]}]"),
		"database: &d {url: postgres://h/db, <<: *d}\n",
		"database:\n  <<: {url: postgres://h/db, slot: s}\n  slot: t\n",
		"database:\n  <<: [x]\n",
		"? [a]\n: b\n",
		"database: !!binary aGVsbG8=\n",
		"sinks: [~, null]\ndatabase: {url: postgres://h/db}\n",
		"\x00\xff\xfe",
		"database: {url: \"\\u0000\"}\n",
		strings.Repeat("[", 10000),
		"sinks:\n  - group_by: {~: [a]}\n",
		"sinks:\n  - filters: [[]]\n",
	}
	for i, in := range inputs {
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("input %d panicked: %v", i, r)
				}
			}()
			_, _ = Parse(file, []byte(in), nil)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("input %d hangs", i)
		}
	}
	// Merges work like in go-yaml: explicit keys override merged ones.
	c := mustParse(t, "database:\n  <<: {url: 'postgres://h/db', slot: s}\n  slot: t\n", nil)
	if c.Database.Slot != "t" || c.Database.URL != "postgres://h/db" {
		t.Errorf("merge: %+v", c.Database)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(specExample)
	f.Add(base)
	f.Add("x: ${A:-b} $$ ${")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(file, []byte(s), envOf(specEnv))
		if (c == nil) == (err == nil) {
			t.Fatalf("want exactly one of config and error: %v %v", c, err)
		}
	})
}

func assertErr(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("expected an error containing %q", want)
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error lacks %q:\n%s", w, msg)
		}
	}
	for l := range strings.SplitSeq(msg, "\n") {
		if !strings.HasPrefix(l, file) {
			t.Errorf("error line does not name the file: %q", l)
		}
	}
}

// An explicit deny list replaces the link-local default; "deny: []" refuses
// nothing, which is how an operator reaches a link-local receiver on
// purpose.
func TestEgressDenyDefault(t *testing.T) {
	t.Parallel()
	db := "database: {url: 'postgres://app@h/db'}\n"
	for _, tt := range []struct {
		src  string
		want []string
	}{
		{db, []string{"169.254.0.0/16", "fe80::/10"}},
		{db + "egress: {allow: [10.0.0.0/8]}\n", []string{"169.254.0.0/16", "fe80::/10"}},
		{db + "egress: {deny: []}\n", []string{}},
		{db + "egress: {deny: [10.1.0.0/16]}\n", []string{"10.1.0.0/16"}},
	} {
		c := mustParse(t, tt.src, nil)
		if !slices.Equal(c.Egress.Deny, tt.want) || c.Egress.Deny == nil {
			t.Errorf("%q: egress.deny = %#v, want %#v", tt.src, c.Egress.Deny, tt.want)
		}
	}
}

// A leader lease too short to renew is an error that names the key.
func TestLeaderLeaseTooShort(t *testing.T) {
	t.Parallel()
	_, err := Parse("walhook.yaml", []byte("database: {url: postgres://a@b/c, leader_lease: 1s}\n"), func(string) (string, bool) { return "", false })
	if err == nil || !strings.Contains(err.Error(), "database.leader_lease") || !strings.Contains(err.Error(), "at least 3s") {
		t.Fatalf("got %v, want an error naming database.leader_lease", err)
	}
}

// Small batches get enough workers to keep messages flowing to a slow
// receiver; large ones are not multiplied into thousands in flight.
func TestDefaultConcurrencyFollowsBatchSize(t *testing.T) {
	t.Parallel()
	for batch, want := range map[int]int{1: 32, 2: 16, 4: 8, 8: 4, 100: 4} {
		s := Sink{BatchSize: batch}
		s.ApplyDefaults()
		if s.Concurrency != want {
			t.Errorf("batch_size %d: concurrency %d, want %d", batch, s.Concurrency, want)
		}
	}
}
