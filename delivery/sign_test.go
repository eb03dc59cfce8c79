package delivery

import (
	"strings"
	"testing"

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
