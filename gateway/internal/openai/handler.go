package openai

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/backend"
	"whisperd/gateway/internal/upload"

	pb "whisperd/gateway/gen/whisperdv1"
)

// Handler serves one of the two routes; task says which (translations = translate).
func Handler(b *backend.Backend, errs apierr.Mapper, task pb.Task, maxWait time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		req := &request{format: "json"}
		job, err := upload.Submit(r, b, req.form(task))
		if err != nil {
			writeError(w, errs, err, true)
			return
		}
		ctx, cancel := context.WithTimeout(backend.Outgoing(r), maxWait)
		defer cancel()
		done, err := follow(ctx, b, job.GetId())
		if err != nil {
			if r.Context().Err() != nil {
				// The caller is gone and will never read the result: stop the work.
				cancelJob(b, r, job.GetId())
				return
			}
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				err = apierr.Problem{HTTPStatus: http.StatusGatewayTimeout, Code: codes.DeadlineExceeded,
					Message: "job " + job.GetId() + " did not finish within " + maxWait.String() + " (--max-wait); it goes on: GET /v1/jobs/" + job.GetId()}
			}
			writeError(w, errs, err, false)
			return
		}
		switch done.GetStatus() {
		case pb.JobStatus_JOB_STATUS_DONE:
		case pb.JobStatus_JOB_STATUS_CANCELLED:
			writeError(w, errs, apierr.Problem{HTTPStatus: http.StatusConflict, Code: codes.Aborted, Message: "job " + done.GetId() + " was cancelled: " + done.GetError()}, false)
			return
		default:
			writeError(w, errs, apierr.Problem{HTTPStatus: http.StatusInternalServerError, Code: codes.Internal, Message: "job " + done.GetId() + " failed: " + done.GetError()}, false)
			return
		}
		if err := render(w, backend.Outgoing(r), b, req, done); err != nil {
			writeError(w, errs, err, false)
		}
	}
}

// follow waits on StreamProgress for the terminal event and returns the whole job.
func follow(ctx context.Context, b *backend.Backend, id string) (*pb.Job, error) {
	stream, err := b.Jobs.StreamProgress(ctx, &pb.StreamProgressRequest{Id: id})
	if err != nil {
		return nil, err
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// The stream ended without a terminal event: ask for the job itself.
			return b.Jobs.Get(ctx, &pb.GetJobRequest{Id: id})
		}
		if err != nil {
			return nil, err
		}
		if done := ev.GetDone(); done != nil {
			return done, nil
		}
	}
}

func cancelJob(b *backend.Backend, r *http.Request, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(backend.Outgoing(r)), 10*time.Second)
	defer cancel()
	if _, err := b.Jobs.Cancel(ctx, &pb.CancelJobRequest{Id: id}); err != nil {
		log.Printf("openai route: client left; cancelling job %s: %v", id, err)
	}
}
