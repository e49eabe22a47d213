package sentry

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// recorder is a server that speaks enough of Sentry's envelope protocol to
// record events: it checks the auth header and the envelope's framing (the
// item's declared length) as Sentry's relay does.
type recorder struct {
	mu     sync.Mutex
	events []map[string]any
	auth   []string
	paths  []string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/x-sentry-envelope" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	br := bufio.NewReader(req.Body)
	head, err := br.ReadBytes('\n')
	var h map[string]any
	if err != nil || json.Unmarshal(head, &h) != nil || h["event_id"] == nil {
		http.Error(w, "bad envelope header", http.StatusBadRequest)
		return
	}
	itemHead, _ := br.ReadBytes('\n')
	var ih struct {
		Type   string `json:"type"`
		Length int    `json:"length"`
	}
	if json.Unmarshal(itemHead, &ih) != nil || ih.Type != "event" {
		http.Error(w, "bad item header", http.StatusBadRequest)
		return
	}
	payload := make([]byte, ih.Length)
	if _, err := io.ReadFull(br, payload); err != nil {
		http.Error(w, "short item", http.StatusBadRequest)
		return
	}
	var ev map[string]any
	if err := json.Unmarshal(payload, &ev); err != nil || ev["event_id"] != h["event_id"] {
		http.Error(w, "bad event", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.auth = append(r.auth, req.Header.Get("X-Sentry-Auth"))
	r.paths = append(r.paths, req.URL.Path)
	r.mu.Unlock()
	w.Write([]byte(`{"id":"` + ev["event_id"].(string) + `"}`))
}

func TestCaptureEnvelope(t *testing.T) {
	rec := &recorder{}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	dsn, err := ParseDSN(strings.Replace(srv.URL, "http://", "http://pubkey@", 1) + "/sub/42")
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{DSN: dsn, Release: "ecs-agent@1.0", ServerName: "ecs.example.org"}
	id, err := c.Capture(context.Background(), Event{Message: "appliance failed: prepare-ecs: boom", Logger: "ecs-agent", Tags: map[string]string{"step": "prepare-ecs"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.events) != 1 {
		t.Fatalf("%d events recorded", len(rec.events))
	}
	ev := rec.events[0]
	if ev["event_id"] != id || ev["level"] != "error" || ev["server_name"] != "ecs.example.org" {
		t.Errorf("event %v", ev)
	}
	if m, _ := ev["message"].(map[string]any); m["formatted"] != "appliance failed: prepare-ecs: boom" {
		t.Errorf("message %v", ev["message"])
	}
	if rec.paths[0] != "/sub/api/42/envelope/" {
		t.Errorf("path %s", rec.paths[0])
	}
	if a := rec.auth[0]; !strings.Contains(a, "sentry_key=pubkey") || !strings.Contains(a, "sentry_version=7") {
		t.Errorf("auth %q", a)
	}
}

func TestCaptureServerError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "rate limited", http.StatusTooManyRequests)
	}))
	defer srv.Close()
	dsn, _ := ParseDSN(strings.Replace(srv.URL, "http://", "http://secretish@", 1) + "/1")
	_, err := (&Client{DSN: dsn}).Capture(context.Background(), Event{Message: "x"})
	if err == nil || !strings.Contains(err.Error(), strconv.Itoa(http.StatusTooManyRequests)) {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "secretish") {
		t.Errorf("the error leaks the DSN's key: %v", err)
	}
}

func TestParseDSN(t *testing.T) {
	for _, bad := range []string{"", "ftp://k@h/1", "https://h/1", "https://k@h/", "https://k@/1", "::"} {
		if _, err := ParseDSN(bad); err == nil {
			t.Errorf("ParseDSN(%q) accepted", bad)
		}
	}
	d, err := ParseDSN("https://abc:def@sentry.example.org/7")
	if err != nil || d.EnvelopeURL() != "https://sentry.example.org/api/7/envelope/" || strings.Contains(d.String(), "abc") {
		t.Errorf("%v %v %v", d.EnvelopeURL(), d, err)
	}
}
