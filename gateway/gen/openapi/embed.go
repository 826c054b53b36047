// Package openapi embeds the OpenAPI document protoc-gen-openapiv2 generates from the
// proto's google.api.http rules (`make gen`); the gateway merges its hand-written routes
// into it (internal/docs). This file is hand-written; the JSON beside it is generated.
package openapi

import _ "embed"

// Generated is gateway/gen/openapi/whisperd.swagger.json.
//
//go:embed whisperd.swagger.json
var Generated []byte
