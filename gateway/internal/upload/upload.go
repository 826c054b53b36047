// Package upload turns a multipart/form-data upload into whisperd's client-streaming
// Submit: the option fields become the first message, then the file goes on in 64 KiB
// chunks. The form holds nothing in memory beyond one chunk, so a file of any size costs
// the gateway the same memory (gRPC flow control holds the reader back when whisperd is
// slower than the client).
//
// Two ways, by Form.Spool:
//
//   - Streamed (POST /v1/jobs when option fields come first): the file part goes to
//     whisperd as it arrives. Submit takes the options first; requests, httpx (and so the
//     openai SDK) and curl with -F in that order send form fields before files. When the
//     file is the first part (the earlier service's curl examples: -F audio=@f.mp3 -F
//     language=en), the upload is spooled as below instead, so that order works too. Only
//     a form with option fields on both sides of the file is refused (400: the file was
//     already on its way); fields the dialect does not know are ignored wherever they are.
//   - Spooled (OpenAI's routes, and /v1/jobs when the file comes first): the file part is
//     copied to a temporary file on disk
//     (os.CreateTemp in the default temporary folder, $TMPDIR or /tmp), the rest of the
//     form is read, and then the temporary file is submitted with the complete options,
//     so fields may come in any order (OpenAI's own curl examples put -F file=@... first).
//     The temporary file is removed when the request ends, whatever happened.
package upload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"syscall"

	"google.golang.org/grpc/codes"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/backend"

	pb "whisperd/gateway/gen/whisperdv1"
)

// ChunkSize is the audio bytes per Submit message.
const ChunkSize = 64 << 10

// maxFieldBytes bounds a text field (the longest real one, initial_prompt, is 4096
// characters): a text part is read into memory, so it must not be unbounded.
const maxFieldBytes = 64 << 10

// Effect says what a text field did.
type Effect int

const (
	// Ignored: a field this dialect does not use (OpenAI's model, for example).
	Ignored Effect = iota
	// Option: the field set a JobOptions field, so it must precede the file.
	Option
	// Response: the field only shapes the HTTP answer and may come anywhere.
	Response
)

// Form is one dialect of the upload form: the native /v1/jobs or OpenAI's.
type Form struct {
	// FileField is the name of the file part ("audio" or "file").
	FileField string
	// Field applies one text field to the options (or to the dialect's own state).
	Field func(opts *pb.JobOptions, name, value string) (Effect, error)
	// Defaults, when set, are the options before any field (OpenAI's route sets the task).
	Defaults func() *pb.JobOptions
	// Spool copies the file part to a temporary file and submits it after the last part,
	// so that fields may come after the file (OpenAI's routes); otherwise the file is
	// streamed as it arrives and option fields must precede it (POST /v1/jobs).
	Spool bool
}

// Submit reads r's multipart body and streams it into whisperd (through a temporary file
// when form.Spool). It returns the queued job, or an error for apierr: an apierr.Problem
// for form mistakes, a gRPC status otherwise. On any failure the Submit stream is
// cancelled, so no job is created.
func Submit(r *http.Request, b *backend.Backend, form Form) (job *pb.Job, err error) {
	defer func() {
		if err != nil {
			drain(r)
		}
	}()
	reader, err := r.MultipartReader()
	if err != nil {
		return nil, apierr.BadRequest("want a multipart/form-data body with the audio in the %q part: %v", form.FileField, err)
	}
	opts := &pb.JobOptions{}
	if form.Defaults != nil {
		opts = form.Defaults()
	}
	if form.Spool {
		return spooled(r, b, form, reader, opts, nil)
	}
	// Cancelling this context aborts the Submit stream: whisperd then drops the spool.
	ctx, cancel := context.WithCancel(backend.Outgoing(r))
	defer cancel()

	var stream pb.Transcription_SubmitClient
	fields := 0
	for {
		part, err := reader.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, apierr.BadRequest("reading the multipart body: %v", err)
		}
		name := part.FormName()
		if name == form.FileField && fields == 0 && stream == nil {
			// The file comes first: the options (if any) follow it, so it waits on disk.
			return spooled(r, b, form, reader, opts, part)
		}
		if name == form.FileField {
			if stream != nil {
				return nil, apierr.BadRequest("more than one %q part: send one file per request", name)
			}
			if opts.Filename == "" {
				opts.Filename = part.FileName()
			}
			stream, err = b.Jobs.Submit(ctx)
			if err != nil {
				return nil, err
			}
			if err := send(stream, &pb.SubmitRequest{Payload: &pb.SubmitRequest_Options{Options: opts}}); err != nil {
				return nil, err
			}
			if err := pump(stream, part, clientReadError); err != nil {
				return nil, err
			}
			continue
		}
		fields++
		value, err := readField(part)
		if err != nil {
			return nil, err
		}
		effect, err := form.Field(opts, name, value)
		if err != nil {
			return nil, err
		}
		if effect == Option && stream != nil {
			return nil, apierr.BadRequest("form field %q came after the %q part: option fields must come before the file, which is streamed to whisperd as it arrives", name, form.FileField)
		}
	}
	if stream == nil {
		return nil, apierr.BadRequest("missing the %q part: the audio file to transcribe (multipart/form-data field %q)", form.FileField, form.FileField)
	}
	return stream.CloseAndRecv()
}

