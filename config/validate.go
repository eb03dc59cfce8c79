package config

import (
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/walhook/walhook/egress"
)

// Limits of the configuration (docs/reference.md#2-configuration).
const (
	MaxBatchSize   = 1000
	MaxConcurrency = 64
)

// LogLevels and LogFormats are the values log.level and log.format accept.
var (
	LogLevels  = []string{"trace", "debug", "info", "warn", "error"}
	LogFormats = []string{"json", "console"}
)

// Message kinds and start positions a sink accepts.
var (
	Messages = []string{"change", "row"}
	Kinds    = []string{KindWebhook, KindPull}
	Starts   = []string{"end", "beginning"}
)

// Validate checks a Config built or changed in code; Parse already ran the
// same checks with line numbers. The error lists every problem, one a line.
func (c *Config) Validate() error {
	ch := &checker{file: c.Path}
	c.validate(ch)
	return joinErrors(ch.errs)
}

// ValidateSink checks one sink as the file loader does, for sinks created or
// changed through the API. endpoints and sources hold the names that exist;
// a nil map skips that reference check. Keys in the errors are relative to
// the sink (e.g. "retry.max_backoff"). Call ApplyDefaults first.
func ValidateSink(s Sink, endpoints, sources map[string]bool) []error {
	ch := &checker{}
	checkSink(ch, nil, &s, endpoints, sources)
	return ch.list()
}

// ValidateEndpoint checks one HTTP endpoint for the API. haveKey says
// whether the service has an encryption_key, which encrypted headers need.
func ValidateEndpoint(e HTTPEndpoint, haveKey bool) []error {
	ch := &checker{}
	checkEndpoint(ch, nil, &e)
	if len(e.EncryptedHeaders) > 0 && !haveKey {
		ch.errorf((*keyPath)(nil).field("encrypted_headers"), "need encryption_key in the service config")
	}
	return ch.list()
}

// ValidateWebhookSource checks one webhook source for the API. Call
// ApplyDefaults first.
func ValidateWebhookSource(w WebhookSource) []error {
	ch := &checker{}
	checkWebhookSource(ch, nil, &w)
	return ch.list()
}

