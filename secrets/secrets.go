// Package secrets seals values walhook must store but never show, such as
// encrypted endpoint headers: AES-256-GCM with the configured
// encryption_key, a fresh nonce per seal.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrNoKey is returned when sealing or opening without encryption_key.
var ErrNoKey = errors.New("encryption_key is not set")

// Box seals and opens with one key. The zero Box has no key.
type Box struct{ aead cipher.AEAD }

// NewBox takes the key as configured: base64 of 32 bytes. An empty key
// gives a Box that refuses to seal or open, so walhook still runs when no
// secret is configured.
func NewBox(keyB64 string) (*Box, error) {
	if keyB64 == "" {
		return &Box{}, nil
	}
	key, err := base64.StdEncoding.DecodeString(keyB64)
	if err != nil || len(key) != 32 {
		return nil, errors.New("encryption_key must be base64 of 32 bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("encryption_key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("encryption_key: %w", err)
	}
	return &Box{aead: aead}, nil
}

// SealMap encrypts a header map. An empty map seals to nil.
func (b *Box) SealMap(m map[string]string) ([]byte, error) {
	if len(m) == 0 {
		return nil, nil
	}
	if b == nil || b.aead == nil {
		return nil, ErrNoKey
	}
	plain, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("seal headers: %w", err)
	}
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal headers: %w", err)
	}
	return b.aead.Seal(nonce, nonce, plain, nil), nil
}

// OpenMap decrypts what SealMap sealed. Errors never include the value.
func (b *Box) OpenMap(sealed []byte) (map[string]string, error) {
	if len(sealed) == 0 {
		return nil, nil
	}
	if b == nil || b.aead == nil {
		return nil, ErrNoKey
	}
	n := b.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("open headers: sealed value too short")
	}
	plain, err := b.aead.Open(nil, sealed[:n], sealed[n:], nil)
	if err != nil {
		return nil, errors.New("open headers: wrong encryption_key or corrupted value")
	}
	var m map[string]string
	if err := json.Unmarshal(plain, &m); err != nil {
		return nil, errors.New("open headers: corrupted value")
	}
	return m, nil
}
