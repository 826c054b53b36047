// Package server puts the routes together: grpc-gateway's generated handlers for the
// plain unary calls (Get, Cancel, model Status/Load/Unload) and the hand-written ones for
// what a google.api.http rule cannot serve (multipart upload, SSE, raw transcript, List
// with the earlier service's filter, OpenAI, health, docs).
package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/backend"
	"whisperd/gateway/internal/docs"
	"whisperd/gateway/internal/health"
	"whisperd/gateway/internal/jobs"
	"whisperd/gateway/internal/metrics"
	"whisperd/gateway/internal/openai"
	"whisperd/gateway/internal/sse"

	pb "whisperd/gateway/gen/whisperdv1"
)

// Options shape the handler beyond the backend.
type Options struct {
	// MaxWait bounds how long the OpenAI routes wait for a job.
	MaxWait time.Duration
}

// New returns the gateway's whole HTTP handler.
func New(ctx context.Context, b *backend.Backend, opts Options) (http.Handler, error) {
	errs := apierr.Mapper{Target: b.Target}
	m := metrics.New()
	gw := runtime.NewServeMux(
		runtime.WithMiddlewares(metrics.GatewayRoutes),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, newMarshaler()),
		runtime.WithErrorHandler(func(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, err error) {
			errs.Write(w, err, false)
		}),
		runtime.WithRoutingErrorHandler(func(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, status int) {
			code := codes.NotFound
			if status == http.StatusMethodNotAllowed {
				code = codes.Unimplemented
			}
			apierr.WriteProblem(w, apierr.Problem{HTTPStatus: status, Code: code, Message: fmt.Sprintf("no route %s %s", r.Method, r.URL.Path)})
		}),
	)
	if err := pb.RegisterTranscriptionHandlerClient(ctx, gw, b.Jobs); err != nil {
		return nil, err
	}
	if err := pb.RegisterModelControlHandlerClient(ctx, gw, b.Model); err != nil {
		return nil, err
	}
	doc, err := docs.Document()
	if err != nil {
		return nil, err
	}

	// Go's ServeMux picks the most specific pattern, so the hand-written routes win over
	// the catch-all that hands the rest to grpc-gateway.
	mux := http.NewServeMux()
	mux.Handle("/", gw)
	mux.Handle("POST /v1/jobs", jobs.Submit(b, errs))
	mux.Handle("GET /v1/jobs", jobs.List(b, errs))
	mux.Handle("GET /v1/jobs/{id}/transcript", jobs.Transcript(b, errs))
	mux.Handle("GET /v1/jobs/{id}/stream", sse.JobStream(b, errs))
	mux.Handle("GET /v1/model/events", sse.ModelEvents(b, errs))
	mux.Handle("POST /v1/audio/transcriptions", openai.Handler(b, errs, pb.Task_TASK_TRANSCRIBE, opts.MaxWait))
	mux.Handle("POST /v1/audio/translations", openai.Handler(b, errs, pb.Task_TASK_TRANSLATE, opts.MaxWait))
	mux.Handle("GET /health", health.Handler(b, errs))
	mux.Handle("GET /openapi.json", docs.OpenAPI(doc))
	mux.HandleFunc("GET /docs", docs.Page)
	mux.HandleFunc("GET /docs/{$}", docs.Page)
	mux.Handle("GET /docs/{file}", docs.Assets())
	mux.Handle("GET /metrics", m.Handler())
	return logRequests(legacyPaths(m.Instrument(mux))), nil
}

// legacyPaths serves the earlier service's unversioned routes (/jobs, /jobs/{id}/stream,
// /model/status, ...) as their /v1 twins: one set of handlers, identical answers.
func legacyPaths(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if p == "/jobs" || strings.HasPrefix(p, "/jobs/") || strings.HasPrefix(p, "/model/") {
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/v1" + p
			if r.URL.RawPath != "" {
				r2.URL.RawPath = "/v1" + r.URL.RawPath
			}
			r2.RequestURI = r2.URL.RequestURI()
			r = r2
		}
		next.ServeHTTP(w, r)
	})
}
