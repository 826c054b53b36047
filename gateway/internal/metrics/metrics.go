// Package metrics counts the gateway's HTTP requests for Prometheus (client_golang) and
// serves them at /metrics: requests and latency by method, route pattern and status.
//
// The route is the pattern that matched ("/v1/jobs/{id}"), never the path itself, so a
// label's values stay bounded however many jobs there are. Paths that match no route
// count as "unmatched".
package metrics

import (
	"context"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"whisperd/gateway/internal/statusrec"
)

// Unmatched is the route label of requests no route answered (404s of unknown paths).
const Unmatched = "unmatched"

// Metrics holds the gateway's registry and request metrics.
type Metrics struct {
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight prometheus.Gauge
}

// New makes the request metrics plus the Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whisperd_gateway_http_requests_total",
			Help: "HTTP requests answered, by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "whisperd_gateway_http_request_duration_seconds",
			Help: "Time to answer an HTTP request (an event stream: until it ends), by method, route pattern and status code.",
			// Unary calls take milliseconds; uploads of long files and waiting OpenAI
			// calls take seconds to minutes.
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800},
		}, []string{"method", "route", "code"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "whisperd_gateway_http_requests_in_flight",
			Help: "HTTP requests being answered now (open event streams included).",
		}),
	}
	m.registry.MustRegister(
		m.requests, m.duration, m.inFlight,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Handler serves the registry in Prometheus' text (or negotiated) format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}

type routeKey struct{}

// route is filled in by whichever router answers the request.
type route struct{ pattern string }

// Instrument counts every request that reaches next, labelled with the pattern next's
// router matched. next must be (or wrap, passing the same *http.Request) a ServeMux:
// Go's mux records the pattern on the request it is given.
func (m *Metrics) Instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		m.inFlight.Inc()
		defer m.inFlight.Dec()
		rt := &route{}
		r = r.WithContext(context.WithValue(r.Context(), routeKey{}, rt))
		rec := statusrec.New(w)
		next.ServeHTTP(rec, r)
		pattern := rt.pattern
		if pattern == "" {
			pattern = muxPattern(r.Pattern)
		}
		if pattern == "" {
			pattern = Unmatched
		}
		labels := prometheus.Labels{"method": method(r.Method), "route": pattern, "code": strconv.Itoa(rec.Status())}
		m.requests.With(labels).Inc()
		m.duration.With(labels).Observe(time.Since(start).Seconds())
	})
}

// GatewayRoutes is a grpc-gateway middleware that names the route of the calls it
// serves by their google.api.http pattern (Go's mux only sees its catch-all "/").
func GatewayRoutes(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		if pat, ok := runtime.HTTPPattern(r.Context()); ok {
			if rt, ok := r.Context().Value(routeKey{}).(*route); ok {
				rt.pattern = wildcard.ReplaceAllString(pat.String(), "{$1}")
			}
		}
		next(w, r, params)
	}
}

// wildcard is a one-segment variable as grpc-gateway prints it: "{id=*}" reads "{id}",
// as in the proto's http rule and Go's own patterns.
var wildcard = regexp.MustCompile(`\{([^=}]+)=\*\}`)

// muxPattern is a Go ServeMux pattern without its method ("GET /v1/jobs" -> "/v1/jobs");
// "" for the catch-all, which only grpc-gateway's routes or a miss reach.
func muxPattern(p string) string {
	if i := strings.IndexByte(p, ' '); i >= 0 {
		p = p[i+1:]
	}
	if p == "/" {
		return ""
	}
	return strings.TrimSuffix(p, "{$}")
}

// method keeps the label bounded: the standard methods, anything else as "other".
func method(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete,
		http.MethodHead, http.MethodOptions:
		return m
	}
	return "other"
}
