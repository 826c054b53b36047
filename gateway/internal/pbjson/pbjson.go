// Package pbjson writes protobuf messages as JSON the way whisperd's webhooks do: the
// protobuf JSON mapping with the proto field names (duration_secs, created_at), and
// every field present so that REST clients see a stable shape.
package pbjson

import (
	"bytes"
	"encoding/json"
	"net/http"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Options are the marshal options of every JSON answer, the grpc-gateway routes included.
var Options = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// Marshal renders m compactly. protojson adds random spaces on purpose (so nobody
// compares its bytes); compacting gives the same bytes every time.
func Marshal(m proto.Message) ([]byte, error) {
	raw, err := Options.Marshal(m)
	if err != nil {
		return nil, err
	}
	return Compact(raw)
}

// Compact removes protojson's insignificant spaces (also used for the grpc-gateway
// routes' marshaler, so both kinds of route answer the same bytes).
func Compact(raw []byte) ([]byte, error) {
	var out bytes.Buffer
	if err := json.Compact(&out, raw); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// With renders m with extra leading keys, for event shapes like
// {"type":"segment", ...segment fields...}.
func With(m proto.Message, extra map[string]any) ([]byte, error) {
	body, err := Marshal(m)
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, err
	}
	for k, v := range extra {
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		fields[k] = raw
	}
	return json.Marshal(fields)
}

// Write sends m as a JSON answer with the given status.
func Write(w http.ResponseWriter, status int, m proto.Message) {
	body, err := Marshal(m)
	if err != nil {
		http.Error(w, `{"error":"cannot render the answer","code":"INTERNAL"}`, http.StatusInternalServerError)
		return
	}
	WriteRaw(w, status, body)
}

// WriteRaw sends already-encoded JSON.
func WriteRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
	_, _ = w.Write([]byte("\n"))
}

// WriteValue sends any JSON-encodable value.
func WriteValue(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"cannot render the answer","code":"INTERNAL"}`, http.StatusInternalServerError)
		return
	}
	WriteRaw(w, status, body)
}
