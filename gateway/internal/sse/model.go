package sse

import (
	"context"
	"net/http"
	"strings"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/backend"
	"whisperd/gateway/internal/pbjson"

	pb "whisperd/gateway/gen/whisperdv1"
)

// StateName is the event name of a model state: MODEL_STATE_WAITING_FOR_GPU ->
// waiting_for_gpu, as the earlier service named its events.
func StateName(s pb.ModelState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "MODEL_STATE_"))
}

// ModelEvents serves GET /v1/model/events: one event per transition, named after the
// state entered, with the ModelEvent as data, until the client goes away.
func ModelEvents(b *backend.Backend, errs apierr.Mapper) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(backend.Outgoing(r))
		defer cancel()
		stream, err := b.Model.WatchEvents(ctx, &pb.WatchModelEventsRequest{})
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
		err = Pump(ctx, sw, first, stream.Recv, func(ev *pb.ModelEvent) (bool, error) {
			data, err := pbjson.Marshal(ev)
			if err != nil {
				return false, err
			}
			return false, sw.Event(StateName(ev.GetState()), data)
		})
		if err != nil && ctx.Err() == nil {
			sw.Fail(errs, err, "model event stream")
		}
	}
}
