package delivery_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/delivery"
)

// verifyWebhook is what a receiver runs on a request from a sink with a
// signing_secret (Standard Webhooks), using nothing but the standard
// library: HMAC-SHA256 of "webhook-id.webhook-timestamp.body", keyed with
// the base64-decoded bytes after "whsec_", compared with each "v1,"
// signature in webhook-signature (space-separated; there may be several
// while a secret is rotated). A timestamp far from now is refused, so a
// captured request cannot be replayed later.
func verifyWebhook(secret string, h http.Header, body []byte, now time.Time) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return false
	}
	id, ts := h.Get("webhook-id"), h.Get("webhook-timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || now.Sub(time.Unix(sec, 0)).Abs() > 5*time.Minute {
		return false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, sig := range strings.Fields(h.Get("webhook-signature")) {
		got, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sig, "v1,"))
		if err == nil && strings.HasPrefix(sig, "v1,") && hmac.Equal(got, want) {
			return true
		}
	}
	return false
}

// A sink with signing_secret sends webhook-id, webhook-timestamp and
// webhook-signature with every request; a receiver checks them with the
// same secret before trusting the body. webhook-id is derived from the
// batch's messages, so a retry of the same batch carries the same id and
// the receiver can deduplicate on it.
func Example_verifySignature() {
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("a secret of the receiver's own"))
	body := []byte(`{"data":[{"record":{"id":1},"changes":null,"action":"insert","metadata":{}}]}`)
	sentAt := time.Date(2024, 3, 20, 15, 30, 0, 0, time.UTC)

	// walhook's side (delivery does this for every request of the sink).
	signer, err := delivery.SinkSigner(&config.Sink{SigningSecret: secret})
	if err != nil {
		panic(err)
	}
	id := delivery.BatchID(7, []int64{41, 42})
	ts, sig := signer.Sign(id, sentAt, body)
	h := http.Header{}
	h.Set("webhook-id", id)
	h.Set("webhook-timestamp", ts)
	h.Set("webhook-signature", sig)
	fmt.Println("webhook-id:", id)
	fmt.Println("webhook-timestamp:", ts)
	fmt.Println("webhook-signature:", sig)

	// The receiver's side.
	now := sentAt.Add(2 * time.Second)
	if verifyWebhook(secret, h, body, now) {
		fmt.Println("valid")
	}
	tampered := []byte(strings.Replace(string(body), `"id":1`, `"id":2`, 1))
	fmt.Println("tampered body valid:", verifyWebhook(secret, h, tampered, now))
	fmt.Println("an hour later valid:", verifyWebhook(secret, h, body, now.Add(time.Hour)))
	// Output:
	// webhook-id: msg_1169dcc054cdc83b47bb98f065eafe9f
	// webhook-timestamp: 1710948600
	// webhook-signature: v1,Zx/MXW8R74jTFPCveq66a6Keo/niMn3KCR9HBDvHajo=
	// valid
	// tampered body valid: false
	// an hour later valid: false
}
