package metrics_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"whisperd/gateway/internal/fake"
	"whisperd/gateway/internal/server"

	pb "whisperd/gateway/gen/whisperdv1"
)

// scrape returns the request counter's value per "method route code".
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, m := range families["whisperd_gateway_http_requests_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		out[labels["method"]+" "+labels["route"]+" "+labels["code"]] = m.GetCounter().GetValue()
	}
	return out
}

func TestRequestsAreCountedByRoutePatternNotPath(t *testing.T) {
	f := &fake.Whisperd{GetFunc: func(r *pb.GetJobRequest) (*pb.Job, error) {
		if r.GetId() != "j1" {
			return nil, status.Error(codes.NotFound, "no job "+r.GetId())
		}
		return &pb.Job{Id: "j1", Status: pb.JobStatus_JOB_STATUS_DONE}, nil
	}}
	h, err := server.New(context.Background(), fake.Start(t, f), server.Options{MaxWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	for path, want := range map[string]int{
		"/v1/jobs/j1": 200, "/jobs/j1": 200, "/v1/jobs/j2": 404, "/v1/jobs/j3": 404,
		"/nothing/here": 404, "/docs": 200,
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	got := scrape(t, srv.URL)
	for key, want := range map[string]float64{
		"GET /v1/jobs/{id} 200": 2, // the legacy alias counts under its /v1 route
		"GET /v1/jobs/{id} 404": 2,
		"GET unmatched 404":     1,
		"GET /docs 200":         1,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v (all: %v)", key, got[key], want, got)
		}
	}
	for key := range got {
		if strings.Contains(key, "j1") || strings.Contains(key, "j2") || strings.Contains(key, "nothing") {
			t.Errorf("a label holds a path: %q", key)
		}
	}
}
