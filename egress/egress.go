// Package egress decides which addresses walhook may connect to. Endpoint
// URLs are user input, so without a policy anyone who can create an
// endpoint can make walhook call cloud metadata services or internal
// hosts. The check runs on the address actually being dialled (after DNS),
// so a name that resolves to a refused address, or re-resolves to one
// later (DNS rebinding), is refused too.
package egress

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// DefaultDeny is refused when the config names no deny list: link-local
// addresses, where cloud metadata services answer.
var DefaultDeny = []string{"169.254.0.0/16", "fe80::/10"}

// Policy is a checked egress: {allow, deny}. The zero Policy allows
// everything; use New for the configured one.
type Policy struct {
	allow []netip.Prefix
	deny  []netip.Prefix
}

// ParsePrefix reads one rule: a CIDR, or a bare address meaning just that
// address. Config validation uses it so the file and the service agree.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR (like 10.0.0.0/8 or fd00::/8)", s)
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q: a CIDR must not carry a zone", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an IP address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// New builds a policy from the config's lists. A nil deny means
// DefaultDeny; an empty one refuses nothing.
func New(allow, deny []string) (*Policy, error) {
	if deny == nil {
		deny = DefaultDeny
	}
	p := &Policy{}
	for i, s := range allow {
		pr, err := ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("egress.allow[%d]: %w", i, err)
		}
		p.allow = append(p.allow, pr)
	}
	for i, s := range deny {
		pr, err := ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("egress.deny[%d]: %w", i, err)
		}
		p.deny = append(p.deny, pr)
	}
	return p, nil
}

// RefusedError says which rule refused which address, so last_error tells
// the operator what to change.
type RefusedError struct {
	Addr netip.Addr
	// Rule is the matching deny CIDR, or empty when the address is outside
	// every allow CIDR.
	Rule string
}

func (e *RefusedError) Error() string {
	if e.Rule != "" {
		return fmt.Sprintf("egress policy refused %s: it is in egress.deny %s", e.Addr, e.Rule)
	}
	return fmt.Sprintf("egress policy refused %s: it is in no egress.allow CIDR", e.Addr)
}

// Check refuses an address in a deny CIDR, or outside every allow CIDR
// when allow is set. Deny wins over allow. IPv4-mapped IPv6 addresses are
// checked as the IPv4 address they are.
func (p *Policy) Check(a netip.Addr) error {
	if p == nil {
		return nil
	}
	a = a.Unmap().WithZone("")
	for _, d := range p.deny {
		if d.Contains(a) {
			return &RefusedError{Addr: a, Rule: d.String()}
		}
	}
	if len(p.allow) == 0 {
		return nil
	}
	for _, al := range p.allow {
		if al.Contains(a) {
			return nil
		}
	}
	return &RefusedError{Addr: a}
}

// control is a net.Dialer Control func: it runs after DNS, on the address
// about to be connected, before any packet is sent.
func (p *Policy) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("egress policy: cannot read dial address %q: %w", address, err)
	}
	return p.Check(ap.Addr())
}

// DialContext dials like the net/http default transport, refusing what
// the policy refuses.
func (p *Policy) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d := net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: p.control}
	return d.DialContext(ctx, network, address)
}
