// Package sse serves whisperd's server streams as Server-Sent Events, as the earlier
// service's /jobs/{id}/stream and /model/events did.
package sse

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"time"

	"whisperd/gateway/internal/apierr"
)

// KeepAlive is how often a comment line goes out on a quiet stream, so that proxies and
// load balancers do not close it for idleness.
var KeepAlive = 15 * time.Second

// Writer writes events and flushes each one at once.
type Writer struct {
	w       http.ResponseWriter
	flusher http.Flusher
}

// Start sends the event-stream headers. Errors before Start are ordinary JSON answers.
func Start(w http.ResponseWriter) *Writer {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	// nginx buffers responses unless told not to; events must arrive as they happen.
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sw := &Writer{w: w}
	sw.flusher, _ = w.(http.Flusher)
	sw.flush()
	return sw
}

// Event writes one event; data is one line of JSON.
func (s *Writer) Event(name string, data []byte) error {
	if _, err := fmt.Fprintf(s.w, "event: %s\ndata: %s\n\n", name, data); err != nil {
		return err
	}
	s.flush()
	return nil
}

// Comment writes a comment line (": keep-alive"), which clients ignore.
func (s *Writer) Comment(text string) error {
	if _, err := fmt.Fprintf(s.w, ": %s\n\n", text); err != nil {
		return err
	}
	s.flush()
	return nil
}

// Fail ends a stream that broke after its headers went out: the status is already 200,
// so the best left is an "error" event in the REST error shape, and the log. what names
// the stream in the log line.
func (s *Writer) Fail(errs apierr.Mapper, err error, what string) {
	p := errs.From(err, false)
	data, _ := json.Marshal(map[string]string{"error": p.Message, "code": apierr.CodeName(p.Code)})
	_ = s.Event("error", data)
	log.Printf("%s ended: %v", what, err)
}

func (s *Writer) flush() {
	if s.flusher != nil {
		s.flusher.Flush()
	}
}
