package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"whisperd/gateway/internal/backend"
	"whisperd/gateway/internal/fake"
	"whisperd/gateway/internal/server"

	pb "whisperd/gateway/gen/whisperdv1"
)

func start(t *testing.T, f *fake.Whisperd) *httptest.Server {
	t.Helper()
	h, err := server.New(context.Background(), fake.Start(t, f), server.Options{MaxWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestGetJobAndItsLegacyAlias(t *testing.T) {
	f := &fake.Whisperd{GetFunc: func(r *pb.GetJobRequest) (*pb.Job, error) {
		if r.GetId() != "j1" {
			return nil, status.Error(codes.NotFound, "no job "+r.GetId())
		}
		return &pb.Job{Id: "j1", Status: pb.JobStatus_JOB_STATUS_DONE, DurationSecs: 11}, nil
	}}
	srv := start(t, f)
	resp, v1 := get(t, srv.URL+"/v1/jobs/j1")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, v1)
	}
	var job map[string]any
	if err := json.Unmarshal([]byte(v1), &job); err != nil {
		t.Fatal(err)
	}
	// Proto field names, every field present (EmitUnpopulated).
	for _, key := range []string{"id", "status", "duration_secs", "segments", "created_at", "error", "language_probability"} {
		if _, ok := job[key]; !ok {
			t.Errorf("job JSON lacks %q: %s", key, v1)
		}
	}
	if _, legacy := get(t, srv.URL+"/jobs/j1"); legacy != v1 {
		t.Fatalf("legacy /jobs/j1 answered differently:\n%s\n%s", legacy, v1)
	}
	resp, body := get(t, srv.URL+"/v1/jobs/nope")
	if resp.StatusCode != 404 || !strings.Contains(body, `"code":"NOT_FOUND"`) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

func TestRetryInfoOnAGeneratedRoute(t *testing.T) {
	f := &fake.Whisperd{GetFunc: func(*pb.GetJobRequest) (*pb.Job, error) {
		st, _ := status.New(codes.Unavailable, "model loading").WithDetails(
			&errdetails.RetryInfo{RetryDelay: durationpb.New(2500 * time.Millisecond)})
		return nil, st.Err()
	}}
	srv := start(t, f)
	resp, body := get(t, srv.URL+"/v1/jobs/j1")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "3" {
		t.Fatalf("%d Retry-After=%q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
}

func TestTranscriptIsTheRawDocument(t *testing.T) {
	f := &fake.Whisperd{TranscriptFunc: func(r *pb.GetTranscriptRequest) (*pb.Transcript, error) {
		if r.GetFormat() != pb.TranscriptFormat_TRANSCRIPT_FORMAT_SRT {
			t.Errorf("format %v", r.GetFormat())
		}
		return &pb.Transcript{Format: r.GetFormat(), ContentType: "application/x-subrip", Content: "1\n00:00:00,000 --> 00:00:01,000\nhi\n"}, nil
	}}
	srv := start(t, f)
	resp, body := get(t, srv.URL+"/jobs/j1/transcript?format=srt")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-subrip" || !strings.HasPrefix(body, "1\n00:00:00,000") {
		t.Fatalf("%d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if resp, _ := get(t, srv.URL+"/v1/jobs/j1/transcript?format=docx"); resp.StatusCode != 400 {
		t.Fatalf("unknown format: %d", resp.StatusCode)
	}
}

func TestSubmitAnswersJobIDAndShortStatus(t *testing.T) {
	srv := start(t, &fake.Whisperd{})
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("language", "en")
	w, _ := mw.CreateFormFile("audio", "a.wav")
	_, _ = w.Write([]byte("RIFF...."))
	_ = mw.Close()
	for _, path := range []string{"/v1/jobs", "/jobs"} {
		resp, err := http.Post(srv.URL+path, mw.FormDataContentType(), bytes.NewReader(body.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if resp.StatusCode != 200 || got["job_id"] != "job-1" || got["id"] != "job-1" || got["status"] != "queued" {
			t.Fatalf("%s: %d %v", path, resp.StatusCode, got)
		}
	}
}

func TestHealth(t *testing.T) {
	f := &fake.Whisperd{}
	srv := start(t, f)
	resp, body := get(t, srv.URL+"/health")
	var got map[string]any
	_ = json.Unmarshal([]byte(body), &got)
	if resp.StatusCode != 200 || got["status"] != "ok" || got["state"] != "MODEL_STATE_READY" || got["queue_depth"] != 2.0 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if _, ok := got["gpus"]; !ok {
		t.Fatalf("no gpus: %s", body)
	}
	f.Health.SetServingStatus("", grpc_health_v1.HealthCheckResponse_NOT_SERVING)
	if resp, body := get(t, srv.URL+"/health"); resp.StatusCode != 503 {
		t.Fatalf("draining: %d %s", resp.StatusCode, body)
	}
}

func TestWhisperdDownIs503NamingTheAddress(t *testing.T) {
	b, err := backend.Dial("127.0.0.1:1", "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Conn.Close()
	h, err := server.New(context.Background(), b, server.Options{MaxWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, path := range []string{"/v1/jobs/x", "/v1/model/status", "/health", "/v1/jobs"} {
		resp, body := get(t, srv.URL+path)
		if resp.StatusCode != 503 || !strings.Contains(body, "cannot reach whisperd at 127.0.0.1:1") {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
}

func TestOpenAPIListsEveryRoute(t *testing.T) {
	srv := start(t, &fake.Whisperd{})
	resp, body := get(t, srv.URL+"/openapi.json")
	if resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	var doc struct {
		Swagger string                    `json:"swagger"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"/v1/jobs": {"get", "post"}, "/v1/jobs/{id}": {"get", "delete"},
		"/v1/jobs/{id}/stream": {"get"}, "/v1/jobs/{id}/transcript": {"get"},
		"/v1/model/status": {"get"}, "/v1/model/load": {"post"}, "/v1/model/unload": {"post"},
		"/v1/model/events": {"get"}, "/v1/audio/transcriptions": {"post"}, "/v1/audio/translations": {"post"},
		"/health": {"get"}, "/openapi.json": {"get"}, "/docs": {"get"},
		"/jobs": {"get", "post"}, "/jobs/{id}": {"get", "delete"}, "/jobs/{id}/stream": {"get"},
		"/jobs/{id}/transcript": {"get"}, "/model/status": {"get"}, "/model/load": {"post"},
		"/model/unload": {"post"}, "/model/events": {"get"},
	}
	for path, methods := range want {
		for _, m := range methods {
			if _, ok := doc.Paths[path][m]; !ok {
				t.Errorf("openapi.json lacks %s %s", strings.ToUpper(m), path)
			}
		}
	}
	if doc.Swagger != "2.0" {
		t.Errorf("swagger %q", doc.Swagger)
	}
}

// A caller's Authorization header goes to whisperd as is; without one the gateway sends
// its own token.
func TestAuthorizationForwardedElseToken(t *testing.T) {
	f := &fake.Whisperd{}
	h, err := server.New(context.Background(), fake.Start(t, f, backend.TokenOptions("gw-secret")...), server.Options{MaxWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/v1/model/status", nil)
	req.Header.Set("Authorization", "Bearer caller-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	get(t, srv.URL+"/model/status")
	got := f.Authorizations()
	if len(got) != 2 || got[0] != "Bearer caller-secret" || got[1] != "Bearer gw-secret" {
		t.Fatalf("authorizations %q", got)
	}
}
