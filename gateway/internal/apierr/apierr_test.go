package apierr

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestCodeTable(t *testing.T) {
	m := Mapper{Target: "whisperd:50051"}
	cases := []struct {
		code   codes.Code
		upload bool
		want   int
	}{
		{codes.InvalidArgument, false, 400},
		{codes.NotFound, false, 404},
		{codes.FailedPrecondition, false, 409},
		{codes.Unavailable, false, 503},
		{codes.ResourceExhausted, true, 413},
		{codes.ResourceExhausted, false, 429},
		{codes.Unauthenticated, false, 401},
		{codes.PermissionDenied, false, 403},
		{codes.DeadlineExceeded, false, 504},
		{codes.Internal, false, 500},
		{codes.Unknown, false, 500},
		{codes.DataLoss, false, 500},
	}
	for _, c := range cases {
		p := m.From(status.Error(c.code, "x"), c.upload)
		if p.HTTPStatus != c.want {
			t.Errorf("%v (upload=%v): got %d, want %d", c.code, c.upload, p.HTTPStatus, c.want)
		}
	}
}

func TestCodeNames(t *testing.T) {
	for code, want := range map[codes.Code]string{
		codes.InvalidArgument: "INVALID_ARGUMENT", codes.OK: "OK", codes.Canceled: "CANCELLED",
		codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
		codes.NotFound: "NOT_FOUND", codes.Unavailable: "UNAVAILABLE",
	} {
		if got := CodeName(code); got != want {
			t.Errorf("CodeName(%v) = %q, want %q", code, got, want)
		}
	}
}

// whisperd's strict admission mode: UNAVAILABLE with RetryInfo -> 503 + Retry-After,
// rounded up to whole seconds.
func TestRetryInfoBecomesRetryAfter(t *testing.T) {
	st, err := status.New(codes.Unavailable, "the model is loading").WithDetails(
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	Mapper{Target: "t"}.Write(w, st.Err(), true)
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d", w.Code)
	}
	if got := w.Header().Get("Retry-After"); got != "2" {
		t.Fatalf("Retry-After %q, want 2", got)
	}
	want := `{"code":"UNAVAILABLE","error":"the model is loading"}`
	if got := strings.TrimSpace(w.Body.String()); got != want {
		t.Fatalf("body %s, want %s", got, want)
	}
}

func TestNoRetryInfoNoHeader(t *testing.T) {
	w := httptest.NewRecorder()
	Mapper{Target: "t"}.Write(w, status.Error(codes.Unavailable, "draining"), false)
	if w.Header().Get("Retry-After") != "" {
		t.Fatal("Retry-After without RetryInfo")
	}
}

func TestUnreachableNamesTheAddress(t *testing.T) {
	err := status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused"`)
	p := Mapper{Target: "127.0.0.1:1"}.From(err, false)
	if p.HTTPStatus != 503 || !strings.Contains(p.Message, "cannot reach whisperd at 127.0.0.1:1") {
		t.Fatalf("got %+v", p)
	}
}

func TestProblemPassesThrough(t *testing.T) {
	p := Mapper{}.From(BadRequest("missing %q", "audio"), true)
	if p.HTTPStatus != 400 || p.Code != codes.InvalidArgument || p.Message != `missing "audio"` {
		t.Fatalf("got %+v", p)
	}
	if p := (Mapper{}).From(errors.New("boom"), false); p.HTTPStatus != 500 {
		t.Fatalf("plain error: %+v", p)
	}
}
