// Package health serves GET /health: whisperd's grpc.health.v1 verdict plus the model
// status, in the shape of the earlier service's /health.
package health

import (
	"encoding/json"
	"net/http"

	"google.golang.org/grpc/health/grpc_health_v1"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/backend"
	"whisperd/gateway/internal/pbjson"

	pb "whisperd/gateway/gen/whisperdv1"
)

// Handler answers 200 {"status":"ok", ...ModelStatus fields} when whisperd is SERVING,
// 503 {"status":"unavailable", "error": ...} otherwise (down, starting or draining).
func Handler(b *backend.Backend, errs apierr.Mapper) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx := backend.Outgoing(r)
		res, err := b.Health.Check(ctx, &grpc_health_v1.HealthCheckRequest{})
		if err != nil {
			unavailable(w, errs.From(err, false).Message)
			return
		}
		if res.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
			unavailable(w, "whisperd at "+b.Target+" is "+res.GetStatus().String())
			return
		}
		body := map[string]any{"status": "ok"}
		// Health is open on whisperd, Status may need the token: without it, say ok anyway.
		if st, err := b.Model.Status(ctx, &pb.ModelStatusRequest{}); err == nil {
			if raw, err := pbjson.Marshal(st); err == nil {
				var fields map[string]json.RawMessage
				if json.Unmarshal(raw, &fields) == nil {
					for k, v := range fields {
						body[k] = v
					}
				}
			}
		} else {
			body["model_status_error"] = errs.From(err, false).Message
		}
		pbjson.WriteValue(w, http.StatusOK, body)
	}
}

func unavailable(w http.ResponseWriter, msg string) {
	pbjson.WriteValue(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": msg})
}
