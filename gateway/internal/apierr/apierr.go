// Package apierr turns gRPC errors from whisperd into HTTP answers, in one table, so that
// every route (generated or hand-written) answers the same status for the same failure.
package apierr

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"whisperd/gateway/internal/pbjson"
)

// Problem is one failure, ready to be written in either error shape.
type Problem struct {
	// HTTPStatus is the answer's status code.
	HTTPStatus int
	// Code is the gRPC code (its name goes into the body).
	Code codes.Code
	// Message is shown to the caller.
	Message string
	// RetryAfter, in whole seconds (rounded up), when whisperd said when to come back.
	RetryAfter int
}

func (p Problem) Error() string { return p.Message }

// Mapper knows the whisperd address, for the "cannot reach" message.
type Mapper struct {
	Target string
}

// httpStatus is the code table. RESOURCE_EXHAUSTED is 413 on uploads (too large, disk
// full) and 429 elsewhere.
func httpStatus(c codes.Code, upload bool) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.FailedPrecondition, codes.Aborted:
		return http.StatusConflict
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.ResourceExhausted:
		if upload {
			return http.StatusRequestEntityTooLarge
		}
		return http.StatusTooManyRequests
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Canceled:
		// The HTTP client went away; nobody reads this, but the log line shows it.
		return 499
	default:
		return http.StatusInternalServerError
	}
}

// unreachable tells a connection failure (whisperd down, wrong address) from an
// UNAVAILABLE that whisperd itself answered (draining, strict admission).
func unreachable(s *status.Status) bool {
	if s.Code() != codes.Unavailable {
		return false
	}
	msg := s.Message()
	for _, sign := range []string{"connection error", "Error while dialing", "produced zero addresses", "connection refused", "no such host", "error reading server preface", "connection closed before server preface"} {
		if strings.Contains(msg, sign) {
			return true
		}
	}
	return false
}

// retryAfter reads google.rpc.RetryInfo from the status details, rounded up to seconds.
func retryAfter(s *status.Status) int {
	for _, d := range s.Details() {
		if info, ok := d.(*errdetails.RetryInfo); ok && info.GetRetryDelay() != nil {
			secs := info.GetRetryDelay().AsDuration().Seconds()
			return max(1, int(math.Ceil(secs)))
		}
	}
	return 0
}

// From maps any error from a whisperd call. upload says whether the call was an upload.
func (m Mapper) From(err error, upload bool) Problem {
	var p Problem
	if errors.As(err, &p) {
		return p
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Problem{HTTPStatus: http.StatusGatewayTimeout, Code: codes.DeadlineExceeded, Message: err.Error()}
	}
	if errors.Is(err, context.Canceled) {
		return Problem{HTTPStatus: 499, Code: codes.Canceled, Message: err.Error()}
	}
	s, ok := status.FromError(err)
	if !ok {
		return Problem{HTTPStatus: http.StatusInternalServerError, Code: codes.Internal, Message: err.Error()}
	}
	p = Problem{HTTPStatus: httpStatus(s.Code(), upload), Code: s.Code(), Message: s.Message(), RetryAfter: retryAfter(s)}
	if unreachable(s) {
		p.Message = fmt.Sprintf("the gateway cannot reach whisperd at %s: %s", m.Target, s.Message())
	}
	return p
}

// Write sends err in the gateway's shape {"error": message, "code": "GRPC_CODE"}.
func (m Mapper) Write(w http.ResponseWriter, err error, upload bool) {
	WriteProblem(w, m.From(err, upload))
}

// WriteProblem sends p in the gateway's shape.
func WriteProblem(w http.ResponseWriter, p Problem) {
	SetRetryAfter(w, p)
	pbjson.WriteValue(w, p.HTTPStatus, map[string]string{"error": p.Message, "code": CodeName(p.Code)})
}

// SetRetryAfter adds the Retry-After header when whisperd asked to come back later.
func SetRetryAfter(w http.ResponseWriter, p Problem) {
	if p.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(p.RetryAfter))
	}
}

// BadRequest is a client mistake found by the gateway itself (bad form, missing part).
func BadRequest(format string, args ...any) Problem {
	return Problem{HTTPStatus: http.StatusBadRequest, Code: codes.InvalidArgument, Message: fmt.Sprintf(format, args...)}
}

// CodeName is the gRPC code's canonical name: INVALID_ARGUMENT, NOT_FOUND, ...
func CodeName(c codes.Code) string {
	switch c {
	case codes.OK:
		return "OK"
	case codes.Canceled:
		return "CANCELLED"
	}
	// codes.Code.String() gives "InvalidArgument"; the canonical names are upper snake.
	name := c.String()
	var b strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}
