// Package openai serves OpenAI's audio API (POST /v1/audio/transcriptions and
// /v1/audio/translations) on whisperd, so the official SDKs work with
// base_url="http://HOST:PORT/v1": the file is spooled to a temporary file (so the form's
// fields may come before or after it, as in OpenAI's own curl examples), then submitted,
// the job followed to its end (at most --max-wait), and the result rendered in the asked
// response_format.
package openai

import (
	"strings"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/upload"

	pb "whisperd/gateway/gen/whisperdv1"
)

// request is what the form asked for beyond the job options.
type request struct {
	format string // json, text, srt, vtt, verbose_json
	words  bool   // timestamp_granularities[] included "word"
}

var formats = map[string]bool{"json": true, "text": true, "srt": true, "vtt": true, "verbose_json": true}

// form is OpenAI's multipart dialect: file, model (any value), language, prompt,
// response_format, temperature, timestamp_granularities[] (the SDK's bracket form), in
// any order: the file is spooled to disk until the last field is read.
func (req *request) form(task pb.Task) upload.Form {
	defaults := func() *pb.JobOptions { return &pb.JobOptions{Task: task} }
	return upload.Form{FileField: "file", Defaults: defaults, Spool: true, Field: func(opts *pb.JobOptions, name, value string) (upload.Effect, error) {
		var err error
		switch name {
		case "language":
			opts.Language = strings.TrimSpace(value)
		case "prompt":
			opts.InitialPrompt = value
		case "temperature":
			if opts.Temperature, err = upload.ParseFloat(value); err != nil {
				return upload.Option, param(name, err)
			}
		case "timestamp_granularities[]", "timestamp_granularities":
			switch strings.TrimSpace(value) {
			case "word":
				req.words = true
				opts.WordTimestamps = true
			case "segment":
			default:
				return upload.Option, param(name, errorf("want word or segment, got %q", value))
			}
		case "response_format":
			value = strings.TrimSpace(value)
			if !formats[value] {
				return upload.Response, param(name, errorf("unsupported response_format %q: want json, text, srt, vtt or verbose_json", value))
			}
			req.format = value
			return upload.Response, nil
		default:
			// model, stream, chunking_strategy, include[]...: accepted, not used.
			return upload.Ignored, nil
		}
		return upload.Option, nil
	}}
}

// paramError carries the name of the offending field into OpenAI's error body.
type paramError struct {
	apierr.Problem
	param string
}

func param(name string, err error) error {
	return paramError{Problem: apierr.BadRequest("%s: %v", name, err), param: name}
}
