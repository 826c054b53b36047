// Package jobs holds the hand-written job routes: the multipart upload, List with the
// earlier service's status filter, and the transcript as a raw document. Get and Cancel
// are grpc-gateway's generated handlers.
package jobs

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/backend"
	"whisperd/gateway/internal/pbjson"
	"whisperd/gateway/internal/upload"

	pb "whisperd/gateway/gen/whisperdv1"
)

// StatusName is the short lowercase status of the earlier service: queued, running,
// done, failed, cancelled.
func StatusName(s pb.JobStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATUS_"))
}

// Submit serves POST /v1/jobs. It answers 200 (not 201), as the earlier service did, with
// {"job_id", "id", "status"} (status in its short form, "queued") plus the whole job
// under "job" in the same JSON as GET /v1/jobs/{id}.
func Submit(b *backend.Backend, errs apierr.Mapper) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		job, err := upload.Submit(r, b, upload.JobForm)
		if err != nil {
			errs.Write(w, err, true)
			return
		}
		jobJSON, err := pbjson.Marshal(job)
		if err != nil {
			errs.Write(w, err, false)
			return
		}
		pbjson.WriteValue(w, http.StatusOK, map[string]any{
			"job_id": job.GetId(),
			"id":     job.GetId(),
			"status": StatusName(job.GetStatus()),
			"job":    json.RawMessage(jobJSON),
		})
	}
}

// ParseStatuses reads the status filter: `status` and `statuses`, each repeated or
// comma-separated, in short (queued) or enum (JOB_STATUS_QUEUED) form.
func ParseStatuses(values []string) ([]pb.JobStatus, error) {
	var out []pb.JobStatus
	for _, v := range values {
		for _, name := range strings.Split(v, ",") {
			name = strings.ToUpper(strings.TrimSpace(name))
			if name == "" {
				continue
			}
			if !strings.HasPrefix(name, "JOB_STATUS_") {
				name = "JOB_STATUS_" + name
			}
			if name == "JOB_STATUS_CANCELED" {
				name = "JOB_STATUS_CANCELLED"
			}
			s, ok := pb.JobStatus_value[name]
			if !ok || s == 0 {
				return nil, apierr.BadRequest("unknown job status %q: want queued, running, done, failed or cancelled", strings.TrimSpace(strings.ToLower(name)))
			}
			out = append(out, pb.JobStatus(s))
		}
	}
	return out, nil
}

// List serves GET /v1/jobs?status=queued,running&page_size=20&page_token=...
func List(b *backend.Backend, errs apierr.Mapper) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		statuses, err := ParseStatuses(append(q["status"], q["statuses"]...))
		if err != nil {
			errs.Write(w, err, false)
			return
		}
		req := &pb.ListJobsRequest{Statuses: statuses, PageToken: q.Get("page_token")}
		if v := q.Get("page_size"); v != "" {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				errs.Write(w, apierr.BadRequest("page_size %q: want a whole number", v), false)
				return
			}
			req.PageSize = uint32(n)
		}
		if v := q.Get("without_segments"); v != "" {
			if req.WithoutSegments, err = upload.ParseBool(v); err != nil {
				errs.Write(w, apierr.BadRequest("without_segments: %v", err), false)
				return
			}
		}
		resp, err := b.Jobs.List(backend.Outgoing(r), req)
		if err != nil {
			errs.Write(w, err, false)
			return
		}
		pbjson.Write(w, http.StatusOK, resp)
	}
}

// formats maps ?format= to the enum; txt and text are the same.
var formats = map[string]pb.TranscriptFormat{
	"":     pb.TranscriptFormat_TRANSCRIPT_FORMAT_JSON,
	"json": pb.TranscriptFormat_TRANSCRIPT_FORMAT_JSON,
	"txt":  pb.TranscriptFormat_TRANSCRIPT_FORMAT_TEXT,
	"text": pb.TranscriptFormat_TRANSCRIPT_FORMAT_TEXT,
	"srt":  pb.TranscriptFormat_TRANSCRIPT_FORMAT_SRT,
	"vtt":  pb.TranscriptFormat_TRANSCRIPT_FORMAT_VTT,
}

// Transcript serves GET /v1/jobs/{id}/transcript?format=srt: the rendered document as
// the body, with its own content type, ready to save as a file.
func Transcript(b *backend.Backend, errs apierr.Mapper) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := strings.ToLower(r.URL.Query().Get("format"))
		format, ok := formats[name]
		if !ok {
			errs.Write(w, apierr.BadRequest("unknown format %q: want json, txt, text, srt or vtt", name), false)
			return
		}
		t, err := b.Jobs.GetTranscript(backend.Outgoing(r), &pb.GetTranscriptRequest{Id: r.PathValue("id"), Format: format})
		if err != nil {
			errs.Write(w, err, false)
			return
		}
		w.Header().Set("Content-Type", t.GetContentType())
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(t.GetContent()))
	}
}
