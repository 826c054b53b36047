package openai_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"whisperd/gateway/internal/fake"
	"whisperd/gateway/internal/server"

	pb "whisperd/gateway/gen/whisperdv1"
)

func doneJob(status pb.JobStatus) *pb.Job {
	return &pb.Job{
		Id: "job-1", Status: status, Language: "en", DurationSecs: 11, Error: "decoder exploded",
		Segments: []*pb.Segment{
			{Index: 0, Start: 0, End: 5, Text: " And so my fellow Americans,", Words: []*pb.Word{{Text: "And", Start: 0.3, End: 0.5}}},
			{Index: 1, Start: 5, End: 10.4, Text: " ask not.", Words: []*pb.Word{{Text: "ask", Start: 5, End: 5.4}}},
		},
	}
}

// call posts an OpenAI-style form (fields first, then the file, as the SDKs send it).
func call(t *testing.T, f *fake.Whisperd, path string, fields [][2]string, withFile bool) (int, http.Header, []byte) {
	t.Helper()
	h, err := server.New(context.Background(), fake.Start(t, f), server.Options{MaxWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, kv := range fields {
		_ = mw.WriteField(kv[0], kv[1])
	}
	if withFile {
		w, _ := mw.CreateFormFile("file", "jfk.wav")
		_, _ = w.Write([]byte("RIFF...."))
	}
	_ = mw.Close()
	resp, err := http.Post(srv.URL+path, mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, out
}

func events(job *pb.Job) []*pb.JobEvent {
	return []*pb.JobEvent{
		{Event: &pb.JobEvent_Snapshot{Snapshot: &pb.Job{Id: job.Id, Status: pb.JobStatus_JOB_STATUS_QUEUED}}},
		{Event: &pb.JobEvent_Progress{Progress: &pb.Progress{Percent: 50}}},
		{Event: &pb.JobEvent_Done{Done: job}},
	}
}

func TestJSONIsTheJoinedText(t *testing.T) {
	f := &fake.Whisperd{Events: events(doneJob(pb.JobStatus_JOB_STATUS_DONE))}
	code, _, body := call(t, f, "/v1/audio/transcriptions", [][2]string{{"model", "whisper-1"}, {"language", "en"}, {"prompt", "JFK"}}, true)
	if code != 200 || string(body) != `{"text":"And so my fellow Americans, ask not."}`+"\n" {
		t.Fatalf("%d %s", code, body)
	}
	o := f.Uploads()[0].Options
	if o.GetLanguage() != "en" || o.GetInitialPrompt() != "JFK" || o.GetTask() != pb.Task_TASK_TRANSCRIBE || o.GetWordTimestamps() {
		t.Fatalf("options %v", o)
	}
}

func TestTranslationsTranslate(t *testing.T) {
	f := &fake.Whisperd{Events: events(doneJob(pb.JobStatus_JOB_STATUS_DONE))}
	if code, _, body := call(t, f, "/v1/audio/translations", nil, true); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	if f.Uploads()[0].Options.GetTask() != pb.Task_TASK_TRANSLATE {
		t.Fatal("translations did not ask for translate")
	}
}

func TestVerboseJSONWithWords(t *testing.T) {
	f := &fake.Whisperd{Events: events(doneJob(pb.JobStatus_JOB_STATUS_DONE))}
	code, _, body := call(t, f, "/v1/audio/transcriptions", [][2]string{
		{"response_format", "verbose_json"}, {"timestamp_granularities[]", "word"}, {"timestamp_granularities[]", "segment"},
	}, true)
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	var v struct {
		Task, Language, Text string
		Duration             float64
		Segments             []map[string]any
		Words                []map[string]any
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatal(err)
	}
	if v.Task != "transcribe" || v.Language != "english" || v.Duration != 11 || len(v.Segments) != 2 || len(v.Words) != 2 {
		t.Fatalf("%s", body)
	}
	for _, key := range []string{"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"} {
		if _, ok := v.Segments[0][key]; !ok {
			t.Errorf("segment lacks %q", key)
		}
	}
	if v.Words[1]["word"] != "ask" || !f.Uploads()[0].Options.GetWordTimestamps() {
		t.Fatalf("words %v", v.Words)
	}
}

func TestFailedJobIsAServerError(t *testing.T) {
	f := &fake.Whisperd{Events: events(doneJob(pb.JobStatus_JOB_STATUS_FAILED))}
	code, _, body := call(t, f, "/v1/audio/transcriptions", nil, true)
	var e struct{ Error map[string]any }
	_ = json.Unmarshal(body, &e)
	if code != 500 || e.Error["type"] != "server_error" || e.Error["message"] == "" {
		t.Fatalf("%d %s", code, body)
	}
}

func TestMissingFileIsAnInvalidRequest(t *testing.T) {
	code, _, body := call(t, &fake.Whisperd{}, "/v1/audio/transcriptions", [][2]string{{"model", "whisper-1"}}, false)
	var e struct{ Error map[string]any }
	_ = json.Unmarshal(body, &e)
	if code != 400 || e.Error["type"] != "invalid_request_error" || e.Error["param"] != "file" {
		t.Fatalf("%d %s", code, body)
	}
}

func TestBadResponseFormat(t *testing.T) {
	code, _, body := call(t, &fake.Whisperd{}, "/v1/audio/transcriptions", [][2]string{{"response_format", "docx"}}, true)
	var e struct{ Error map[string]any }
	_ = json.Unmarshal(body, &e)
	if code != 400 || e.Error["param"] != "response_format" {
		t.Fatalf("%d %s", code, body)
	}
}