func (c *Config) validate(ch *checker) {
	root := &keyPath{}

	db := root.field("database")
	if c.Database.URL == "" {
		ch.errorf(db.field("url"), "is required (postgres://user@host:5432/db or a key=value DSN)")
	} else {
		checkConnString(ch, db.field("url"), c.Database.URL)
	}
	checkIdent(ch, db.field("slot"), c.Database.Slot, "replication slot name")
	checkIdent(ch, db.field("publication"), c.Database.Publication, "publication name")
	if c.Database.LeaderLease < Duration(3*time.Second) {
		ch.errorf(db.field("leader_lease"), "%s is too short: at least 3s (renewed every third of it)", c.Database.LeaderLease)
	}

	st := root.field("state")
	if c.State.URL != "" && c.State.URL != c.Database.URL {
		checkConnString(ch, st.field("url"), c.State.URL)
	}
	if checkIdent(ch, st.field("schema"), c.State.Schema, "schema name") && strings.HasPrefix(c.State.Schema, "pg_") {
		ch.errorf(st.field("schema"), "%s: schema names starting with pg_ are reserved by Postgres", quote(c.State.Schema))
	}

	srv := root.field("server")
	listenOK := checkListen(ch, srv.field("listen"), c.Server.Listen)
	if listenOK && c.Server.PublicURL != defaultPublicURL(c.Server.Listen) {
		checkHTTPURL(ch, srv.field("public_url"), c.Server.PublicURL)
	}
	for i, t := range c.Server.APITokens {
		p := srv.field("api_tokens").index(i, "")
		switch {
		case t == "":
			ch.errorf(p, "is empty (is its environment variable set?)")
		case strings.ContainsFunc(t, func(r rune) bool { return r <= ' ' || r == 0x7f }):
			ch.errorf(p, "must not contain spaces or control characters (value not shown)")
		}
	}

	if c.EncryptionKey != "" {
		if _, err := DecodeEncryptionKey(c.EncryptionKey); err != nil {
			ch.errorf(root.field("encryption_key"), "%s; generate one with: openssl rand -base64 32", err)
		}
	} else {
		for i, e := range c.HTTPEndpoints {
			if len(e.EncryptedHeaders) > 0 {
				ch.errorf(root.field("encryption_key"), "is required because %s has encrypted_headers (base64 of 32 bytes; openssl rand -base64 32)",
					root.field("http_endpoints").index(i, e.Name))
				break
			}
		}
	}

	lg := root.field("log")
	checkOneOf(ch, lg.field("level"), c.Log.Level, LogLevels)
	checkOneOf(ch, lg.field("format"), c.Log.Format, LogFormats)

	eg := root.field("egress")
	for _, list := range []struct {
		key   string
		rules []string
	}{{"allow", c.Egress.Allow}, {"deny", c.Egress.Deny}} {
		for i, r := range list.rules {
			if _, err := egress.ParsePrefix(r); err != nil {
				ch.errorf(eg.field(list.key).index(i, ""), "%s", err)
			}
		}
	}

	endpoints := map[string]bool{}
	seen := map[string]*keyPath{}
	for i := range c.HTTPEndpoints {
		e := &c.HTTPEndpoints[i]
		p := root.field("http_endpoints").index(i, e.Name)
		checkEndpoint(ch, p, e)
		checkUnique(ch, p.field("name"), e.Name, seen, root.field("http_endpoints").index(i, ""))
		endpoints[e.Name] = true
	}

	sources := map[string]bool{}
	seen = map[string]*keyPath{}
	for i := range c.WebhookSources {
		w := &c.WebhookSources[i]
		p := root.field("webhook_sources").index(i, w.Name)
		checkWebhookSource(ch, p, w)
		checkUnique(ch, p.field("name"), w.Name, seen, root.field("webhook_sources").index(i, ""))
		sources[w.Name] = true
	}

	ret := root.field("retention")
	checkTables(ch, ret.field("tables"), c.Retention.Tables)
	switch {
	case c.Retention.Keep < 0:
		ch.errorf(ret.field("keep"), "%s must not be negative", c.Retention.Keep)
	case c.Retention.Keep == 0 && len(c.Retention.Tables) > 0:
		ch.errorf(ret.field("keep"), "is required when retention.tables is set (e.g. 168h)")
	}

	seen = map[string]*keyPath{}
	for i := range c.Sinks {
		s := &c.Sinks[i]
		p := root.field("sinks").index(i, s.Name)
		checkSink(ch, p, s, endpoints, sources)
		checkUnique(ch, p.field("name"), s.Name, seen, root.field("sinks").index(i, ""))
	}

	// walhook's own tables must never be captured
	// (docs/reference.md#6-backfills-retention-and-the-slot): with the state in
	// the source database, no captured table may be in the state schema.
	if c.State.URL == c.Database.URL {
		inState := func(p *keyPath, t string) {
			if sch, _, ok := SplitTable(t); ok && sch == c.State.Schema {
				ch.errorf(p, "%s is in walhook's own state schema %s, which is never captured", quote(t), quote(sch))
			}
		}
		for i, t := range c.Retention.Tables {
			inState(ret.field("tables").index(i, ""), t)
		}
		for i, s := range c.Sinks {
			for j, t := range s.Tables {
				inState(root.field("sinks").index(i, s.Name).field("tables").index(j, ""), t)
			}
		}
	}
}

func checkOneOf(ch *checker, p *keyPath, s string, allowed []string) bool {
	if !slices.Contains(allowed, s) {
		ch.errorf(p, "%s is not one of %s%s", quote(s), strings.Join(allowed, ", "), Suggest(s, allowed))
		return false
	}
	return true
}

func checkEndpoint(ch *checker, p *keyPath, e *HTTPEndpoint) {
	checkName(ch, p.field("name"), e.Name)
	checkHTTPURL(ch, p.field("url"), e.URL)
	checkHeaders(ch, p.field("headers"), e.Headers, false)
	checkHeaders(ch, p.field("encrypted_headers"), e.EncryptedHeaders, true)
	plain := map[string]bool{}
	for k := range e.Headers {
		plain[strings.ToLower(k)] = true
	}
	for _, k := range sortedKeys(e.EncryptedHeaders) {
		if plain[strings.ToLower(k)] {
			ch.errorf(p.field("encrypted_headers").entry(k), "is also in headers; give it once")
		}
	}
}

// checkHeaders never shows header values: plain headers are often secrets
// too, put in the wrong map.
func checkHeaders(ch *checker, p *keyPath, h map[string]string, encrypted bool) {
	seen := map[string]string{}
	for _, k := range sortedKeys(h) {
		v, hp := h[k], p.entry(k)
		if !headerNameRe.MatchString(k) {
			ch.errorf(hp, "%s is not a valid HTTP header name", quote(k))
			continue
		}
		if prev, dup := seen[strings.ToLower(k)]; dup {
			ch.errorf(hp, "is the same header as %s (header names ignore case)", quote(prev))
		}
		seen[strings.ToLower(k)] = k
		switch {
		case strings.ContainsAny(v, "\r\n\x00"):
			ch.errorf(hp, "value must not contain line breaks or NUL (value not shown)")
		case encrypted && strings.TrimSpace(v) == "":
			ch.errorf(hp, "value is empty (is its environment variable set?)")
		}
	}
}

