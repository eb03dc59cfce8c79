package config

import (
	"errors"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/secrets"
)

func checkListen(ch *checker, p *keyPath, s string) bool {
	_, port, err := net.SplitHostPort(s)
	if err == nil {
		n, perr := strconv.Atoi(port)
		if perr == nil && n >= 0 && n <= 65535 {
			return true
		}
	}
	ch.errorf(p, "%s is not host:port (like 127.0.0.1:7376 or :7376)", quote(s))
	return false
}

// checkHTTPURL requires an absolute http(s) URL with a host. The shown
// value has its credentials (password, query values) masked.
func checkHTTPURL(ch *checker, p *keyPath, s string) {
	if s == "" {
		ch.errorf(p, "is required (an absolute http:// or https:// URL)")
		return
	}
	u, err := url.Parse(s)
	shown := redactConn(s)
	if err == nil {
		shown = secrets.RedactURL(s)
	}
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		ch.errorf(p, "%s is not an absolute http:// or https:// URL", quote(shown))
		return
	}
	if u.Fragment != "" {
		ch.errorf(p, "%s must not have a #fragment", quote(shown))
	}
}

// checkConnString parses a Postgres URL or DSN the way pgx will, without
// connecting. Neither the value nor pgx's message may leak the password.
func checkConnString(ch *checker, p *keyPath, s string) {
	_, err := pgconn.ParseConfig(s)
	if err == nil {
		return
	}
	ch.errorf(p, "%s is not a valid postgres URL or DSN: %s", quote(redactConn(s)), connReason(err, s))
}

func connReason(err error, conn string) string {
	reason := "cannot parse"
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		full := pe.Error()
		inner := errors.Unwrap(pe)
		if inner != nil {
			full = strings.TrimSuffix(full, " ("+inner.Error()+")")
		}
		if i := strings.LastIndex(full, "`: "); i >= 0 {
			reason = full[i+3:]
		}
		if inner != nil {
			var ue *url.Error
			if errors.As(inner, &ue) {
				reason += ": " + ue.Err.Error()
			} else {
				reason += ": " + inner.Error()
			}
		}
	}
	// Belt and braces: never echo the string or its password.
	for _, secret := range []string{conn, strconv.Quote(conn), connPassword(conn)} {
		if len(secret) >= 3 {
			reason = strings.ReplaceAll(reason, secret, "xxxxx")
		}
	}
	return reason
}

var (
	quotedPWRe = regexp.MustCompile(`password\s*=\s*'(?:[^'\\]|\\.)*'`)
	plainPWRe  = regexp.MustCompile(`password\s*=\s*[^\s']\S*`)
	urlPWRe    = regexp.MustCompile(`://([^/@:]*):[^/@]*@`)
	anyPWRe    = regexp.MustCompile(`password\s*=\s*(\S+)`)
)

// redactConn masks the password of a URL or key=value DSN for messages.
func redactConn(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	s = urlPWRe.ReplaceAllString(s, "://$1:xxxxx@")
	s = quotedPWRe.ReplaceAllString(s, "password=xxxxx")
	s = plainPWRe.ReplaceAllString(s, "password=xxxxx")
	return s
}

func connPassword(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		pw, _ := u.User.Password()
		return pw
	}
	if m := anyPWRe.FindStringSubmatch(s); m != nil {
		return strings.Trim(m[1], "'")
	}
	return ""
}
