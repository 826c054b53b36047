package sse_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/fake"
	"whisperd/gateway/internal/sse"

	pb "whisperd/gateway/gen/whisperdv1"
)

type event struct {
	name string
	data map[string]any
}

// readEvent reads one event (skipping comments) from an SSE body.
func readEvent(t *testing.T, r *bufio.Reader) (event, bool) {
	t.Helper()
	var ev event
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return ev, false
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "" && ev.name != "":
			return ev, true
		case strings.HasPrefix(line, "event: "):
			ev.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev.data); err != nil {
				t.Fatalf("data is not JSON: %q", line)
			}
		}
	}
}

func job(status pb.JobStatus) *pb.Job {
	return &pb.Job{Id: "j1", Status: status, DurationSecs: 11}
}

func TestJobStreamEventsFlushedOneByOneUntilDone(t *testing.T) {
	gate := make(chan struct{})
	f := &fake.Whisperd{EventGate: gate, Events: []*pb.JobEvent{
		{Event: &pb.JobEvent_Snapshot{Snapshot: job(pb.JobStatus_JOB_STATUS_QUEUED)}},
		{Event: &pb.JobEvent_Progress{Progress: &pb.Progress{Percent: 42.5}}},
		{Event: &pb.JobEvent_Segment{Segment: &pb.Segment{Index: 0, Start: 0, End: 10.36, Text: "and so my fellow Americans"}}},
		{Event: &pb.JobEvent_Requeued{Requeued: job(pb.JobStatus_JOB_STATUS_QUEUED)}},
		{Event: &pb.JobEvent_Done{Done: job(pb.JobStatus_JOB_STATUS_FAILED)}},
		// Never sent to the client: the stream ends with done.
		{Event: &pb.JobEvent_Progress{Progress: &pb.Progress{Percent: 100}}},
	}}
	b := fake.Start(t, f)
	mux := http.NewServeMux()
	mux.Handle("GET /v1/jobs/{id}/stream", sse.JobStream(b, apierr.Mapper{Target: "fake"}))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/v1/jobs/j1/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Fatalf("Cache-Control %q", cc)
	}
	r := bufio.NewReader(resp.Body)
	var got []event
	// Each event must arrive before the fake sends the next one: the gateway flushes
	// per event instead of buffering.
	for i := 0; ; i++ {
		ev, ok := readEvent(t, r)
		if !ok {
			break
		}
		got = append(got, ev)
		if ev.name != "done" {
			select {
			case gate <- struct{}{}:
			case <-time.After(5 * time.Second):
				t.Fatalf("the fake did not ask for event %d", i+1)
			}
		}
	}
	names := make([]string, len(got))
	for i, ev := range got {
		names[i] = ev.name
	}
	if strings.Join(names, ",") != "status,progress,segment,requeued,done" {
		t.Fatalf("events %v", names)
	}
	if got[0].data["id"] != "j1" || got[0].data["status"] != "JOB_STATUS_QUEUED" || got[0].data["duration_secs"] != 11.0 {
		t.Errorf("status data %v", got[0].data)
	}
	if len(got[1].data) != 2 || got[1].data["type"] != "progress" || got[1].data["percent"] != 42.5 {
		t.Errorf("progress data %v", got[1].data)
	}
	if got[2].data["type"] != "segment" || got[2].data["text"] != "and so my fellow Americans" || got[2].data["end"] != 10.36 {
		t.Errorf("segment data %v", got[2].data)
	}
	if got[4].data["status"] != "JOB_STATUS_FAILED" || got[4].data["id"] != "j1" {
		t.Errorf("done data %v", got[4].data)
	}
}

func TestUnknownJobIsA404NotAStream(t *testing.T) {
	b := fake.Start(t, &fake.Whisperd{}) // no events: StreamProgress returns at once
	mux := http.NewServeMux()
	mux.Handle("GET /v1/jobs/{id}/stream", sse.JobStream(b, apierr.Mapper{Target: "fake"}))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v1/jobs/x/stream")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatal("an empty stream answered 200")
	}
}

func TestKeepAliveComment(t *testing.T) {
	old := sse.KeepAlive
	sse.KeepAlive = 50 * time.Millisecond
	defer func() { sse.KeepAlive = old }()
	b := fake.Start(t, &fake.Whisperd{ModelEvents: []*pb.ModelEvent{{State: pb.ModelState_MODEL_STATE_READY}}})
	mux := http.NewServeMux()
	mux.Handle("GET /v1/model/events", sse.ModelEvents(b, apierr.Mapper{Target: "fake"}))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v1/model/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	ev, ok := readEvent(t, r)
	if !ok || ev.name != "ready" || ev.data["state"] != "MODEL_STATE_READY" {
		t.Fatalf("first event %+v", ev)
	}
	line, _ := r.ReadString('\n')
	if line != ": keep-alive\n" {
		t.Fatalf("got %q, want a keep-alive comment", line)
	}
}

func TestStateNames(t *testing.T) {
	for state, want := range map[pb.ModelState]string{
		pb.ModelState_MODEL_STATE_READY:           "ready",
		pb.ModelState_MODEL_STATE_UNLOADED:        "unloaded",
		pb.ModelState_MODEL_STATE_LOADING:         "loading",
		pb.ModelState_MODEL_STATE_WAITING_FOR_GPU: "waiting_for_gpu",
		pb.ModelState_MODEL_STATE_UNLOADING:       "unloading",
	} {
		if got := sse.StateName(state); got != want {
			t.Errorf("%v: %q, want %q", state, got, want)
		}
	}
}
