package sse

import (
	"context"
	"encoding/json"
	"net/http"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/backend"
	"whisperd/gateway/internal/pbjson"

	pb "whisperd/gateway/gen/whisperdv1"
)

// progressEvent keeps the earlier service's shape and key order exactly.
type progressEvent struct {
	Type    string  `json:"type"`
	Percent float32 `json:"percent"`
}

// JobEventData is the SSE event name and data of one StreamProgress event:
//
//	snapshot -> status    the job
//	progress -> progress  {"type":"progress","percent":N}
//	segment  -> segment   {"type":"segment", ...the segment's fields}
//	requeued -> requeued  the job
//	done     -> done      the whole job (done, failed or cancelled: its status says)
func JobEventData(ev *pb.JobEvent) (name string, data []byte, err error) {
	switch e := ev.GetEvent().(type) {
	case *pb.JobEvent_Snapshot:
		data, err = pbjson.Marshal(e.Snapshot)
		return "status", data, err
	case *pb.JobEvent_Progress:
		data, err = json.Marshal(progressEvent{Type: "progress", Percent: e.Progress.GetPercent()})
		return "progress", data, err
	case *pb.JobEvent_Segment:
		data, err = pbjson.With(e.Segment, map[string]any{"type": "segment"})
		return "segment", data, err
	case *pb.JobEvent_Requeued:
		data, err = pbjson.Marshal(e.Requeued)
		return "requeued", data, err
	case *pb.JobEvent_Done:
		data, err = pbjson.Marshal(e.Done)
		return "done", data, err
	}
	return "", nil, nil // an event kind newer than this gateway: skipped
}

// JobStream serves GET /v1/jobs/{id}/stream.
func JobStream(b *backend.Backend, errs apierr.Mapper) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(backend.Outgoing(r))
		defer cancel() // ends the gRPC stream when the client goes away or done was sent
		stream, err := b.Jobs.StreamProgress(ctx, &pb.StreamProgressRequest{Id: r.PathValue("id")})
		if err != nil {
			errs.Write(w, err, false)
			return
		}
		first, err := stream.Recv()
		if err != nil {
			errs.Write(w, err, false)
			return
		}
		sw := Start(w)
		err = Pump(ctx, sw, first, stream.Recv, func(ev *pb.JobEvent) (bool, error) {
			name, data, err := JobEventData(ev)
			if err != nil || name == "" {
				return false, err
			}
			if err := sw.Event(name, data); err != nil {
				return true, err
			}
			return name == "done", nil
		})
		if err != nil && ctx.Err() == nil {
			sw.Fail(errs, err, "stream of job "+r.PathValue("id"))
		}
	}
}
