package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// Environment variables and defaults of the client commands
// (docs/reference.md#12-client-commands).
const (
	envURL     = "WALHOOK_URL"
	envToken   = "WALHOOK_TOKEN"
	defaultURL = "http://127.0.0.1:7376"
)

// addClientCommands adds the commands that talk to a running service's
// API. Each builds its API client with addClientFlags + clientOptions.client.
func addClientCommands(root *cobra.Command) {
	root.AddCommand(sourceCmd(), sinkCmd(), messagesCmd(), redeliverCmd(), observeCmd())
	root.AddCommand(backfillCmd(), replayCmd()) // backfill.go
	root.AddCommand(receiveCmd())               // client_receive.go
}

// clientOptions are the flags every client command shares.
type clientOptions struct {
	URL   string
	Token string
	JSON  bool
}

// addClientFlags adds --url, --token and --json to cmd and its
// subcommands.
func addClientFlags(cmd *cobra.Command) *clientOptions {
	o := &clientOptions{}
	f := cmd.PersistentFlags()
	f.StringVar(&o.URL, "url", "", "walhook API URL (default $"+envURL+", else "+defaultURL+")")
	f.StringVar(&o.Token, "token", "", "API token, one of server.api_tokens (default $"+envToken+")")
	f.BoolVar(&o.JSON, "json", false, "print JSON for scripts instead of tables")
	return o
}

// client resolves the flags against the environment.
func (o *clientOptions) client() (*apiClient, error) {
	raw := o.URL
	if raw == "" {
		raw = os.Getenv(envURL)
	}
	if raw == "" {
		raw = defaultURL
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--url: %q is not an http:// or https:// URL", raw)
	}
	token := o.Token
	if token == "" {
		token = os.Getenv(envToken)
	}
	return &apiClient{
		base:  strings.TrimRight(u.String(), "/"),
		token: strings.TrimSpace(token),
		http:  &http.Client{Timeout: 30 * time.Second},
	}, nil
}

// apiClient calls the walhook HTTP API. Every failure becomes one line a
// user can act on: the server's own message, or what to check (URL,
// token).
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

// apiError is an error answer of the API.
type apiError struct {
	Message string
	Status  int
	Code    string // error.code of the answer ("not_held", ...)
}

func (e *apiError) Error() string { return e.Message }

// transientError is a request that got no answer, or not all of it: the
// server is down, restarting or cut off, and the same request may work a
// moment later (receive --follow tries again).
type transientError struct{ error }

func (e transientError) Unwrap() error { return e.error }

// retryable reports an error a moment may cure: no answer, a server
// error (5xx) or too many requests (429). A 4xx other than 429 says the
// request itself is wrong, and stays wrong.
func retryable(err error) bool {
	var te transientError
	var ae *apiError
	return errors.As(err, &te) || errors.As(err, &ae) && (ae.Status >= 500 || ae.Status == http.StatusTooManyRequests)
}

// get, post and del call the API and decode a JSON answer into out (when
// out is not nil); do takes any method.
func (c *apiClient) get(ctx context.Context, path string, q url.Values, out any) error {
	return c.do(ctx, http.MethodGet, path, q, nil, out)
}

func (c *apiClient) post(ctx context.Context, path string, body, out any) error {
	return c.do(ctx, http.MethodPost, path, nil, body, out)
}

func (c *apiClient) del(ctx context.Context, path string) error {
	return c.do(ctx, http.MethodDelete, path, nil, nil, nil)
}

func (c *apiClient) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	resp, err := c.send(ctx, c.http, method, path, q, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return transientError{fmt.Errorf("read the answer of %s: %w", c.base, err)}
	}
	if resp.StatusCode >= 300 {
		return c.errorOf(resp, data)
	}
	if out == nil || len(data) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("unexpected answer from %s%s: %w", c.base, path, err)
	}
	return nil
}

// stream opens a long-lived response (observe); the caller closes it.
func (c *apiClient) stream(ctx context.Context, path string, q url.Values) (*http.Response, error) {
	resp, err := c.send(ctx, &http.Client{}, http.MethodGet, path, q, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, c.errorOf(resp, data)
	}
	return resp, nil
}

func (c *apiClient) send(ctx context.Context, hc *http.Client, method, path string, q url.Values, body any) (*http.Response, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("--url: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, c.unreachable(err)
	}
	return resp, nil
}

