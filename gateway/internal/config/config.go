// Package config reads the gateway's settings: flags override environment variables,
// which override the defaults (the same order as `whisperd serve`).
package config

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Config is everything the gateway needs to start.
type Config struct {
	// Listen is the HTTP address (host:port; port 0 picks a free one).
	Listen string
	// Whisperd is the gRPC target of whisperd.
	Whisperd string
	// Token is the bearer token sent to whisperd when a request brings none.
	Token string
	// CA is a PEM file: TLS to whisperd trusting it; empty means plaintext.
	CA string
	// MaxWait bounds how long the OpenAI routes wait for a job to finish.
	MaxWait time.Duration
}

// Load parses args (without the program name) over the environment given by getenv.
func Load(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	env := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	waitDefault := 3600
	if v := getenv("GATEWAY_OPENAI_TIMEOUT_SECS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return Config{}, fmt.Errorf("GATEWAY_OPENAI_TIMEOUT_SECS=%q: want a positive number of seconds", v)
		}
		waitDefault = n
	}

	fs := flag.NewFlagSet("whisperd-gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	var waitSecs int
	fs.StringVar(&c.Listen, "listen", env("GATEWAY_LISTEN", ":8080"), "HTTP listen address (env GATEWAY_LISTEN)")
	fs.StringVar(&c.Whisperd, "whisperd", env("WHISPERD_ADDR", "localhost:50051"), "whisperd gRPC address (env WHISPERD_ADDR)")
	fs.StringVar(&c.Token, "token", env("AUTH_TOKEN", ""), "bearer token for whisperd when a request brings no Authorization header (env AUTH_TOKEN)")
	fs.StringVar(&c.CA, "ca", env("WHISPERD_CA", ""), "PEM CA file: TLS to whisperd; plaintext when empty (env WHISPERD_CA)")
	fs.IntVar(&waitSecs, "max-wait", waitDefault, "seconds the OpenAI routes wait for a job (env GATEWAY_OPENAI_TIMEOUT_SECS)")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if waitSecs <= 0 {
		return Config{}, fmt.Errorf("--max-wait %d: want a positive number of seconds", waitSecs)
	}
	c.MaxWait = time.Duration(waitSecs) * time.Second
	return c, nil
}
