package server

import (
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	"whisperd/gateway/internal/pbjson"
)

// compactJSON is grpc-gateway's protojson marshaler with compact output, so that the
// generated routes answer byte for byte like the hand-written ones (protojson adds
// random spaces on purpose).
type compactJSON struct {
	runtime.JSONPb
}

func newMarshaler() *compactJSON {
	return &compactJSON{JSONPb: runtime.JSONPb{MarshalOptions: pbjson.Options}}
}

func (m *compactJSON) Marshal(v any) ([]byte, error) {
	raw, err := m.JSONPb.Marshal(v)
	if err != nil {
		return nil, err
	}
	out, err := pbjson.Compact(raw)
	if err != nil {
		return raw, nil
	}
	return out, nil
}
