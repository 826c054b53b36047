// Package docs serves /openapi.json and the Swagger UI at /docs. The document is the
// generated one (from the proto's google.api.http rules) merged with routes.json, the
// hand-written entries for the routes no rule can describe (multipart upload, SSE, raw
// transcript, OpenAI, /health), and the unversioned aliases of the earlier service.
package docs

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"whisperd/gateway/gen/openapi"
)

//go:embed routes.json
var routesJSON []byte

const description = `REST gateway of whisperd, the gRPC speech-transcription service. Every route also
answers under the earlier service's unversioned path (/jobs, /jobs/{id}, /model/status, ...:
the same behaviour and JSON); they are listed under the "legacy" tag. JSON uses the
protobuf mapping with proto field names (duration_secs, created_at) and every field present.
Errors are {"error": message, "code": GRPC_CODE}; the OpenAI routes use OpenAI's error shape.
An Authorization header is forwarded to whisperd; without one the gateway sends its --token.`

// legacyPrefixes are the /v1 routes the earlier service had without the version.
var legacyPrefixes = []string{"/v1/jobs", "/v1/model/"}

// Document builds the merged OpenAPI document (Swagger 2.0), as JSON.
func Document() ([]byte, error) {
	var doc, extra map[string]any
	if err := json.Unmarshal(openapi.Generated, &doc); err != nil {
		return nil, fmt.Errorf("generated openapi: %w", err)
	}
	if err := json.Unmarshal(routesJSON, &extra); err != nil {
		return nil, fmt.Errorf("routes.json: %w", err)
	}
	doc["info"] = map[string]any{"title": "whisperd REST gateway", "version": "v1", "description": description}
	paths := doc["paths"].(map[string]any)
	for path, item := range extra["paths"].(map[string]any) {
		existing, _ := paths[path].(map[string]any)
		if existing == nil {
			existing = map[string]any{}
		}
		// Per method: a hand-written operation replaces the generated one (the raw
		// transcript and the SSE streams are not the JSON the generator describes).
		for method, op := range item.(map[string]any) {
			existing[method] = op
		}
		paths[path] = existing
	}
	defs := doc["definitions"].(map[string]any)
	for name, def := range extra["definitions"].(map[string]any) {
		defs[name] = def
	}
	for _, item := range paths {
		for _, op := range item.(map[string]any) {
			addDefaultError(op.(map[string]any))
		}
	}
	addLegacy(paths)
	doc["tags"] = append(doc["tags"].([]any),
		map[string]any{"name": "OpenAI", "description": "OpenAI's audio API, for the official SDKs (base_url http://HOST:PORT/v1)."},
		map[string]any{"name": "Gateway", "description": "The gateway itself: health, this document, the docs page."},
		map[string]any{"name": "legacy", "description": "The earlier service's unversioned paths: aliases of the /v1 routes."},
	)
	return json.MarshalIndent(doc, "", "  ")
}

func addDefaultError(op map[string]any) {
	responses := op["responses"].(map[string]any)
	if _, ok := responses["default"]; !ok {
		responses["default"] = map[string]any{
			"description": "An error: the HTTP status follows the gRPC code.",
			"schema":      map[string]any{"$ref": "#/definitions/gatewayError"},
		}
	}
}

// addLegacy lists each /v1/jobs... and /v1/model/... route again without /v1.
func addLegacy(paths map[string]any) {
	var v1 []string
	for path := range paths {
		for _, prefix := range legacyPrefixes {
			if strings.HasPrefix(path, prefix) {
				v1 = append(v1, path)
				break
			}
		}
	}
	sort.Strings(v1)
	for _, path := range v1 {
		alias := map[string]any{}
		for method, op := range paths[path].(map[string]any) {
			copied := map[string]any{}
			for k, v := range op.(map[string]any) {
				copied[k] = v
			}
			copied["operationId"] = fmt.Sprint(copied["operationId"], "_Legacy")
			copied["tags"] = []any{"legacy"}
			copied["summary"] = fmt.Sprintf("Alias of %s %s. %v", strings.ToUpper(method), path, op.(map[string]any)["summary"])
			alias[method] = copied
		}
		paths[strings.TrimPrefix(path, "/v1")] = alias
	}
}
