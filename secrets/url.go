package secrets

import (
	"net/url"
	"slices"
	"strings"
)

// Mask stands in for a secret the API and the logs never show.
const Mask = "********"

// RedactURL masks the credentials an endpoint URL may carry, for API
// answers, logs and last_error: the password of user:password@ (or the
// whole user part when it has no password, since a lone user part is
// usually a token), and the value of every query parameter. Every query
// value is masked, not only those named like "token", because services
// name their secrets freely (code, sig, apikey, X-Amz-...), and the
// endpoint's name and path identify it well enough. A URL that does not
// parse is masked whole.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return Mask
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), Mask)
		} else {
			u.User = url.User(Mask)
		}
	}
	if u.RawQuery != "" {
		parts := strings.Split(u.RawQuery, "&")
		for i, p := range parts {
			if k, _, ok := strings.Cut(p, "="); ok {
				parts[i] = k + "=" + Mask
			}
		}
		u.RawQuery = strings.Join(parts, "&")
	}
	if u.Fragment != "" {
		u.Fragment = Mask
		u.RawFragment = ""
	}
	s := u.String()
	// url.String escapes the mask's asterisks in the user part.
	return strings.ReplaceAll(s, "%2A%2A%2A%2A%2A%2A%2A%2A", Mask)
}

// URLSecrets lists the parts of raw that RedactURL masks, so text that
// quotes the URL in some other form (an error from net/http, which
// re-encodes it) can be scrubbed of them too.
func URLSecrets(raw string) []string {
	u, err := url.Parse(raw)
	if err != nil {
		return []string{raw}
	}
	var out []string
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			out = append(out, p, url.PathEscape(p), url.QueryEscape(p))
		} else {
			out = append(out, u.User.Username())
		}
	}
	for _, p := range strings.Split(u.RawQuery, "&") {
		if _, v, ok := strings.Cut(p, "="); ok && v != "" {
			out = append(out, v)
			if d, err := url.QueryUnescape(v); err == nil {
				out = append(out, d)
			}
		}
	}
	if u.Fragment != "" {
		out = append(out, u.Fragment)
	}
	// Longest first, so a secret containing another is replaced whole.
	var kept []string
	for _, s := range out {
		if len(s) >= 3 {
			kept = append(kept, s)
		}
	}
	slices.SortFunc(kept, func(a, b string) int { return len(b) - len(a) })
	return kept
}

// Scrub replaces each secret in text with the mask.
func Scrub(text string, secrets []string) string {
	for _, s := range secrets {
		text = strings.ReplaceAll(text, s, Mask)
	}
	return text
}
