package config

import (
	"io"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	c, err := Load(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":8080" || c.Whisperd != "localhost:50051" || c.Token != "" || c.CA != "" || c.MaxWait != time.Hour {
		t.Fatalf("%+v", c)
	}
}

func TestFlagsOverrideEnv(t *testing.T) {
	e := env(map[string]string{
		"GATEWAY_LISTEN": ":9000", "WHISPERD_ADDR": "w:1", "AUTH_TOKEN": "envtok",
		"WHISPERD_CA": "/ca.pem", "GATEWAY_OPENAI_TIMEOUT_SECS": "60",
	})
	c, err := Load(nil, e, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":9000" || c.Whisperd != "w:1" || c.Token != "envtok" || c.CA != "/ca.pem" || c.MaxWait != time.Minute {
		t.Fatalf("env: %+v", c)
	}
	c, err = Load([]string{"--listen", "127.0.0.1:0", "--whisperd", "x:2", "--token", "flagtok", "--max-wait", "5"}, e, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:0" || c.Whisperd != "x:2" || c.Token != "flagtok" || c.MaxWait != 5*time.Second {
		t.Fatalf("flags: %+v", c)
	}
}

func TestBadValues(t *testing.T) {
	if _, err := Load(nil, env(map[string]string{"GATEWAY_OPENAI_TIMEOUT_SECS": "soon"}), io.Discard); err == nil {
		t.Fatal("accepted a bad GATEWAY_OPENAI_TIMEOUT_SECS")
	}
	if _, err := Load([]string{"--max-wait", "0"}, env(nil), io.Discard); err == nil {
		t.Fatal("accepted --max-wait 0")
	}
	if _, err := Load([]string{"extra"}, env(nil), io.Discard); err == nil {
		t.Fatal("accepted a stray argument")
	}
}
