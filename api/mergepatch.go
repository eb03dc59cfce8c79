package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// patched applies a merge patch to the current object and decodes the
// result strictly into out, so PATCH validates like POST. It returns the
// merged JSON, which tells which fields ended up set.
func patched(cur any, patch []byte, out any) (json.RawMessage, error) {
	curJSON, err := json.Marshal(cur)
	if err != nil {
		return nil, fmt.Errorf("encode current object: %w", err)
	}
	merged, err := mergePatch(curJSON, patch)
	if err != nil {
		return nil, err
	}
	if err := decodeStrict(merged, out); err != nil {
		return nil, err
	}
	return merged, nil
}

// mergePatch applies an RFC 7386 JSON merge patch: objects merge key by
// key, null removes a key, anything else replaces. PATCH bodies use it so
// a client can change one retry setting or one header without resending
// the rest.
func mergePatch(target, patch json.RawMessage) (json.RawMessage, error) {
	var p any
	if err := unmarshalNumbers(patch, &p); err != nil {
		return nil, invalid("", "request body is not valid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	po, ok := p.(map[string]any)
	if !ok {
		return nil, invalid("", "request body must be a JSON object (a merge patch)")
	}
	var t any
	if err := unmarshalNumbers(target, &t); err != nil {
		return nil, fmt.Errorf("merge patch: current object: %w", err)
	}
	return json.Marshal(mergeValue(t, po))
}

func mergeValue(target any, patch any) any {
	po, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	to, ok := target.(map[string]any)
	if !ok {
		to = map[string]any{}
	}
	for k, v := range po {
		if v == nil {
			delete(to, k)
			continue
		}
		to[k] = mergeValue(to[k], v)
	}
	return to
}

// unmarshalNumbers decodes keeping numbers exact (json.Number), so a
// merge does not round large integers through float64.
func unmarshalNumbers(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return dec.Decode(v)
}
