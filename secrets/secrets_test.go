package secrets

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestSealOpen(t *testing.T) {
	t.Parallel()
	key := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 32)))
	b, err := NewBox(key)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := b.SealMap(map[string]string{"Authorization": "Bearer s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(sealed), "s3cret") {
		t.Fatal("sealed value contains the secret")
	}
	m, err := b.OpenMap(sealed)
	if err != nil || m["Authorization"] != "Bearer s3cret" {
		t.Fatalf("open: %v %v", m, err)
	}
	other, _ := NewBox(base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", 32))))
	if _, err := other.OpenMap(sealed); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("wrong key: %v", err)
	}
	none, _ := NewBox("")
	if _, err := none.SealMap(map[string]string{"a": "b"}); err != ErrNoKey {
		t.Fatalf("no key: %v", err)
	}
	if _, err := NewBox("short"); err == nil {
		t.Fatal("bad key accepted")
	}
}