func checkWebhookSource(ch *checker, p *keyPath, w *WebhookSource) {
	checkName(ch, p.field("name"), w.Name)
	if w.MaxBodyBytes <= 0 {
		ch.errorf(p.field("max_body_bytes"), "%d must be greater than 0", w.MaxBodyBytes)
	}
}

func checkSink(ch *checker, p *keyPath, s *Sink, endpoints, sources map[string]bool) {
	checkName(ch, p.field("name"), s.Name)

	checkOneOf(ch, p.field("kind"), s.Kind, Kinds)
	switch {
	case s.IsPull():
		// Consumers receive: nothing of walhook's own HTTP delivery applies.
		for _, f := range []struct{ key, val string }{{"endpoint", s.Endpoint}, {"path", s.Path}, {"signing_secret", s.SigningSecret}} {
			if f.val != "" {
				ch.errorf(p.field(f.key), "must be left out for a pull sink (consumers receive its messages, see POST /api/sinks/{name}/receive)")
			}
		}
	case s.Endpoint == "":
		ch.errorf(p.field("endpoint"), "is required (the name of an http_endpoint)")
	case endpoints != nil && !endpoints[s.Endpoint]:
		ch.errorf(p.field("endpoint"), "%s is not a defined http_endpoint%s", quote(s.Endpoint), Suggest(s.Endpoint, sortedKeys(endpoints)))
	}
	if s.Path != "" {
		if !strings.HasPrefix(s.Path, "/") {
			ch.errorf(p.field("path"), "%s must start with /", quote(s.Path))
		} else if strings.ContainsFunc(s.Path, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '#' }) {
			ch.errorf(p.field("path"), "%s must not contain spaces, control characters or #", quote(s.Path))
		}
	}

	if len(s.Tables) == 0 && len(s.WebhookSources) == 0 {
		ch.errorf(p.field("tables"), "a sink needs tables, webhook_sources or both")
	}
	checkTables(ch, p.field("tables"), s.Tables)
	seen := map[string]bool{}
	for i, w := range s.WebhookSources {
		wp := p.field("webhook_sources").index(i, "")
		switch {
		case sources != nil && !sources[w]:
			ch.errorf(wp, "%s is not a defined webhook source%s", quote(w), Suggest(w, sortedKeys(sources)))
		case seen[w]:
			ch.errorf(wp, "%s is listed twice", quote(w))
		}
		seen[w] = true
	}

	if len(s.Actions) == 0 {
		ch.errorf(p.field("actions"), "must list at least one of %s (or be left out for all)", strings.Join(Actions, ", "))
	}
	seen = map[string]bool{}
	for i, a := range s.Actions {
		ap := p.field("actions").index(i, "")
		if checkOneOf(ch, ap, a, Actions) && seen[a] {
			ch.errorf(ap, "%s is listed twice", quote(a))
		}
		seen[a] = true
	}

	for i, f := range s.Filters {
		checkFilter(ch, p.field("filters").index(i, ""), f)
	}

	checkOneOf(ch, p.field("message"), s.Message, Messages)

	for _, tbl := range sortedKeys(s.GroupBy) {
		gp := p.field("group_by").entry(tbl)
		sch, name, ok := SplitTable(tbl)
		switch {
		case !ok || name == "*":
			ch.errorf(gp, "%s is not a schema-qualified table (want schema.table)", quote(tbl))
		case !slices.ContainsFunc(s.Tables, func(pat string) bool { return MatchTable(pat, sch, name) }):
			ch.errorf(gp, "%s is not among the sink's tables", quote(tbl))
		}
		cols := s.GroupBy[tbl]
		if len(cols) == 0 {
			ch.errorf(gp, "must list at least one column")
		}
		seenCol := map[string]bool{}
		for j, c := range cols {
			cp := gp.index(j, "")
			switch {
			case c == "":
				ch.errorf(cp, "column name is empty")
			case seenCol[c]:
				ch.errorf(cp, "%s is listed twice", quote(c))
			}
			seenCol[c] = true
		}
	}

	if s.BatchSize < 1 || s.BatchSize > MaxBatchSize {
		ch.errorf(p.field("batch_size"), "%d is out of range 1..%d", s.BatchSize, MaxBatchSize)
	}
	if s.RequestTimeout <= 0 {
		ch.errorf(p.field("request_timeout"), "%s must be greater than 0", s.RequestTimeout)
	}
	switch {
	case s.MaxAckPending < 1:
		ch.errorf(p.field("max_ack_pending"), "%d must be at least 1", s.MaxAckPending)
	case s.MaxAckPending < s.BatchSize:
		ch.errorf(p.field("max_ack_pending"), "%d is less than batch_size %d", s.MaxAckPending, s.BatchSize)
	}

	rp := p.field("retry")
	if s.Retry.InitialBackoff <= 0 {
		ch.errorf(rp.field("initial_backoff"), "%s must be greater than 0", s.Retry.InitialBackoff)
	} else if s.Retry.MaxBackoff < s.Retry.InitialBackoff {
		ch.errorf(rp.field("max_backoff"), "%s is less than initial_backoff %s", s.Retry.MaxBackoff, s.Retry.InitialBackoff)
	}
	if s.Retry.MaxAge < 0 {
		ch.errorf(rp.field("max_age"), "%s must not be negative (0 retries forever)", s.Retry.MaxAge)
	}

	if s.SigningSecret != "" {
		if _, err := DecodeSigningSecret(s.SigningSecret); err != nil {
			ch.errorf(p.field("signing_secret"), "%s", err)
		}
	}
	checkOneOf(ch, p.field("start"), s.Start, Starts)
	if s.Concurrency < 1 || s.Concurrency > MaxConcurrency {
		ch.errorf(p.field("concurrency"), "%d is out of range 1..%d", s.Concurrency, MaxConcurrency)
	}
}

