package upload

import (
	"strconv"
	"strings"

	"whisperd/gateway/internal/apierr"

	pb "whisperd/gateway/gen/whisperdv1"
)

// JobForm is the form of POST /v1/jobs: the earlier service's fields (audio, language,
// task, webhook_url) plus every other JobOptions field under its proto name.
var JobForm = Form{FileField: "audio", Field: jobField}

func jobField(opts *pb.JobOptions, name, value string) (Effect, error) {
	var err error
	switch name {
	case "language":
		opts.Language = strings.TrimSpace(value)
	case "task":
		opts.Task, err = ParseTask(value)
	case "webhook_url":
		opts.WebhookUrl = strings.TrimSpace(value)
	case "beam_size":
		var n uint64
		n, err = strconv.ParseUint(strings.TrimSpace(value), 10, 32)
		opts.BeamSize = uint32(n)
	case "temperature":
		opts.Temperature, err = ParseFloat(value)
	case "temperature_increment":
		var f float32
		f, err = ParseFloat(value)
		opts.TemperatureIncrement = &f
	case "initial_prompt", "prompt":
		opts.InitialPrompt = value
	case "word_timestamps":
		opts.WordTimestamps, err = ParseBool(value)
	case "vad":
		opts.Vad, err = ParseBool(value)
	case "filename":
		opts.Filename = value
	case "request_id":
		opts.RequestId = strings.TrimSpace(value)
	case "condition_on_previous_text":
		var on bool
		on, err = ParseBool(value)
		opts.ConditionOnPreviousText = &on
	default:
		return Ignored, nil
	}
	if err != nil {
		return Option, apierr.BadRequest("form field %q: %v", name, err)
	}
	return Option, nil
}

// ParseTask accepts transcribe/translate, as the earlier service did, or the enum names.
func ParseTask(value string) (pb.Task, error) {
	switch strings.ToLower(strings.TrimSpace(value)) {
	case "", "transcribe", "task_transcribe":
		return pb.Task_TASK_TRANSCRIBE, nil
	case "translate", "task_translate":
		return pb.Task_TASK_TRANSLATE, nil
	}
	return 0, &valueError{"want transcribe or translate, got " + strconv.Quote(value)}
}

// ParseFloat reads a decimal number.
func ParseFloat(value string) (float32, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(value), 32)
	if err != nil {
		return 0, &valueError{"want a number, got " + strconv.Quote(value)}
	}
	return float32(f), nil
}

// ParseBool reads true/false as HTML forms and curl users write them.
func ParseBool(value string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(value)) {
	case "1", "true", "yes", "on":
		return true, nil
	case "", "0", "false", "no", "off":
		return false, nil
	}
	return false, &valueError{"want true or false, got " + strconv.Quote(value)}
}

type valueError struct{ msg string }

func (e *valueError) Error() string { return e.msg }
