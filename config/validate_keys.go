package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

const (
	// EncryptionKeyBytes is the AES-256 key size the encryption_key decodes to.
	EncryptionKeyBytes = 32
	// SigningSecretPrefix starts every Standard Webhooks signing secret.
	SigningSecretPrefix = "whsec_"
)

// DecodeEncryptionKey decodes encryption_key (standard base64 of exactly 32
// bytes) so the loader and the header encryption agree on the format.
func DecodeEncryptionKey(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("is not valid base64 (value not shown)")
	}
	if len(b) != EncryptionKeyBytes {
		return nil, fmt.Errorf("decodes to %d bytes, want %d (value not shown)", len(b), EncryptionKeyBytes)
	}
	return b, nil
}

// DecodeSigningSecret returns the HMAC key of a Standard Webhooks secret:
// the base64-decoded bytes after "whsec_" (docs/reference.md#32-signatures).
func DecodeSigningSecret(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, SigningSecretPrefix)
	if !ok {
		return nil, errors.New(`must start with "whsec_" (value not shown)`)
	}
	b, err := base64.StdEncoding.DecodeString(rest)
	if err != nil || len(b) == 0 {
		return nil, errors.New(`must be "whsec_" followed by base64 (value not shown)`)
	}
	return b, nil
}

// SigningKey is the sink's HMAC key, nil when requests are not signed.
func (s *Sink) SigningKey() ([]byte, error) {
	if s.SigningSecret == "" {
		return nil, nil
	}
	return DecodeSigningSecret(s.SigningSecret)
}
