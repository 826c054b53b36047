// whisperd-gateway: the REST (and OpenAI-compatible) face of whisperd. It translates HTTP
// to whisperd's gRPC API and back; it keeps no state of its own.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"whisperd/gateway/internal/backend"
	"whisperd/gateway/internal/config"
	"whisperd/gateway/internal/server"
	"whisperd/gateway/internal/sse"
)

// shutdownGrace is how long running requests get to finish after SIGTERM; open event
// streams are cut after it.
const shutdownGrace = 10 * time.Second

func main() {
	if err := run(); err != nil {
		log.Printf("whisperd-gateway: %v", err)
		os.Exit(1)
	}
}

func run() error {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	cfg, err := config.Load(os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	b, err := backend.Dial(cfg.Whisperd, cfg.CA, cfg.Token)
	if err != nil {
		return fmt.Errorf("whisperd at %s: %w", cfg.Whisperd, err)
	}
	defer b.Conn.Close()
	handler, err := server.New(ctx, b, server.Options{MaxWait: cfg.MaxWait})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 30 * time.Second,
		// No read/write timeouts: uploads of hours of audio and event streams are long.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	// The one line scripts and tests wait for; with port 0 it shows the real port.
	fmt.Printf("whisperd-gateway listening on %s -> %s\n", ln.Addr(), cfg.Whisperd)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Printf("shutting down (waiting up to %s for requests in flight)", shutdownGrace)
	sse.StopStreams()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
