package secrets

import (
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"http://localhost:8080/hooks":                      "http://localhost:8080/hooks",
		"https://user:s3cr%2Ft@h.example/p":                "https://user:********@h.example/p",
		"https://ghp_tok3n@h.example/p":                    "https://********@h.example/p",
		"https://h.example/p?token=abc123&env=prod&flag":   "https://h.example/p?token=********&env=********&flag",
		"https://u:p4ss@h.example/p?sig=x%2By#frag-secret": "https://u:********@h.example/p?sig=********#********",
		"http://[::1]:9/x":                                 "http://[::1]:9/x",
		"://bad":                                           Mask,
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestScrubURLSecrets(t *testing.T) {
	t.Parallel()
	raw := "https://user:pa%20ss@h.example/p?token=abc123&code=a%2Bb"
	text := `Post "https://user:pa%20ss@h.example/p?token=abc123&code=a+b": pa ss abc123 a+b`
	got := Scrub(text, URLSecrets(raw))
	for _, leak := range []string{"pa%20ss", "pa ss", "abc123", "a%2Bb", "a+b"} {
		if strings.Contains(got, leak) {
			t.Errorf("Scrub left %q in %q", leak, got)
		}
	}
}