func checkFilter(ch *checker, p *keyPath, f Filter) {
	if f.Column == "" {
		ch.errorf(p.field("column"), "is required")
	}
	if !slices.Contains(FilterOps, f.Op) {
		if f.Op == "" {
			ch.errorf(p.field("op"), "is required (one of %s)", strings.Join(FilterOps, " "))
		} else {
			ch.errorf(p.field("op"), "%s is not an operator (one of %s)%s", quote(f.Op), strings.Join(FilterOps, " "), Suggest(f.Op, FilterOps))
		}
		return
	}
	vp := p.field("value")
	switch f.Op {
	case "in", "not_in":
		items, ok := asList(f.Value)
		switch {
		case f.Value == nil:
			ch.errorf(vp, "is required for op %s (a list)", f.Op)
		case !ok:
			ch.errorf(vp, "must be a list for op %s, not %s", f.Op, describe(f.Value))
		case len(items) == 0:
			ch.errorf(vp, "must list at least one value for op %s", f.Op)
		default:
			for i, it := range items {
				if it == nil || !isScalar(it) {
					ch.errorf(vp.index(i, ""), "must be a single, non-null value, not %s", describe(it))
				}
			}
		}
	case "is_null", "is_not_null", "changed":
		if f.Value != nil {
			ch.errorf(vp, "must be left out for op %s", f.Op)
		}
	default:
		switch {
		case f.Value == nil:
			ch.errorf(vp, "is required for op %s (use is_null / is_not_null for null)", quote(f.Op))
		case !isScalar(f.Value):
			ch.errorf(vp, "must be a single value for op %s, not %s", quote(f.Op), describe(f.Value))
		}
	}
}

var timeType = reflect.TypeFor[time.Time]()

func isScalar(v any) bool {
	if v == nil {
		return true
	}
	t := reflect.TypeOf(v)
	switch t.Kind() {
	case reflect.Slice, reflect.Array, reflect.Map, reflect.Chan, reflect.Func, reflect.Pointer, reflect.Interface, reflect.UnsafePointer:
		return false
	case reflect.Struct:
		return t == timeType
	}
	return true
}

func asList(v any) ([]any, bool) {
	if l, ok := v.([]any); ok {
		return l, true
	}
	rv := reflect.ValueOf(v)
	if v == nil || (rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array) {
		return nil, false
	}
	out := make([]any, rv.Len())
	for i := range out {
		out[i] = rv.Index(i).Interface()
	}
	return out, true
}

func describe(v any) string {
	if v == nil {
		return "null"
	}
	switch reflect.TypeOf(v).Kind() {
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		if isScalar(v) {
			return "a single value"
		}
		return "a mapping"
	}
	return "a single value"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
