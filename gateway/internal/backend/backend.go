// Package backend is the gateway's gRPC connection to whisperd and its clients.
package backend

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	pb "whisperd/gateway/gen/whisperdv1"
)

// MaxMessageBytes bounds a single gRPC message from whisperd (a long job's segments).
const MaxMessageBytes = 256 << 20

// Backend holds the connection and one client per whisperd service.
type Backend struct {
	// Target is the address dialled, for error messages.
	Target string
	Conn   *grpc.ClientConn
	Jobs   pb.TranscriptionClient
	Model  pb.ModelControlClient
	Health grpc_health_v1.HealthClient
}

// Dial connects lazily (grpc.NewClient): the gateway starts even while whisperd is down,
// and each request reports UNAVAILABLE until it is up.
func Dial(target, caFile, token string) (*Backend, error) {
	creds := insecure.NewCredentials()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading the CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
		}
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	}
	opts := append(TokenOptions(token),
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes)),
	)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, err
	}
	return New(target, conn), nil
}

// New wraps an existing connection (tests use an in-process one).
func New(target string, conn *grpc.ClientConn) *Backend {
	return &Backend{
		Target: target,
		Conn:   conn,
		Jobs:   pb.NewTranscriptionClient(conn),
		Model:  pb.NewModelControlClient(conn),
		Health: grpc_health_v1.NewHealthClient(conn),
	}
}

// Outgoing is the context for a call made on behalf of r: it carries r's Authorization
// header to whisperd, so callers that hold their own token use it.
func Outgoing(r *http.Request) context.Context {
	ctx := r.Context()
	if auth := r.Header.Get("Authorization"); auth != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
	}
	return ctx
}

// withToken adds the configured token unless the call already carries an authorization
// (forwarded from the HTTP request, which wins).
func withToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get("authorization")) > 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// TokenOptions are the dial options that send token on every call that carries no
// authorization of its own.
func TokenOptions(token string) []grpc.DialOption {
	return []grpc.DialOption{grpc.WithUnaryInterceptor(unaryToken(token)), grpc.WithStreamInterceptor(streamToken(token))}
}

func unaryToken(token string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(withToken(ctx, token), method, req, reply, cc, opts...)
	}
}

func streamToken(token string) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(withToken(ctx, token), desc, cc, method, opts...)
	}
}
