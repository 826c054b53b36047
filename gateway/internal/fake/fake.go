// Package fake is an in-process whisperd for the gateway's unit tests: the generated
// service interfaces on a bufconn listener, with behaviour supplied per test.
package fake

import (
	"context"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	"whisperd/gateway/internal/backend"

	pb "whisperd/gateway/gen/whisperdv1"
)

// Upload is what the fake Submit saw.
type Upload struct {
	// Order is "options" and then "chunk" per message, in arrival order.
	Order []string
	// Options of the first message.
	Options *pb.JobOptions
	// Bytes is the audio total; MaxChunk the largest message.
	Bytes, MaxChunk int
	// CRC32 is the CRC-32 (IEEE) of the audio bytes in arrival order.
	CRC32 uint32
	// Completed is true when the client closed the stream normally (not cancelled).
	Completed bool
}

// Whisperd is the fake service. Set the hooks a test needs; the rest answer UNIMPLEMENTED.
type Whisperd struct {
	pb.UnimplementedTranscriptionServer
	pb.UnimplementedModelControlServer

	// SubmitErr, when set, is returned after the upload was read.
	SubmitErr error
	// Events are sent by StreamProgress, one by one; EventGate, when set, is waited on
	// before each event after the first.
	Events    []*pb.JobEvent
	EventGate chan struct{}
	// GetFunc answers Get.
	GetFunc func(*pb.GetJobRequest) (*pb.Job, error)
	// TranscriptFunc answers GetTranscript.
	TranscriptFunc func(*pb.GetTranscriptRequest) (*pb.Transcript, error)
	// ModelEvents are sent by WatchEvents, which then waits for the client to leave.
	ModelEvents []*pb.ModelEvent

	mu             sync.Mutex
	uploads        []Upload
	authorizations []string
	// Health is the grpc.health.v1 server; tests flip its status.
	Health *health.Server
}

// Uploads returns what every Submit call saw so far.
func (f *Whisperd) Uploads() []Upload {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Upload(nil), f.uploads...)
}

// Authorizations returns the authorization metadata of every Status call so far.
func (f *Whisperd) Authorizations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.authorizations...)
}

// Submit counts and discards the audio: it never holds more than one chunk.
func (f *Whisperd) Submit(stream grpc.ClientStreamingServer[pb.SubmitRequest, pb.Job]) error {
	var up Upload
	defer func() {
		f.mu.Lock()
		f.uploads = append(f.uploads, up)
		f.mu.Unlock()
	}()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			up.Completed = true
			break
		}
		if err != nil {
			return err
		}
		switch p := req.GetPayload().(type) {
		case *pb.SubmitRequest_Options:
			up.Order = append(up.Order, "options")
			up.Options = p.Options
		case *pb.SubmitRequest_Chunk:
			if len(up.Order) < 32 {
				up.Order = append(up.Order, "chunk")
			}
			up.Bytes += len(p.Chunk)
			up.CRC32 = crc32.Update(up.CRC32, crc32.IEEETable, p.Chunk)
			up.MaxChunk = max(up.MaxChunk, len(p.Chunk))
		}
	}
	if f.SubmitErr != nil {
		return f.SubmitErr
	}
	return stream.SendAndClose(&pb.Job{Id: "job-1", Status: pb.JobStatus_JOB_STATUS_QUEUED, Options: up.Options})
}

// StreamProgress sends Events.
func (f *Whisperd) StreamProgress(_ *pb.StreamProgressRequest, stream grpc.ServerStreamingServer[pb.JobEvent]) error {
	for i, ev := range f.Events {
		if i > 0 && f.EventGate != nil {
			select {
			case <-f.EventGate:
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	return nil
}

// Get calls GetFunc.
func (f *Whisperd) Get(_ context.Context, req *pb.GetJobRequest) (*pb.Job, error) {
	if f.GetFunc == nil {
		return f.UnimplementedTranscriptionServer.Get(context.Background(), req)
	}
	return f.GetFunc(req)
}

// GetTranscript calls TranscriptFunc.
func (f *Whisperd) GetTranscript(_ context.Context, req *pb.GetTranscriptRequest) (*pb.Transcript, error) {
	if f.TranscriptFunc == nil {
		return f.UnimplementedTranscriptionServer.GetTranscript(context.Background(), req)
	}
	return f.TranscriptFunc(req)
}

// Status answers a fixed CPU status and remembers the authorization it came with.
func (f *Whisperd) Status(ctx context.Context, _ *pb.ModelStatusRequest) (*pb.ModelStatus, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.authorizations = append(f.authorizations, strings.Join(md.Get("authorization"), ","))
	f.mu.Unlock()
	return &pb.ModelStatus{State: pb.ModelState_MODEL_STATE_READY, Model: "ggml-tiny.en.bin", QueueDepth: 2}, nil
}

// WatchEvents sends ModelEvents, then holds the stream open until the client leaves.
func (f *Whisperd) WatchEvents(_ *pb.WatchModelEventsRequest, stream grpc.ServerStreamingServer[pb.ModelEvent]) error {
	for _, ev := range f.ModelEvents {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

// Start serves f on bufconn and returns a Backend connected to it; opts are extra dial
// options (the token interceptors, for example).
func Start(t *testing.T, f *Whisperd, opts ...grpc.DialOption) *backend.Backend {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	pb.RegisterTranscriptionServer(srv, f)
	pb.RegisterModelControlServer(srv, f)
	f.Health = health.NewServer()
	grpc_health_v1.RegisterHealthServer(srv, f.Health)
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn", append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
	})
	return backend.New("bufconn", conn)
}
