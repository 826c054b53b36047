package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"whisperd/gateway/internal/fake"
	"whisperd/gateway/internal/server"

	pb "whisperd/gateway/gen/whisperdv1"
)

// pattern is size bytes of a repeating non-zero pattern, made as it is read (no memory).
type pattern struct{ off, size int64 }

func (p *pattern) Read(b []byte) (int, error) {
	if p.off >= p.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), p.size-p.off))
	for i := range n {
		b[i] = byte((p.off + int64(i)) % 251)
	}
	p.off += int64(n)
	return n, nil
}

func patternCRC(size int64) uint32 {
	h := crc32.NewIEEE()
	_, _ = io.Copy(h, &pattern{size: size})
	return h.Sum32()
}

// gateway serves the routes on f with TMPDIR pointing at a fresh folder, returned so a
// test can see the spool file come and go.
func gateway(t *testing.T, f *fake.Whisperd) (*httptest.Server, string) {
	t.Helper()
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	h, err := server.New(context.Background(), fake.Start(t, f), server.Options{MaxWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, tmp
}

func entries(t *testing.T, dir string) []os.DirEntry {
	t.Helper()
	list, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// waitEmpty waits for the handler's deferred removal (it may run just after the answer).
func waitEmpty(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for len(entries(t, dir)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("temporary files left behind: %v", entries(t, dir))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// OpenAI's curl examples put -F file=@... first and the options after it.
func TestFieldsAfterTheFileReachSubmit(t *testing.T) {
	f := &fake.Whisperd{Events: events(doneJob(pb.JobStatus_JOB_STATUS_DONE))}
	srv, tmp := gateway(t, f)
	ctype, body := multipartBody(t, func(mw *multipart.Writer) {
		w, _ := mw.CreateFormFile("file", "jfk.wav")
		_, _ = io.WriteString(w, "RIFF....")
		for _, kv := range [][2]string{{"model", "whisper-1"}, {"language", "de"}, {"prompt", "JFK"},
			{"temperature", "0.2"}, {"timestamp_granularities[]", "word"}, {"response_format", "verbose_json"}} {
			_ = mw.WriteField(kv[0], kv[1])
		}
	})
	resp, err := http.Post(srv.URL+"/v1/audio/transcriptions", ctype, body)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(out), `"words":[{"word":"And"`) {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	up := f.Uploads()[0]
	o := up.Options
	if o.GetLanguage() != "de" || o.GetInitialPrompt() != "JFK" || o.GetTemperature() != float32(0.2) ||
		!o.GetWordTimestamps() || o.GetFilename() != "jfk.wav" || o.GetTask() != pb.Task_TASK_TRANSCRIBE {
		t.Fatalf("options %v", o)
	}
	if up.Order[0] != "options" || up.Bytes != len("RIFF....") || !up.Completed {
		t.Fatalf("upload %+v", up)
	}
	waitEmpty(t, tmp)
}

func multipartBody(t *testing.T, write func(*multipart.Writer)) (string, io.Reader) {
	t.Helper()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		write(mw)
		_ = mw.Close()
		_ = pw.Close()
	}()
	return mw.FormDataContentType(), pr
}

// A large file with the fields after it goes through a temporary file, not memory: the
// heap stays flat, whisperd gets every byte in order and the options of the later fields,
// and the temporary file is gone afterwards.
func TestLargeUploadWithFieldsAfterTheFileIsSpooledToDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("spools 64 MiB")
	}
	const size = 64 << 20
	f := &fake.Whisperd{
		Events: events(doneJob(pb.JobStatus_JOB_STATUS_DONE)),
		TranscriptFunc: func(req *pb.GetTranscriptRequest) (*pb.Transcript, error) {
			if req.GetFormat() != pb.TranscriptFormat_TRANSCRIPT_FORMAT_SRT {
				return nil, errors.New("want SRT")
			}
			return &pb.Transcript{ContentType: "application/x-subrip", Content: "1\n00:00:00,000 --> 00:00:05,000\nAnd so my fellow Americans,\n"}, nil
		},
	}
	srv, tmp := gateway(t, f)
	ctype, body := multipartBody(t, func(mw *multipart.Writer) {
		w, _ := mw.CreateFormFile("file", "big.wav")
		_, _ = io.Copy(w, &pattern{size: size})
		_ = mw.WriteField("language", "en")
		_ = mw.WriteField("response_format", "srt")
		_ = mw.WriteField("timestamp_granularities[]", "word")
	})
	want := patternCRC(size)

	// Collect often, so that HeapInuse follows what is live rather than the garbage of
	// the 64 KiB messages: a buffered upload would still show its whole size.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	var spooled atomic.Int64 // the largest temporary file seen while the request ran
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			list, _ := os.ReadDir(tmp)
			for _, e := range list {
				if info, err := e.Info(); err == nil && info.Size() > spooled.Load() {
					spooled.Store(info.Size())
				}
			}
		}
	}()
	resp, err := http.Post(srv.URL+"/v1/audio/transcriptions", ctype, body)
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(out), "And so my fellow Americans") ||
		resp.Header.Get("Content-Type") != "application/x-subrip" {
		t.Fatalf("%d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), out)
	}
	up := f.Uploads()[0]
	if up.Bytes != size || up.CRC32 != want || !up.Completed {
		t.Fatalf("whisperd got %d bytes (crc %08x), want %d (crc %08x)", up.Bytes, up.CRC32, size, want)
	}
	if o := up.Options; o.GetLanguage() != "en" || !o.GetWordTimestamps() || o.GetFilename() != "big.wav" {
		t.Fatalf("options %v", o)
	}
	growth := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("heap in use grew by %.1f MiB for a %d MiB upload; largest temporary file seen %.1f MiB",
		float64(growth)/(1<<20), size>>20, float64(spooled.Load())/(1<<20))
	if growth > 32<<20 {
		t.Fatalf("heap grew by %d MiB spooling %d MiB: the upload is being buffered in memory", growth>>20, size>>20)
	}
	if spooled.Load() == 0 {
		t.Fatal("no temporary file was seen in TMPDIR while the upload ran")
	}
	waitEmpty(t, tmp)
}

