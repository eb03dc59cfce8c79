package outbox

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/secrets"
)

const (
	testSecret = "whsec_c2lnbmluZy1zZWNyZXQtVzk0cQ==" // "signing-secret-W94q"
	testBoxKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
)

// fullSink sets every field of config.Sink, so a field the stored form
// forgets fails the round trip.
func fullSink() config.Sink {
	return config.Sink{
		Name: "s", Kind: config.KindWebhook, Endpoint: "recv", Path: "/hook",
		Actions: []string{"insert"}, Filters: []config.Filter{{Column: "v", Op: "=", Value: "x"}},
		Message: "row", GroupBy: map[string][]string{"public.t": {"id"}}, BatchSize: 7,
		RequestTimeout: config.Duration(3 * time.Second), MaxAckPending: 70,
		Retry:         config.Retry{InitialBackoff: config.Duration(time.Second), MaxBackoff: config.Duration(time.Minute), MaxAge: config.Duration(time.Hour)},
		SigningSecret: testSecret, Start: "beginning", Concurrency: 3,
	}
}

func TestStoredSinkRoundTrip(t *testing.T) {
	t.Parallel()
	want := fullSink()
	v := reflect.ValueOf(want)
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if v.Field(i).IsZero() && name != "Tables" && name != "WebhookSources" {
			t.Fatalf("fullSink leaves %s unset", name)
		}
	}
	box, err := secrets.NewBox(testBoxKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		box    *secrets.Box
		sealed bool
	}{{"with key", box, true}, {"no key", &secrets.Box{}, false}, {"nil box", nil, false}} {
		t.Run(tt.name, func(t *testing.T) {
			st := &Store{Box: tt.box}
			raw, _, err := st.sinkSettings(want)
			if err != nil {
				t.Fatal(err)
			}
			if leaked := strings.Contains(string(raw), testSecret); leaked == tt.sealed {
				t.Errorf("stored %s (secret in clear: %v)", raw, leaked)
			}
			if strings.Contains(string(raw), "sealed_signing_secret") != tt.sealed {
				t.Errorf("stored %s", raw)
			}
			got, err := st.readSinkSettings("s", raw)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// Rows written before the stored form had its own type (JSON of
// config.Sink, the secret in clear) read unchanged, with or without a key.
func TestStoredSinkReadsOldRows(t *testing.T) {
	t.Parallel()
	want := fullSink()
	old := want
	old.Tables, old.WebhookSources = nil, nil
	raw, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	box, err := secrets.NewBox(testBoxKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []*secrets.Box{box, nil} {
		got, err := (&Store{Box: b}).readSinkSettings("s", raw)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("old row: %+v %v", got, err)
		}
	}
}

// A sealed secret needs the key: without it the sink does not read (it
// would otherwise deliver unsigned), and the error does not show it.
func TestStoredSinkSealedNeedsKey(t *testing.T) {
	t.Parallel()
	box, err := secrets.NewBox(testBoxKey)
	if err != nil {
		t.Fatal(err)
	}
	raw, _, err := (&Store{Box: box}).sinkSettings(fullSink())
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&Store{}).readSinkSettings("s", raw)
	if err == nil || !strings.Contains(err.Error(), "signing_secret") || strings.Contains(err.Error(), testSecret) {
		t.Errorf("sealed row without a key: %v", err)
	}
}
