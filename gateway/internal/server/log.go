package server

import (
	"log"
	"net/http"
	"time"

	"whisperd/gateway/internal/statusrec"
)

// logRequests writes one line per request: method, path, status, duration.
func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := statusrec.New(w)
		path := r.URL.Path
		next.ServeHTTP(rec, r)
		log.Printf("%s %s %d %s", r.Method, path, rec.Status(), time.Since(start).Round(time.Millisecond))
	})
}
