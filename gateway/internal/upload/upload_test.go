package upload_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/backend"
	"whisperd/gateway/internal/fake"
	"whisperd/gateway/internal/upload"
)

// handler answers the job id or the mapped error.
func handler(b *backend.Backend) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		job, err := upload.Submit(r, b, upload.JobForm)
		if err != nil {
			apierr.Mapper{Target: "fake"}.Write(w, err, true)
			return
		}
		_, _ = io.WriteString(w, job.GetId())
	}
}

type part struct{ name, file, value string }

func form(t *testing.T, parts ...part) (string, *bytes.Buffer) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, p := range parts {
		var w io.Writer
		var err error
		if p.file != "" {
			w, err = mw.CreateFormFile(p.name, p.file)
		} else {
			w, err = mw.CreateFormField(p.name)
		}
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(w, p.value)
	}
	_ = mw.Close()
	return mw.FormDataContentType(), &body
}

func post(t *testing.T, url, ctype string, body io.Reader) (int, string) {
	t.Helper()
	resp, err := http.Post(url, ctype, body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

func TestOptionsFirstThenChunksInOrder(t *testing.T) {
	f := &fake.Whisperd{}
	srv := httptest.NewServer(handler(fake.Start(t, f)))
	defer srv.Close()
	audio := strings.Repeat("a", 3*upload.ChunkSize+100)
	ctype, body := form(t,
		part{name: "language", value: "de"}, part{name: "task", value: "translate"},
		part{name: "beam_size", value: "3"}, part{name: "word_timestamps", value: "true"},
		part{name: "initial_prompt", value: "Names."}, part{name: "vad", value: "1"},
		part{name: "model", value: "ignored"},
		part{name: "audio", file: "talk.wav", value: audio})
	code, out := post(t, srv.URL, ctype, body)
	if code != 200 || out != "job-1" {
		t.Fatalf("%d %s", code, out)
	}
	up := f.Uploads()[0]
	want := []string{"options", "chunk", "chunk", "chunk", "chunk"}
	if fmt.Sprint(up.Order) != fmt.Sprint(want) {
		t.Fatalf("order %v, want %v", up.Order, want)
	}
	if up.Bytes != len(audio) || up.MaxChunk != upload.ChunkSize {
		t.Fatalf("bytes %d max chunk %d", up.Bytes, up.MaxChunk)
	}
	o := up.Options
	if o.GetLanguage() != "de" || o.GetTask().String() != "TASK_TRANSLATE" || o.GetBeamSize() != 3 ||
		!o.GetWordTimestamps() || !o.GetVad() || o.GetInitialPrompt() != "Names." || o.GetFilename() != "talk.wav" {
		t.Fatalf("options %v", o)
	}
}

func TestMissingAudioIs400NamingTheField(t *testing.T) {
	f := &fake.Whisperd{}
	srv := httptest.NewServer(handler(fake.Start(t, f)))
	defer srv.Close()
	ctype, body := form(t, part{name: "language", value: "en"})
	code, out := post(t, srv.URL, ctype, body)
	if code != 400 || !strings.Contains(out, `\"audio\"`) {
		t.Fatalf("%d %s", code, out)
	}
	var e map[string]string
	if err := json.Unmarshal([]byte(out), &e); err != nil || e["code"] != "INVALID_ARGUMENT" {
		t.Fatalf("body %s", out)
	}
	if len(f.Uploads()) != 0 {
		t.Fatal("a Submit stream was opened without audio")
	}
}

func TestNotMultipartIs400(t *testing.T) {
	srv := httptest.NewServer(handler(fake.Start(t, &fake.Whisperd{})))
	defer srv.Close()
	if code, _ := post(t, srv.URL, "application/json", strings.NewReader("{}")); code != 400 {
		t.Fatalf("status %d", code)
	}
}

// The earlier service's curl order, the file first and its options after it: the file
// waits in a temporary file until the form ends, then goes to whisperd with every option.
func TestAudioFirstThenOptionsIsSpooledAndKeepsTheOptions(t *testing.T) {
	f := &fake.Whisperd{}
	srv := httptest.NewServer(handler(fake.Start(t, f)))
	defer srv.Close()
	audio := strings.Repeat("a", 2*upload.ChunkSize+7)
	ctype, body := form(t, part{name: "audio", file: "a.wav", value: audio}, part{name: "language", value: "en"},
		part{name: "beam_size", value: "2"}, part{name: "request_id", value: "retry-7"})
	code, out := post(t, srv.URL, ctype, body)
	if code != 200 || out != "job-1" {
		t.Fatalf("%d %s", code, out)
	}
	up := f.Uploads()[0]
	if o := up.Options; o.GetLanguage() != "en" || o.GetBeamSize() != 2 || o.GetFilename() != "a.wav" || o.GetRequestId() != "retry-7" {
		t.Fatalf("options %v", o)
	}
	if up.Bytes != len(audio) || !up.Completed {
		t.Fatalf("upload %+v", up)
	}
}

// Options on both sides of the file: the file was already streaming when the late option
// came, so it cannot reach whisperd any more: 400, and the Submit stream is cancelled
// rather than closed, so whisperd creates no job.
func TestOptionsOnBothSidesOfTheAudioIs400AndNoJob(t *testing.T) {
	f := &fake.Whisperd{}
	srv := httptest.NewServer(handler(fake.Start(t, f)))
	defer srv.Close()
	ctype, body := form(t, part{name: "beam_size", value: "2"}, part{name: "audio", file: "a.wav", value: "RIFF"},
		part{name: "language", value: "en"})
	code, out := post(t, srv.URL, ctype, body)
	if code != 400 || !strings.Contains(out, "must come before") {
		t.Fatalf("%d %s", code, out)
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(f.Uploads()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ups := f.Uploads(); len(ups) != 1 || ups[0].Completed {
		t.Fatalf("uploads %+v: want one cancelled stream", ups)
	}
}

func TestBadOptionValueIs400(t *testing.T) {
	srv := httptest.NewServer(handler(fake.Start(t, &fake.Whisperd{})))
	defer srv.Close()
	ctype, body := form(t, part{name: "task", value: "sing"}, part{name: "audio", file: "a.wav", value: "x"})
	if code, out := post(t, srv.URL, ctype, body); code != 400 || !strings.Contains(out, "task") {
		t.Fatalf("%d %s", code, out)
	}
}

// zeros is an endless source of audio bytes that costs no memory.
type zeros struct{ left int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), z.left)
	clear(p[:n])
	z.left -= n
	return int(n), nil
}

// A large upload streams through: the heap stays flat however big the file is.
func TestLargeUploadUsesConstantMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 256 MiB")
	}
	const size = 256 << 20
	f := &fake.Whisperd{}
	srv := httptest.NewServer(handler(fake.Start(t, f)))
	defer srv.Close()

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		_ = mw.WriteField("language", "en")
		w, _ := mw.CreateFormFile("audio", "big.wav")
		_, _ = io.Copy(w, &zeros{left: size})
		_ = mw.Close()
		_ = pw.Close()
	}()

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	go func() {
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()
	code, out := post(t, srv.URL, mw.FormDataContentType(), pr)
	close(stop)
	if code != 200 {
		t.Fatalf("%d %s", code, out)
	}
	if got := f.Uploads()[0].Bytes; got != size {
		t.Fatalf("whisperd got %d bytes, want %d", got, size)
	}
	growth := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("heap in use grew by %.1f MiB for a %d MiB upload", float64(growth)/(1<<20), size>>20)
	if growth > 32<<20 {
		t.Fatalf("heap grew by %d MiB streaming %d MiB: the upload is being buffered", growth>>20, size>>20)
	}
}
