package integration

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/secrets"
)

// TestSinkSigningSecretSealed: with an encryption_key the sinks table
// holds the signing secret sealed, a row from before (secret in clear)
// still reads and signs, and the API shows neither.
func TestSinkSigningSecretSealed(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	e := startAPI(t, b)
	ctx := context.Background()

	storedConfig := func() string {
		t.Helper()
		var raw string
		if err := b.db.QueryRow(ctx, `SELECT config::text FROM walhook.sinks WHERE name = 's'`).Scan(&raw); err != nil {
			t.Fatal(err)
		}
		return raw
	}
	assertSealed := func(when string) {
		t.Helper()
		raw := storedConfig()
		for _, s := range leakable {
			if strings.Contains(raw, s) {
				t.Errorf("%s: sinks.config holds %q: %s", when, s, raw)
			}
		}
		if !strings.Contains(raw, `"sealed_signing_secret"`) {
			t.Errorf("%s: sinks.config has no sealed secret: %s", when, raw)
		}
	}
	assertSealed("config applied")

	box, err := secrets.NewBox(encryptionKey)
	if err != nil {
		t.Fatal(err)
	}
	st, err := outbox.Open(ctx, b.url, "walhook", 2)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	readSecret := func(box *secrets.Box) (string, error) {
		st.Box = box
		r, err := st.GetSink(ctx, "s")
		if err != nil {
			return "", err
		}
		return r.Config.SigningSecret, nil
	}
	if got, err := readSecret(box); err != nil || got != signingSecret {
		t.Errorf("sealed secret reads back wrong (err %v)", err)
	}
	if _, err := readSecret(nil); err == nil {
		t.Errorf("a sealed secret read without the key")
	}

	// A row written before secrets were sealed: the secret in clear.
	if _, err := b.db.Exec(ctx, `UPDATE walhook.sinks SET config = (config - 'sealed_signing_secret') || jsonb_build_object('signing_secret', $1::text) WHERE name = 's'`, signingSecret); err != nil {
		t.Fatal(err)
	}
	if got, err := readSecret(box); err != nil || got != signingSecret {
		t.Errorf("old row reads back wrong (err %v)", err)
	}
	if s := decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s", nil)); s.SigningSecret != "********" {
		t.Errorf("old row: API shows signing_secret %q", s.SigningSecret)
	}
	// A change through the API keeps the secret (sent as the mask) and
	// seals it; delivery then signs with the secret it reads back.
	if s := decodeAs[apiSink](t, e.must(t, 200, "PATCH", "/api/sinks/s", `{"batch_size": 2, "signing_secret": "********"}`)); s.SigningSecret != "********" || s.BatchSize != 2 {
		t.Errorf("patched sink: %+v", s)
	}
	assertSealed("after PATCH")
	if got, err := readSecret(box); err != nil || got != signingSecret {
		t.Errorf("patched secret reads back wrong (err %v)", err)
	}

	key, err := config.DecodeSigningSecret(signingSecret)
	if err != nil {
		t.Fatal(err)
	}
	b.exec(t, `INSERT INTO t VALUES (1, 0)`)
	rq := waitRequests(t, b.recv, 1)[0]
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "%s.%s.%s", rq.Header.Get("webhook-id"), rq.Header.Get("webhook-timestamp"), rq.Body)
	if want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil)); rq.Header.Get("webhook-signature") != want {
		t.Errorf("signature %q, want %q", rq.Header.Get("webhook-signature"), want)
	}

	// An empty key after whsec_ is refused by the API as by the loader.
	status, out := e.call(t, "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["public.t"], "signing_secret": "whsec_"}`, apiToken)
	if er := decodeAs[apiErr](t, out); status != 400 || er.Error.Field != "signing_secret" {
		t.Errorf("POST with an empty whsec_ key: %d %s", status, out)
	}
}
