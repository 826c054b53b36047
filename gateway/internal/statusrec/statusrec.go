// Package statusrec wraps an http.ResponseWriter to remember the status it answered with,
// for the access log and the request metrics, and keeps Flush working (event streams).
package statusrec

import "net/http"

// Writer records the first status written through it.
type Writer struct {
	http.ResponseWriter
	status int
}

// New wraps w.
func New(w http.ResponseWriter) *Writer { return &Writer{ResponseWriter: w} }

// Status is the status answered: 200 when the handler wrote nothing explicit.
func (r *Writer) Status() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}

func (r *Writer) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *Writer) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *Writer) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (r *Writer) Unwrap() http.ResponseWriter { return r.ResponseWriter }
