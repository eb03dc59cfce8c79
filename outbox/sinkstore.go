package outbox

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/secrets"
)

// storedSink is a sink's settings as the sinks.config column holds them,
// apart from config.Sink (the YAML and the API body) so that what is kept
// in the database can differ from what users write: the signing secret is
// sealed. The JSON keys are those config.Sink had when it was stored
// directly, so rows written before this type read unchanged. Tables and
// webhook sources are not here: the subscriptions table holds them.
type storedSink struct {
	Name           string              `json:"name"`
	Kind           string              `json:"kind"`
	Endpoint       string              `json:"endpoint"`
	Path           string              `json:"path"`
	Actions        []string            `json:"actions"`
	Filters        []config.Filter     `json:"filters"`
	Message        string              `json:"message"`
	GroupBy        map[string][]string `json:"group_by"`
	BatchSize      int                 `json:"batch_size"`
	RequestTimeout config.Duration     `json:"request_timeout"`
	MaxAckPending  int                 `json:"max_ack_pending"`
	Retry          config.Retry        `json:"retry"`
	// SigningSecret is the secret in clear: rows written before secrets
	// were sealed, and sinks saved while no encryption_key is set (the
	// docs/reference.md requires the key only for encrypted headers).
	SigningSecret string `json:"signing_secret,omitempty"`
	// SealedSigningSecret is the secret sealed with encryption_key, like
	// encrypted endpoint headers.
	SealedSigningSecret []byte `json:"sealed_signing_secret,omitempty"`
	Start               string `json:"start"`
	Concurrency         int    `json:"concurrency"`
}

// signingSecretKey names the secret inside its sealed map.
const signingSecretKey = "signing_secret"

// storeSink turns a sink into its stored settings, sealing the signing
// secret when box has a key.
func storeSink(box *secrets.Box, cfg config.Sink) (storedSink, error) {
	st := storedSink{
		Name: cfg.Name, Kind: cfg.Kind, Endpoint: cfg.Endpoint, Path: cfg.Path,
		Actions: cfg.Actions, Filters: cfg.Filters, Message: cfg.Message, GroupBy: cfg.GroupBy,
		BatchSize: cfg.BatchSize, RequestTimeout: cfg.RequestTimeout, MaxAckPending: cfg.MaxAckPending,
		Retry: cfg.Retry, Start: cfg.Start, Concurrency: cfg.Concurrency,
	}
	if cfg.SigningSecret == "" {
		return st, nil
	}
	sealed, err := box.SealMap(map[string]string{signingSecretKey: cfg.SigningSecret})
	switch {
	case errors.Is(err, secrets.ErrNoKey):
		st.SigningSecret = cfg.SigningSecret
	case err != nil:
		return storedSink{}, fmt.Errorf("seal signing_secret: %w", err)
	default:
		st.SealedSigningSecret = sealed
	}
	return st, nil
}

// sink returns the settings as config.Sink, the signing secret opened,
// without tables and webhook sources.
func (st storedSink) sink(box *secrets.Box) (config.Sink, error) {
	cfg := config.Sink{
		Name: st.Name, Kind: st.Kind, Endpoint: st.Endpoint, Path: st.Path,
		Actions: st.Actions, Filters: st.Filters, Message: st.Message, GroupBy: st.GroupBy,
		BatchSize: st.BatchSize, RequestTimeout: st.RequestTimeout, MaxAckPending: st.MaxAckPending,
		Retry: st.Retry, SigningSecret: st.SigningSecret, Start: st.Start, Concurrency: st.Concurrency,
	}
	if len(st.SealedSigningSecret) > 0 {
		m, err := box.OpenMap(st.SealedSigningSecret)
		if err != nil {
			return config.Sink{}, fmt.Errorf("signing_secret: %w", err)
		}
		cfg.SigningSecret = m[signingSecretKey]
	}
	return cfg, nil
}

// sinkSettings splits a sink into its stored settings (JSON) and its
// emitters, for CreateSink and PutSink alike.
func (s *Store) sinkSettings(cfg config.Sink) ([]byte, []string, error) {
	st, err := storeSink(s.Box, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("sink %s: %w", cfg.Name, err)
	}
	raw, err := json.Marshal(st)
	if err != nil {
		return nil, nil, fmt.Errorf("sink %s: encode: %w", cfg.Name, err)
	}
	emitters := []string{}
	for _, t := range cfg.Tables {
		emitters = append(emitters, TableEmitter+t)
	}
	for _, w := range cfg.WebhookSources {
		emitters = append(emitters, WebhookEmitter+w)
	}
	return raw, emitters, nil
}

// readSinkSettings is the inverse of sinkSettings, less the emitters.
func (s *Store) readSinkSettings(name string, raw []byte) (config.Sink, error) {
	var st storedSink
	if err := json.Unmarshal(raw, &st); err != nil {
		return config.Sink{}, fmt.Errorf("sink %s: stored config: %w", name, err)
	}
	cfg, err := st.sink(s.Box)
	if err != nil {
		return config.Sink{}, fmt.Errorf("sink %s: stored config: %w", name, err)
	}
	return cfg, nil
}
