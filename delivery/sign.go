package delivery

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"strconv"
	"sync"
	"time"

	"github.com/walhook/walhook/config"
)

// Signer signs requests the Standard Webhooks way
// (https://www.standardwebhooks.com): webhook-id, webhook-timestamp and
// webhook-signature = "v1," + base64(HMAC-SHA256(id.timestamp.body)).
type Signer struct {
	key []byte
	// macs are keyed HMACs to reuse: a Reset one starts from the key's
	// precomputed state instead of hashing the key again.
	macs sync.Pool
}

// SinkSigner signs a sink's requests, nil when they go unsigned. The key
// comes from config's decoder, so delivery refuses exactly the secrets the
// config loader and the API refuse.
func SinkSigner(s *config.Sink) (*Signer, error) {
	key, err := s.SigningKey()
	if err != nil {
		return nil, fmt.Errorf("signing_secret %w", err)
	}
	if key == nil {
		return nil, nil
	}
	return newSigner(key), nil
}

func newSigner(key []byte) *Signer {
	s := &Signer{key: key}
	s.macs.New = func() any { return hmac.New(sha256.New, s.key) }
	return s
}

// Sign returns the three headers' values.
func (s *Signer) Sign(id string, ts time.Time, body []byte) (timestamp, signature string) {
	timestamp = strconv.FormatInt(ts.Unix(), 10)
	mac := s.macs.Get().(hash.Hash)
	defer s.macs.Put(mac)
	mac.Reset()
	mac.Write([]byte(id))
	mac.Write([]byte{'.'})
	mac.Write([]byte(timestamp))
	mac.Write([]byte{'.'})
	mac.Write(body)
	var sum [sha256.Size]byte
	return timestamp, "v1," + base64.StdEncoding.EncodeToString(mac.Sum(sum[:0]))
}

// BatchID derives webhook-id from the batch's messages, so a retry of the
// same messages carries the same id and receivers can deduplicate.
func BatchID(sinkID int64, msgIDs []int64) string {
	h := sha256.New()
	var b [20]byte
	h.Write(strconv.AppendInt(b[:0], sinkID, 10))
	for _, id := range msgIDs {
		h.Write([]byte{':'})
		h.Write(strconv.AppendInt(b[:0], id, 10))
	}
	return "msg_" + hex.EncodeToString(h.Sum(nil)[:16])
}
