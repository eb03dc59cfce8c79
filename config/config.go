// Package config loads walhook's YAML configuration: environment expansion,
// strict decoding (unknown keys are errors), defaults and validation. It
// never connects to anything, so `walhook config check` can run anywhere.
package config

import "time"

// Config is the whole file. Objects in it (endpoints, sources, sinks) are
// applied at start-up as upserts; the state schema stays the source of truth
// for objects made through the API.
type Config struct {
	Database       Database        `yaml:"database" json:"database"`
	State          State           `yaml:"state" json:"state"`
	Server         Server          `yaml:"server" json:"server"`
	EncryptionKey  string          `yaml:"encryption_key" json:"-"`
	Log            Log             `yaml:"log" json:"log"`
	Egress         Egress          `yaml:"egress" json:"egress"`
	HTTPEndpoints  []HTTPEndpoint  `yaml:"http_endpoints" json:"http_endpoints"`
	WebhookSources []WebhookSource `yaml:"webhook_sources" json:"webhook_sources"`
	Retention      Retention       `yaml:"retention" json:"retention"`
	Sinks          []Sink          `yaml:"sinks" json:"sinks"`

	// Path is the file the config came from, for error messages.
	Path string `yaml:"-" json:"-"`
}

// Database is the source database: it needs wal_level=logical and a role
// with REPLICATION.
type Database struct {
	URL         string `yaml:"url" json:"url"`
	Slot        string `yaml:"slot" json:"slot"`
	Publication string `yaml:"publication" json:"publication"`
	// LeaderLease is how long the process streaming the slot keeps the
	// lead without renewing it: a frozen or cut-off leader is replaced
	// after it. Default 15s.
	LeaderLease Duration `yaml:"leader_lease" json:"leader_lease"`
}

// State is where walhook keeps its own tables. It defaults to the source
// database, in its own schema, which is never part of the publication.
type State struct {
	URL    string `yaml:"url" json:"url"`
	Schema string `yaml:"schema" json:"schema"`
}

// Server is the HTTP server: health, metrics, webhook ingest and the API.
type Server struct {
	Listen    string   `yaml:"listen" json:"listen"`
	PublicURL string   `yaml:"public_url" json:"public_url"`
	APITokens []string `yaml:"api_tokens" json:"-"`
}

// Log configures zerolog.
type Log struct {
	Level  string `yaml:"level" json:"level"`
	Format string `yaml:"format" json:"format"`
}

// Egress limits where delivery may connect, checked on the resolved
// address: endpoint URLs are user input, and link-local addresses (cloud
// metadata services) must not be reachable through them by default. Deny
// wins over allow; a nil Deny means the default (link-local), an empty one
// refuses nothing. Through an HTTP proxy from the environment, only the
// proxy's address is checked: the proxy resolves the endpoint's name.
type Egress struct {
	Allow []string `yaml:"allow" json:"allow"`
	Deny  []string `yaml:"deny" json:"deny"`
}

// HTTPEndpoint is a receiver base URL with its headers. EncryptedHeaders are
// stored encrypted with EncryptionKey and never shown again.
type HTTPEndpoint struct {
	Name             string            `yaml:"name" json:"name"`
	URL              string            `yaml:"url" json:"url"`
	Headers          map[string]string `yaml:"headers" json:"headers"`
	EncryptedHeaders map[string]string `yaml:"encrypted_headers" json:"encrypted_headers"`
}

// WebhookSource accepts inbound webhooks at POST /api/webhook/{name}.
type WebhookSource struct {
	Name         string `yaml:"name" json:"name"`
	MaxBodyBytes int64  `yaml:"max_body_bytes" json:"max_body_bytes"`
}

// Retention keeps captured changes of some tables for replays.
type Retention struct {
	Tables []string `yaml:"tables" json:"tables"`
	Keep   Duration `yaml:"keep" json:"keep"`
}

