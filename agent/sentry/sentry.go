// Package sentry reports events to a Sentry server (or any server that
// speaks its envelope protocol) for the appliance's own failures: the
// appliance failed, a backup failed, an update failed (manual §4.9).
package sentry

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// DSN is a parsed Sentry DSN: SCHEME://PUBLIC_KEY[:SECRET]@HOST[/PATH]/PROJECT_ID.
type DSN struct {
	raw       string
	scheme    string
	host      string
	path      string // prefix before the project id, without slashes at the ends
	publicKey string
	secretKey string
	project   string
}

// ParseDSN parses a DSN. Its error never contains the DSN's keys.
func ParseDSN(s string) (*DSN, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("sentry DSN: not a URL")
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, fmt.Errorf("sentry DSN: scheme %q, want https or http", u.Scheme)
	}
	if u.User == nil || u.User.Username() == "" {
		return nil, fmt.Errorf("sentry DSN: no public key (https://KEY@HOST/PROJECT)")
	}
	if u.Host == "" {
		return nil, fmt.Errorf("sentry DSN: no host")
	}
	p := strings.Trim(u.Path, "/")
	i := strings.LastIndexByte(p, '/')
	project, prefix := p[i+1:], ""
	if i >= 0 {
		prefix = p[:i]
	}
	if project == "" {
		return nil, fmt.Errorf("sentry DSN: no project id (https://KEY@HOST/PROJECT)")
	}
	secret, _ := u.User.Password()
	return &DSN{raw: s, scheme: u.Scheme, host: u.Host, path: prefix, publicKey: u.User.Username(), secretKey: secret, project: project}, nil
}

// EnvelopeURL is where envelopes are posted.
func (d *DSN) EnvelopeURL() string {
	p := "/"
	if d.path != "" {
		p += d.path + "/"
	}
	return d.scheme + "://" + d.host + p + "api/" + d.project + "/envelope/"
}

// String is the DSN without its keys (for logs).
func (d *DSN) String() string {
	return d.scheme + "://***@" + d.host + "/" + strings.TrimPrefix(d.path+"/"+d.project, "/")
}

// Event is what is reported.
type Event struct {
	Message string
	// Level is fatal, error, warning or info (default error).
	Level string
	// Logger names the reporting part, e.g. "ecs-agent.backup".
	Logger string
	Tags   map[string]string
	Extra  map[string]any
}

// Client posts events to one DSN.
type Client struct {
	DSN *DSN
	// HTTP is the client used (default: one with a 15 s timeout).
	HTTP *http.Client
	// Release names the reporting software, e.g. "ecs-agent@1.2.3".
	Release string
	// ServerName is the host's name (default os.Hostname).
	ServerName string
}

// Capture sends ev in an envelope and returns its event id.
func (c *Client) Capture(ctx context.Context, ev Event) (string, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	eventID := hex.EncodeToString(id)
	level := ev.Level
	if level == "" {
		level = "error"
	}
	server := c.ServerName
	if server == "" {
		server, _ = os.Hostname()
	}
	now := time.Now().UTC()
	payload := map[string]any{
		"event_id":    eventID,
		"timestamp":   float64(now.UnixNano()) / 1e9,
		"platform":    "other",
		"level":       level,
		"logger":      ev.Logger,
		"server_name": server,
		"release":     c.Release,
		"message":     map[string]string{"formatted": ev.Message},
		"tags":        ev.Tags,
		"extra":       ev.Extra,
	}
	body, err := json.Marshal(payload)
	if err != nil {
		return "", err
	}
	var env bytes.Buffer
	head, _ := json.Marshal(map[string]any{"event_id": eventID, "sent_at": now.Format(time.RFC3339Nano), "dsn": c.DSN.raw})
	item, _ := json.Marshal(map[string]any{"type": "event", "length": len(body), "content_type": "application/json"})
	env.Write(head)
	env.WriteByte('\n')
	env.Write(item)
	env.WriteByte('\n')
	env.Write(body)
	env.WriteByte('\n')

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.DSN.EnvelopeURL(), &env)
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-sentry-envelope")
	auth := "Sentry sentry_version=7, sentry_client=" + clientName(c.Release) + ", sentry_key=" + c.DSN.publicKey
	if c.DSN.secretKey != "" {
		auth += ", sentry_secret=" + c.DSN.secretKey
	}
	req.Header.Set("X-Sentry-Auth", auth)
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 15 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		// url.Error carries the URL, which holds no key: the key is in a header.
		return "", fmt.Errorf("sentry %s: %w", c.DSN, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("sentry %s: %s: %s", c.DSN, resp.Status, strings.TrimSpace(string(msg)))
	}
	return eventID, nil
}

func clientName(release string) string {
	if release == "" {
		return "ecs-agent/dev"
	}
	return strings.Replace(release, "@", "/", 1)
}
