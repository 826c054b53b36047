package openai

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"whisperd/gateway/internal/apierr"
	"whisperd/gateway/internal/pbjson"
)

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// errorBody is OpenAI's error shape, which its SDKs parse into APIError.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// writeError sends err in OpenAI's shape, with the gateway's status mapping.
func writeError(w http.ResponseWriter, errs apierr.Mapper, err error, upload bool) {
	p := errs.From(err, upload)
	var pe paramError
	if errors.As(err, &pe) {
		p = pe.Problem
	}
	kind := "invalid_request_error"
	if p.HTTPStatus >= 500 {
		kind = "server_error"
	}
	code := strings.ToLower(apierr.CodeName(p.Code))
	body := errorBody{Error: errorDetail{Message: p.Message, Type: kind, Code: &code}}
	if pe.param != "" {
		body.Error.Param = &pe.param
	} else if strings.Contains(p.Message, `"file" part`) {
		f := "file"
		body.Error.Param = &f
	}
	apierr.SetRetryAfter(w, p)
	pbjson.WriteValue(w, p.HTTPStatus, body)
}
