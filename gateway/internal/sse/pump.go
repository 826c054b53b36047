package sse

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
)

// stopping closes when the gateway shuts down: open streams then end cleanly at once
// instead of holding the graceful shutdown until its deadline.
var (
	stopping = make(chan struct{})
	stopOnce sync.Once
)

// StopStreams ends every open event stream (called on SIGTERM/SIGINT).
func StopStreams() { stopOnce.Do(func() { close(stopping) }) }

// Recv is a gRPC server stream's Recv.
type Recv[T proto.Message] func() (T, error)

// received is one result of Recv, passed from the reading goroutine.
type received[T proto.Message] struct {
	msg T
	err error
}

// Pump reads the stream on a goroutine and hands each message to emit, sending a
// keep-alive comment whenever the stream has been quiet for KeepAlive. It returns when
// emit says stop, the stream ends, or ctx (the HTTP request) is done; the caller's
// cancel of the gRPC context then ends the stream on whisperd's side too.
//
// first is the first message, received before the headers went out (so that an
// unknown job is still a 404 and not an empty event stream).
func Pump[T proto.Message](ctx context.Context, w *Writer, first T, recv Recv[T], emit func(T) (stop bool, err error)) error {
	if stop, err := emit(first); stop || err != nil {
		return err
	}
	msgs := make(chan received[T])
	go func() {
		for {
			m, err := recv()
			select {
			case msgs <- received[T]{m, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	ticker := time.NewTicker(KeepAlive)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stopping:
			return nil
		case <-ticker.C:
			if err := w.Comment("keep-alive"); err != nil {
				return err
			}
		case r := <-msgs:
			if errors.Is(r.err, io.EOF) {
				return nil
			}
			if r.err != nil {
				return r.err
			}
			ticker.Reset(KeepAlive)
			if stop, err := emit(r.msg); stop || err != nil {
				return err
			}
		}
	}
}
