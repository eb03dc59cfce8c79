package api

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/secrets"
)

// endpointView is an HTTP endpoint as the API shows it: encrypted header
// values are masked, only their names leave the process, and so are the
// credentials of its URL (see secrets.RedactURL).
type endpointView struct {
	ID               int64             `json:"id"`
	Name             string            `json:"name"`
	URL              string            `json:"url"`
	Headers          map[string]string `json:"headers"`
	EncryptedHeaders map[string]string `json:"encrypted_headers"`
	CreatedAt        time.Time         `json:"created_at"`
	UpdatedAt        time.Time         `json:"updated_at"`
}

func newEndpointView(e *outbox.Endpoint) endpointView {
	v := endpointView{
		ID: e.ID, Name: e.Name, URL: secrets.RedactURL(e.URL), Headers: e.Headers, EncryptedHeaders: map[string]string{},
		CreatedAt: e.CreatedAt.UTC(), UpdatedAt: e.UpdatedAt.UTC(),
	}
	if v.Headers == nil {
		v.Headers = map[string]string{}
	}
	for _, n := range e.EncryptedHeaderNames {
		v.EncryptedHeaders[n] = masked
	}
	return v
}

func (s *Server) listEndpoints(w http.ResponseWriter, r *http.Request) {
	eps, err := s.d.Store.ListEndpoints(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]endpointView, 0, len(eps))
	for _, e := range eps {
		out = append(out, newEndpointView(e))
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

func (s *Server) getEndpoint(w http.ResponseWriter, r *http.Request) {
	e, err := s.d.Store.GetEndpoint(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newEndpointView(e))
}

func (s *Server) createEndpoint(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	body, err := readBody(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var e config.HTTPEndpoint
	if err := decodeStrict(body, &e); err != nil {
		s.fail(w, r, err)
		return
	}
	for _, k := range slices.Sorted(maps.Keys(e.EncryptedHeaders)) {
		if e.EncryptedHeaders[k] == masked {
			s.fail(w, r, invalid("encrypted_headers["+k+"]", "%q is the mask the API shows; give the value itself", masked))
			return
		}
	}
	if err := checkURLUnmasked(e.URL); err != nil {
		s.fail(w, r, err)
		return
	}
	row, err := s.sealEndpoint(e)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.d.Store.CreateEndpoint(ctx, row); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("endpoint", e.Name).Msg("http endpoint created through the API")
	s.respondEndpoint(ctx, w, r, e.Name, http.StatusCreated)
}

func (s *Server) patchEndpoint(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	name := r.PathValue("name")
	body, err := readBody(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	cur, err := s.d.Store.GetEndpoint(ctx, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	view := newEndpointView(cur)
	var e config.HTTPEndpoint
	if _, err := patched(config.HTTPEndpoint{Name: view.Name, URL: view.URL, Headers: view.Headers, EncryptedHeaders: view.EncryptedHeaders}, body, &e); err != nil {
		s.fail(w, r, err)
		return
	}
	if e.Name != name {
		s.fail(w, r, invalid("name", "cannot be changed (create a new endpoint instead)"))
		return
	}
	// The URL as shown (credentials masked) keeps the stored one.
	if e.URL == view.URL {
		e.URL = cur.URL
	} else if err := checkURLUnmasked(e.URL); err != nil {
		s.fail(w, r, err)
		return
	}
	// Masked values keep what is stored; only then is anything opened.
	var stored map[string]string
	for _, k := range slices.Sorted(maps.Keys(e.EncryptedHeaders)) {
		if e.EncryptedHeaders[k] != masked {
			continue
		}
		if !slices.Contains(cur.EncryptedHeaderNames, k) {
			s.fail(w, r, invalid("encrypted_headers["+k+"]", "%q keeps a stored value, but %s has none; give the value itself", masked, k))
			return
		}
		if stored == nil {
			if stored, err = s.d.Box.OpenMap(cur.EncryptedHeaders); err != nil {
				s.fail(w, r, fmt.Errorf("endpoint %s: %w", name, err))
				return
			}
		}
		e.EncryptedHeaders[k] = stored[k]
	}
	row, err := s.sealEndpoint(e)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.d.Store.PutEndpoint(ctx, row); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("endpoint", name).Msg("http endpoint changed through the API")
	s.respondEndpoint(ctx, w, r, name, http.StatusOK)
}

// sealEndpoint validates an endpoint as the config loader does and seals
// its encrypted headers.
func (s *Server) sealEndpoint(e config.HTTPEndpoint) (*outbox.Endpoint, error) {
	if errs := config.ValidateEndpoint(e, s.d.Config.EncryptionKey != ""); len(errs) > 0 {
		return nil, fromConfigErrors(errs)
	}
	row, err := outbox.SealEndpoint(s.d.Box, e)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", e.Name, err)
	}
	return row, nil
}

// checkURLUnmasked refuses a new URL that still holds the mask: its
// credentials would be lost, and the receiver would get "********".
func checkURLUnmasked(u string) error {
	if strings.Contains(u, masked) || strings.Contains(u, "%2A%2A%2A%2A%2A%2A%2A%2A") {
		return invalid("url", "%q holds the mask the API shows in place of credentials; give the whole URL", secrets.RedactURL(u))
	}
	return nil
}

func (s *Server) respondEndpoint(ctx context.Context, w http.ResponseWriter, r *http.Request, name string, status int) {
	// Delivery re-reads endpoints; sinks naming this one may now deliver.
	// Routing (Refresh) compares only sinks, which did not change.
	s.d.Reload()
	e, err := s.d.Store.GetEndpoint(ctx, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, status, newEndpointView(e))
}

func (s *Server) deleteEndpoint(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	name := r.PathValue("name")
	users, err := s.d.Store.ListSinksUsingEndpoint(ctx, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(users) > 0 {
		s.fail(w, r, conflict("in_use", "http endpoint %q is used by sink(s) %s; change or delete them first", name, strings.Join(users, ", ")))
		return
	}
	if err := s.d.Store.DeleteEndpoint(ctx, name); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("endpoint", name).Msg("http endpoint deleted through the API")
	s.d.Reload()
	w.WriteHeader(http.StatusNoContent)
}