// spooled reads the whole form, the file part into a temporary file, and then submits
// that file with the complete options. first, when not nil, is a part already taken from
// reader. On any failure nothing is submitted, or the Submit stream is cancelled, so no
// job is created.
func spooled(r *http.Request, b *backend.Backend, form Form, reader *multipart.Reader, opts *pb.JobOptions, first *multipart.Part) (*pb.Job, error) {
	var spool *os.File
	defer func() {
		if spool != nil {
			_ = spool.Close()
			_ = os.Remove(spool.Name())
		}
	}()
	filename := ""
	for {
		part, err := first, error(nil)
		if part == nil {
			part, err = reader.NextPart()
		}
		first = nil
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, apierr.BadRequest("reading the multipart body: %v", err)
		}
		name := part.FormName()
		if name == form.FileField {
			if spool != nil {
				return nil, apierr.BadRequest("more than one %q part: send one file per request", name)
			}
			filename = part.FileName()
			if spool, err = os.CreateTemp("", "whisperd-gateway-upload-*"); err != nil {
				return nil, spoolError(err)
			}
			if err := spoolPart(spool, part); err != nil {
				return nil, err
			}
			continue
		}
		value, err := readField(part)
		if err != nil {
			return nil, err
		}
		if _, err := form.Field(opts, name, value); err != nil {
			return nil, err
		}
	}
	if spool == nil {
		return nil, apierr.BadRequest("missing the %q part: the audio file to transcribe (multipart/form-data field %q)", form.FileField, form.FileField)
	}
	if opts.Filename == "" {
		opts.Filename = filename
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return nil, spoolError(err)
	}
	// Cancelling this context aborts the Submit stream: whisperd then drops its spool.
	ctx, cancel := context.WithCancel(backend.Outgoing(r))
	defer cancel()
	stream, err := b.Jobs.Submit(ctx)
	if err != nil {
		return nil, err
	}
	if err := send(stream, &pb.SubmitRequest{Payload: &pb.SubmitRequest_Options{Options: opts}}); err != nil {
		return nil, err
	}
	if err := pump(stream, spool, spoolError); err != nil {
		return nil, err
	}
	return stream.CloseAndRecv()
}

// spoolPart copies the file part to dst through one ChunkSize buffer. A read error is
// the client's (400), a write error the gateway's disk (spoolError).
func spoolPart(dst io.Writer, part io.Reader) error {
	buf := make([]byte, ChunkSize)
	for {
		n, err := part.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return spoolError(werr)
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return clientReadError(err)
		}
	}
}

// spoolError is a failure of the gateway's temporary file: 507 Insufficient Storage when
// the disk (or the quota) is full, 500 otherwise.
func spoolError(err error) error {
	p := apierr.Problem{HTTPStatus: http.StatusInternalServerError, Code: codes.Internal,
		Message: fmt.Sprintf("the gateway could not spool the upload to a temporary file (in %s, $TMPDIR): %v", os.TempDir(), err)}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		p.HTTPStatus, p.Code = http.StatusInsufficientStorage, codes.ResourceExhausted
		p.Message = fmt.Sprintf("the gateway ran out of disk space spooling the upload to a temporary file (in %s, $TMPDIR): %v", os.TempDir(), err)
	}
	return p
}

func clientReadError(err error) error {
	return apierr.BadRequest("reading the upload: %v", err)
}

// pump copies the file into the stream in ChunkSize messages, reusing one buffer: Send
// has serialised the message when it returns. readError maps a failure to read src.
func pump(stream pb.Transcription_SubmitClient, src io.Reader, readError func(error) error) error {
	buf := make([]byte, ChunkSize)
	for {
		n, err := io.ReadFull(src, buf)
		if n > 0 {
			if err := send(stream, &pb.SubmitRequest{Payload: &pb.SubmitRequest_Chunk{Chunk: buf[:n]}}); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return readError(err)
		}
	}
}

// send returns whisperd's own error when it ended the stream early (Send then only
// says io.EOF; the status comes from CloseAndRecv).
func send(stream pb.Transcription_SubmitClient, msg *pb.SubmitRequest) error {
	err := stream.Send(msg)
	if errors.Is(err, io.EOF) {
		_, err = stream.CloseAndRecv()
		if err == nil {
			err = fmt.Errorf("whisperd ended the upload early")
		}
	}
	return err
}

// maxDrain bounds how much of a refused upload is read and thrown away.
const maxDrain = 64 << 20

// drain reads what is left of a refused upload before the error answer goes out. Most
// HTTP clients (httpx, requests, curl) send the whole body before they read the answer;
// if the server closed the connection instead, they would report a broken pipe rather
// than the 4xx/5xx (strict admission's 503 + Retry-After, for example). Past maxDrain
// the connection is closed after all.
func drain(r *http.Request) {
	_, _ = io.CopyN(io.Discard, r.Body, maxDrain)
}

func readField(part *multipart.Part) (string, error) {
	data, err := io.ReadAll(io.LimitReader(part, maxFieldBytes+1))
	if err != nil {
		return "", apierr.BadRequest("reading form field %q: %v", part.FormName(), err)
	}
	if len(data) > maxFieldBytes {
		return "", apierr.BadRequest("form field %q is longer than %d bytes", part.FormName(), maxFieldBytes)
	}
	return string(data), nil
}
