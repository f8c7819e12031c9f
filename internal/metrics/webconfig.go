package metrics

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/exporter-toolkit/web"
	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
)

// WebConfig is what a --web-config file turns on (docs/operations.md, "Securing the endpoints").
type WebConfig struct {
	TLS       bool // the endpoints answer HTTPS only
	BasicAuth bool // every path, /healthz included, needs a user and password
}

// ValidateWebConfig checks a --web-config file in the Prometheus exporter-toolkit format: its
// YAML, its bcrypt password hashes and its TLS certificate and key. "" (no file) is valid and
// turns nothing on. The error is one line that begins with the file's name; it never carries a
// password hash or a key.
func ValidateWebConfig(path string) (WebConfig, error) {
	if path == "" {
		return WebConfig{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return WebConfig{}, fmt.Errorf("%s: %s", path, oneLine(err.Error()))
	}
	if err := web.Validate(path); err != nil {
		msg := oneLine(err.Error())
		if strings.HasPrefix(msg, "crypto/bcrypt:") {
			msg = "basic_auth_users: a password is not a bcrypt hash (" + msg + ")"
		}
		return WebConfig{}, fmt.Errorf("%s: %s", path, msg)
	}
	// web.Validate has read the file strictly; this reads the two facts the logs and the demo show.
	var c struct {
		TLS   web.TLSConfig     `yaml:"tls_server_config"`
		Users map[string]string `yaml:"basic_auth_users"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		return WebConfig{}, fmt.Errorf("%s: %s", path, oneLine(err.Error()))
	}
	return WebConfig{TLS: c.TLS.IsEnabled(), BasicAuth: len(c.Users) > 0}, nil
}

// oneLine folds a multi-line error (YAML lists each bad field on a line of its own) into one,
// the former lines separated by "; ".
func oneLine(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		line = strings.Join(strings.Fields(line), " ")
		if line == "" {
			continue
		}
		if b.Len() > 0 {
			if strings.HasSuffix(b.String(), ":") {
				b.WriteString(" ")
			} else {
				b.WriteString("; ")
			}
		}
		b.WriteString(line)
	}
	return b.String()
}

// slogFor hands exporter-toolkit, which logs with log/slog, the server's zerolog logger.
func slogFor(log zerolog.Logger) *slog.Logger { return slog.New(zerolog.NewSlogHandler(log)) }