// Sink routes changes and webhooks to one HTTP endpoint (kind webhook), or
// keeps them in the outbox for consumers that receive them over the API
// (kind pull).
type Sink struct {
	Name string `yaml:"name" json:"name"`
	// Kind is webhook (default: delivery POSTs to Endpoint) or pull (no
	// endpoint: consumers receive, ack and nack,
	// docs/reference.md#57-pull-sinks).
	Kind           string              `yaml:"kind" json:"kind"`
	Endpoint       string              `yaml:"endpoint" json:"endpoint"`
	Path           string              `yaml:"path" json:"path"`
	Tables         []string            `yaml:"tables" json:"tables"`
	Actions        []string            `yaml:"actions" json:"actions"`
	WebhookSources []string            `yaml:"webhook_sources" json:"webhook_sources"`
	Filters        []Filter            `yaml:"filters" json:"filters"`
	Message        string              `yaml:"message" json:"message"`
	GroupBy        map[string][]string `yaml:"group_by" json:"group_by"`
	BatchSize      int                 `yaml:"batch_size" json:"batch_size"`
	RequestTimeout Duration            `yaml:"request_timeout" json:"request_timeout"`
	MaxAckPending  int                 `yaml:"max_ack_pending" json:"max_ack_pending"`
	Retry          Retry               `yaml:"retry" json:"retry"`
	SigningSecret  string              `yaml:"signing_secret" json:"signing_secret,omitempty"`
	Start          string              `yaml:"start" json:"start"`
	// Concurrency is how many batches of this sink may be in flight at once
	// (each for different groups). Default 4 (docs/reference.md#27-sinks).
	Concurrency int `yaml:"concurrency" json:"concurrency"`
}

// Filter is one condition on a change; all of a sink's filters must hold.
type Filter struct {
	Column string `yaml:"column" json:"column"`
	Op     string `yaml:"op" json:"op"`
	Value  any    `yaml:"value" json:"value,omitempty"`
}

// Retry is a sink's backoff policy. MaxAge 0 retries forever.
type Retry struct {
	InitialBackoff Duration `yaml:"initial_backoff" json:"initial_backoff"`
	MaxBackoff     Duration `yaml:"max_backoff" json:"max_backoff"`
	MaxAge         Duration `yaml:"max_age" json:"max_age"`
}

// Duration is a time.Duration written as a Go duration string ("30s") in
// YAML and JSON.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Defaults of docs/reference.md#2-configuration. Kept as named values so the
// API, the config loader and the docs agree.
const (
	DefaultListen         = "127.0.0.1:7376"
	DefaultSchema         = "walhook"
	DefaultSlot           = "walhook"
	DefaultPublication    = "walhook"
	DefaultLeaderLease    = 15 * time.Second
	DefaultMessage        = "change"
	DefaultKind           = KindWebhook
	DefaultBatchSize      = 1
	DefaultRequestTimeout = 30 * time.Second
	DefaultMaxAckPending  = 10000
	DefaultInitialBackoff = time.Second
	DefaultMaxBackoff     = 3 * time.Minute
	DefaultStart          = "end"
	DefaultConcurrency    = 4
	DefaultMaxBodyBytes   = 1 << 20
)

// DefaultConcurrencyFor is a sink's concurrency when it sets none: at
// least DefaultConcurrency batches, and at least 32 messages in flight,
// so that batch_size 1 is not held to four requests at a time (one claim
// takes batches for every idle worker, so more workers cost no extra
// round trips), while large batches are not multiplied into thousands of
// messages in flight.
func DefaultConcurrencyFor(batchSize int) int {
	return min(max(DefaultConcurrency, 32/max(batchSize, 1)), MaxConcurrency)
}

// FilterOps are the operators a filter may use.
var FilterOps = []string{"=", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "is_not_null", "changed"}

// Actions a sink may subscribe to; "read" (backfill) always flows.
var Actions = []string{"insert", "update", "delete"}

// Sink kinds: webhook sinks are delivered by walhook (POST to an endpoint);
// pull sinks wait in the outbox for consumers
// (docs/reference.md#57-pull-sinks).
const (
	KindWebhook = "webhook"
	KindPull    = "pull"
)

// IsPull reports whether consumers receive the sink's messages over the
// API instead of walhook delivering them.
func (s *Sink) IsPull() bool { return s.Kind == KindPull }
