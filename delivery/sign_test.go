package delivery

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walhook/walhook/config"
)

// TestSinkSignerUsesConfigDecoder: delivery refuses what the config loader
// refuses, an empty key after whsec_ included.
func TestSinkSignerUsesConfigDecoder(t *testing.T) {
	t.Parallel()
	for _, secret := range []string{"whsec_", "abc", "whsec_***"} {
		s, err := SinkSigner(&config.Sink{SigningSecret: secret})
		if err == nil || s != nil {
			t.Errorf("SinkSigner(%q) = %v, %v; want an error", secret, s, err)
			continue
		}
		if !strings.HasPrefix(err.Error(), "signing_secret ") || strings.Contains(err.Error(), secret+" ") {
			t.Errorf("SinkSigner(%q): %v", secret, err)
		}
		if _, cerr := config.DecodeSigningSecret(secret); cerr == nil {
			t.Errorf("config accepts %q that delivery refuses", secret)
		}
	}
	if s, err := SinkSigner(&config.Sink{}); s != nil || err != nil {
		t.Errorf("no secret: %v, %v; want no signer", s, err)
	}
	s, err := SinkSigner(&config.Sink{SigningSecret: "whsec_dGVzdA=="})
	if err != nil || string(s.key) != "test" {
		t.Fatalf("SinkSigner: %v", err)
	}
}

// Reused HMACs start from the key every time: each signature is the one
// a fresh HMAC computes, however many signed before, concurrently too.
func TestSignReusesNothingButTheKey(t *testing.T) {
	t.Parallel()
	s, err := SinkSigner(&config.Sink{SigningSecret: "whsec_dGVzdA=="})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1700000000, 0)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				id, body := fmt.Sprintf("msg_%d_%d", w, i), []byte(strings.Repeat("x", i))
				mac := hmac.New(sha256.New, []byte("test"))
				mac.Write([]byte(id + ".1700000000."))
				mac.Write(body)
				want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
				if ts, sig := s.Sign(id, at, body); ts != "1700000000" || sig != want {
					t.Errorf("Sign(%s) = %s %s, want %s", id, ts, sig, want)
				}
			}
		})
	}
	wg.Wait()
}