// unreachable explains a transport error in one line. A TLS failure (a
// certificate not trusted, https to a plain HTTP port) is no outage: it
// names its cause and is not transient, while anything else may pass.
func (c *apiClient) unreachable(err error) error {
	var certErr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	var authErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	if errors.As(err, &certErr) || errors.As(err, &recErr) || errors.As(err, &authErr) || errors.As(err, &hostErr) ||
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") { // net/http's, untyped
		return fmt.Errorf("TLS with walhook at %s failed: %w; check --url (https or http) and the server's certificate", c.base, err)
	}
	why := "no answer"
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		why = "timed out"
	case errors.As(err, &oe) && oe.Op == "dial":
		why = "connection refused"
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) {
			why = "unknown host"
		}
	}
	return transientError{fmt.Errorf("cannot reach walhook at %s (%s); is `walhook run` running there? set --url or $%s", c.base, why, envURL)}
}

func (c *apiClient) errorOf(resp *http.Response, data []byte) error {
	var body struct {
		Error struct {
			Message string `json:"message"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(data, &body)
	e := &apiError{Message: body.Error.Message, Status: resp.StatusCode, Code: body.Error.Code}
	switch {
	case resp.StatusCode == http.StatusUnauthorized && c.token == "":
		e.Message = fmt.Sprintf("the walhook API at %s needs a token: set --token or $%s to one of server.api_tokens", c.base, envToken)
	case resp.StatusCode == http.StatusUnauthorized:
		e.Message = fmt.Sprintf("the walhook API at %s rejected the token: set --token or $%s to one of server.api_tokens", c.base, envToken)
	case e.Message == "":
		e.Message = fmt.Sprintf("unexpected answer from %s: HTTP %d (is this a walhook server?)", c.base, resp.StatusCode)
	}
	return e
}

// pathOf builds an API path from escaped segments.
func pathOf(segments ...string) string {
	var b strings.Builder
	b.WriteString("/api")
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// Output helpers shared by the client commands.

// list fetches a list route's items ({"data": [...]}).
func (c *apiClient) list(ctx context.Context, path string, q url.Values) ([]json.RawMessage, error) {
	var list struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := c.get(ctx, path, q, &list); err != nil {
		return nil, err
	}
	return list.Data, nil
}

// printJSONLines writes one item a line, the --json form of a list.
func printJSONLines(w io.Writer, items []json.RawMessage) error {
	for _, raw := range items {
		if err := printJSON(w, raw); err != nil {
			return err
		}
	}
	return nil
}

// showObject calls method on path and prints the answer: as the API sent
// it with --json, else decoded into a T and shown by human.
func showObject[T any](cmd *cobra.Command, opts *clientOptions, c *apiClient, method, path string, body any, human func(out io.Writer, v *T) error) error {
	var raw json.RawMessage
	if err := c.do(cmd.Context(), method, path, nil, body, &raw); err != nil {
		return err
	}
	if opts.JSON {
		return printJSON(cmd.OutOrStdout(), raw)
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("unexpected answer: %w", err)
	}
	return human(cmd.OutOrStdout(), &v)
}

// showList prints a list route's items: JSON lines with --json, else a
// table with header and one row per item, decoded into a T.
func showList[T any](cmd *cobra.Command, opts *clientOptions, c *apiClient, path string, q url.Values, header []string, row func(t *table, v *T)) error {
	items, err := c.list(cmd.Context(), path, q)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if opts.JSON {
		return printJSONLines(out, items)
	}
	t := newTable(out, header...)
	for _, raw := range items {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("unexpected answer: %w", err)
		}
		row(t, &v)
	}
	return t.flush()
}

// printJSON writes v as one line of JSON, for --json (JSON lines).
func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// table writes aligned columns; call flush when done.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(anySlice(header)...)
	}
	return t
}

func (t *table) row(cols ...any) {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = cell(c)
	}
	fmt.Fprintln(t.tw, strings.Join(parts, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

func anySlice(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// cell shows a value in a table: "-" for nothing, no tabs or line breaks.
func cell(v any) string {
	var s string
	switch x := v.(type) {
	case nil:
		return "-"
	case string:
		s = x
	case *string:
		if x == nil {
			return "-"
		}
		s = *x
	case *int32:
		if x == nil {
			return "-"
		}
		s = fmt.Sprint(*x)
	case *time.Time:
		if x == nil {
			return "-"
		}
		s = x.UTC().Format(time.RFC3339)
	case time.Time:
		if x.IsZero() {
			return "-"
		}
		s = x.UTC().Format(time.RFC3339)
	case []string:
		s = strings.Join(x, ",")
	default:
		s = fmt.Sprint(x)
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return "-"
	}
	return strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
}

// truncate shortens s to n runes with an ellipsis.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
