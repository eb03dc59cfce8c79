package delivery

import (
	"errors"
	"net/url"
	"strings"

	"github.com/walhook/walhook/secrets"
)

// joinURL appends a sink's path to its endpoint's base URL. The path goes
// before the base URL's query string, which may carry the receiver's
// token.
func joinURL(base, path string) string {
	u, err := url.Parse(base)
	if err != nil || u.RawQuery == "" && !u.ForceQuery {
		return strings.TrimRight(base, "/") + path
	}
	q := u.RawQuery
	u.RawQuery, u.ForceQuery = "", false
	return strings.TrimRight(u.String(), "/") + path + "?" + q
}

// redactError is a transport error as last_error and the log show it:
// net/http quotes the request URL in its errors, query string included,
// so the URL is replaced by its redacted form and any credential of
// rawURL still in the text is masked.
func redactError(err error, rawURL string) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = secrets.RedactURL(ue.URL)
	}
	return secrets.Scrub(err.Error(), secrets.URLSecrets(rawURL))
}