// A client that leaves in the middle of the file: no job, and no temporary file left.
func TestClientLeavingMidUploadLeavesNothing(t *testing.T) {
	f := &fake.Whisperd{Events: events(doneJob(pb.JobStatus_JOB_STATUS_DONE))}
	srv, tmp := gateway(t, f)
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		w, _ := mw.CreateFormFile("file", "big.wav")
		_, _ = io.Copy(w, &pattern{size: 4 << 20})
		time.Sleep(100 * time.Millisecond) // let the gateway create and fill its spool
		_ = pw.CloseWithError(errors.New("client gave up"))
	}()
	if resp, err := http.Post(srv.URL+"/v1/audio/transcriptions", mw.FormDataContentType(), pr); err == nil {
		_ = resp.Body.Close()
		t.Fatalf("the request went through: %d", resp.StatusCode)
	}
	waitEmpty(t, tmp)
	if ups := f.Uploads(); len(ups) != 0 {
		t.Fatalf("uploads %+v: want none", ups)
	}
}

// The temporary file cannot be made: a server error in OpenAI's shape that says why.
func TestSpoolFailureIsAServerError(t *testing.T) {
	f := &fake.Whisperd{Events: events(doneJob(pb.JobStatus_JOB_STATUS_DONE))}
	srv, _ := gateway(t, f)
	t.Setenv("TMPDIR", "/nonexistent/whisperd-gateway-test")
	ctype, body := multipartBody(t, func(mw *multipart.Writer) {
		w, _ := mw.CreateFormFile("file", "jfk.wav")
		_, _ = io.WriteString(w, "RIFF....")
	})
	resp, err := http.Post(srv.URL+"/v1/audio/transcriptions", ctype, body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct{ Error map[string]any }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	msg, _ := e.Error["message"].(string)
	if resp.StatusCode != 500 || e.Error["type"] != "server_error" || !strings.Contains(msg, "temporary file") {
		t.Fatalf("%d %v", resp.StatusCode, e)
	}
	if len(f.Uploads()) != 0 {
		t.Fatal("a Submit stream was opened without the file")
	}
}
