package config

import (
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/walhook/walhook/egress"
)

// Log defaults (docs/reference.md#2-configuration).
const (
	DefaultLogLevel  = "info"
	DefaultLogFormat = "json"
)

// ApplyDefaults fills every unset value with the
// docs/reference.md#2-configuration default, so code that builds a Config by
// hand (walhook dev, tests) gets the same values as a loaded file. Zero means
// unset here; Parse is stricter and rejects an explicit zero where zero is
// invalid.
func (c *Config) ApplyDefaults() { c.applyDefaults(nil) }

// applyDefaults skips numeric defaults for keys the file set explicitly
// (set reports canonical key paths), so "batch_size: 0" is reported instead
// of silently becoming 1.
func (c *Config) applyDefaults(set func(key string) bool) {
	if c.Database.Slot == "" {
		c.Database.Slot = DefaultSlot
	}
	if c.Database.Publication == "" {
		c.Database.Publication = DefaultPublication
	}
	if c.Database.LeaderLease == 0 && !isSet(set, "database.leader_lease") {
		c.Database.LeaderLease = Duration(DefaultLeaderLease)
	}
	if c.State.URL == "" {
		c.State.URL = c.Database.URL
	}
	if c.State.Schema == "" {
		c.State.Schema = DefaultSchema
	}
	if c.Server.Listen == "" {
		c.Server.Listen = DefaultListen
	}
	if c.Server.PublicURL == "" {
		c.Server.PublicURL = defaultPublicURL(c.Server.Listen)
	}
	c.Server.PublicURL = strings.TrimRight(c.Server.PublicURL, "/")
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.Log.Format == "" {
		c.Log.Format = DefaultLogFormat
	}
	if c.Egress.Deny == nil && !isSet(set, "egress.deny") {
		c.Egress.Deny = slices.Clone(egress.DefaultDeny)
	}
	for i := range c.WebhookSources {
		c.WebhookSources[i].applyDefaults(under(set, (&keyPath{}).field("webhook_sources").index(i, "")))
	}
	for i := range c.Sinks {
		c.Sinks[i].applyDefaults(under(set, (&keyPath{}).field("sinks").index(i, "")))
	}
}

// under narrows a "was this key set" function to one object of the file.
func under(set func(string) bool, p *keyPath) func(string) bool {
	if set == nil {
		return nil
	}
	return func(field string) bool { return set(p.key + "." + field) }
}

// ApplyDefaults fills unset fields with the docs/reference.md#2-configuration
// defaults. The HTTP API calls it on objects it creates so they match objects
// from the file.
func (w *WebhookSource) ApplyDefaults() { w.applyDefaults(nil) }

func (w *WebhookSource) applyDefaults(set func(string) bool) {
	if w.MaxBodyBytes == 0 && !isSet(set, "max_body_bytes") {
		w.MaxBodyBytes = DefaultMaxBodyBytes
	}
}

// ApplyDefaults fills unset fields with the docs/reference.md#2-configuration
// defaults (zero means unset; a nil Actions means all three). The HTTP API
// calls it on sinks it creates so they match sinks from the file.
func (s *Sink) ApplyDefaults() { s.applyDefaults(nil) }

func (s *Sink) applyDefaults(set func(string) bool) {
	if s.Actions == nil {
		s.Actions = slices.Clone(Actions)
	}
	if s.Message == "" {
		s.Message = DefaultMessage
	}
	if s.Kind == "" {
		s.Kind = DefaultKind
	}
	if s.BatchSize == 0 && !isSet(set, "batch_size") {
		s.BatchSize = DefaultBatchSize
	}
	if s.RequestTimeout == 0 && !isSet(set, "request_timeout") {
		s.RequestTimeout = Duration(DefaultRequestTimeout)
	}
	if s.MaxAckPending == 0 && !isSet(set, "max_ack_pending") {
		s.MaxAckPending = DefaultMaxAckPending
	}
	if s.Retry.InitialBackoff == 0 && !isSet(set, "retry.initial_backoff") {
		s.Retry.InitialBackoff = Duration(DefaultInitialBackoff)
	}
	if s.Retry.MaxBackoff == 0 && !isSet(set, "retry.max_backoff") {
		s.Retry.MaxBackoff = Duration(max(DefaultMaxBackoff, s.Retry.InitialBackoff.D()))
	}
	if s.Start == "" {
		s.Start = DefaultStart
	}
	if s.Concurrency == 0 && !isSet(set, "concurrency") {
		s.Concurrency = DefaultConcurrencyFor(s.BatchSize)
	}
}

func isSet(set func(string) bool, field string) bool { return set != nil && set(field) }

// defaultPublicURL derives the URL printed for ingest endpoints from the
// listen address; a wildcard host (":7376", "0.0.0.0:7376") is not
// something a client can dial, so it becomes localhost.
func defaultPublicURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "http://" + listen
	}
	if host == "" {
		host = "localhost"
	} else if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port)
}
