package egress

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	def, err := New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	allow, err := New([]string{"127.0.0.0/8", "::1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	open, err := New(nil, []string{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		p    *Policy
		addr string
		want string // "" = allowed
	}{
		{def, "169.254.169.254", "egress policy refused 169.254.169.254: it is in egress.deny 169.254.0.0/16"},
		{def, "::ffff:169.254.169.254", "egress policy refused 169.254.169.254: it is in egress.deny 169.254.0.0/16"},
		{def, "fe80::1%eth0", "egress policy refused fe80::1: it is in egress.deny fe80::/10"},
		{def, "10.1.2.3", ""},
		{def, "127.0.0.1", ""},
		{allow, "127.0.0.1", ""},
		{allow, "::1", ""},
		{allow, "10.1.2.3", "egress policy refused 10.1.2.3: it is in no egress.allow CIDR"},
		{allow, "169.254.169.254", "egress.deny 169.254.0.0/16"}, // deny wins
		{open, "169.254.169.254", ""},
	} {
		err := tt.p.Check(netip.MustParseAddr(tt.addr))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tt.addr, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: got %v, want %q", tt.addr, err, tt.want)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"10.0.0.1/8": "10.0.0.0/8", "192.0.2.7": "192.0.2.7/32", "::1": "::1/128", " fd00::/8 ": "fd00::/8"} {
		p, err := ParsePrefix(in)
		if err != nil || p.String() != want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, in := range []string{"", "10.0.0.0/33", "host.example", "fe80::1%eth0"} {
		if _, err := ParsePrefix(in); err == nil {
			t.Errorf("ParsePrefix(%q): no error", in)
		}
	}
	if _, err := New([]string{"x"}, nil); err == nil || !strings.Contains(err.Error(), "egress.allow[0]") {
		t.Errorf("New: error %v does not name the key", err)
	}
}

// The dial is refused before any packet leaves: the Control func runs on
// the address being connected, after name resolution.
func TestDialRefusedBeforeConnect(t *testing.T) {
	t.Parallel()
	p, err := New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.DialContext(context.Background(), "tcp", "169.254.169.254:80")
	var re *RefusedError
	if !errors.As(err, &re) || re.Rule != "169.254.0.0/16" {
		t.Fatalf("dial 169.254.169.254: %v, want a RefusedError by 169.254.0.0/16", err)
	}
}
