package delivery

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestJoinURL(t *testing.T) {
	t.Parallel()
	for _, tt := range [][3]string{
		{"http://h:1", "/hook", "http://h:1/hook"},
		{"http://h:1/base/", "/hook", "http://h:1/base/hook"},
		{"http://u:p@h/base?token=a%2Bb&x=1", "/hook", "http://u:p@h/base/hook?token=a%2Bb&x=1"},
		{"http://h/base?token=t", "", "http://h/base?token=t"},
	} {
		if got := joinURL(tt[0], tt[1]); got != tt[2] {
			t.Errorf("joinURL(%q, %q) = %q, want %q", tt[0], tt[1], got, tt[2])
		}
	}
}

func TestRedactError(t *testing.T) {
	t.Parallel()
	raw := "http://u:pw-9f3@127.0.0.1:9/hook?token=tk-77a"
	err := &url.Error{Op: "Post", URL: "http://u:***@127.0.0.1:9/hook?token=tk-77a", Err: errors.New("dial tcp 127.0.0.1:9: connect: connection refused")}
	got := redactError(err, raw)
	if strings.Contains(got, "pw-9f3") || strings.Contains(got, "tk-77a") || !strings.Contains(got, "token=********") || !strings.Contains(got, "connection refused") {
		t.Errorf("redactError = %q", got)
	}
}
