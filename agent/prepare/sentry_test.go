package prepare

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/ecs-image/ecs-image/agent/host"
)

// activeEnvWithSentry writes the compat env with appliance.sentry.dsn as
// the active env.
func activeEnvWithSentry(t *testing.T, a *Agent, dsn string) {
	t.Helper()
	data := string(defaultEnvData(t))
	if dsn != "" {
		data = strings.Replace(data, "\nappliance:\n", "\nappliance:\n  sentry:\n    dsn: '"+dsn+"'\n", 1)
	}
	put(t, a, ActiveEnv, []byte(data), 0o600)
}

type envelopes struct {
	mu     sync.Mutex
	bodies []string
}

func (e *envelopes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	e.mu.Lock()
	e.bodies = append(e.bodies, r.URL.Path+"\n"+r.Header.Get("X-Sentry-Auth")+"\n"+string(b))
	e.mu.Unlock()
}

func (e *envelopes) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.bodies...)
}

// A failed chain step, a failed unit and a failed backup reach the DSN.
func TestFailuresReportedToSentry(t *testing.T) {
	rec := &envelopes{}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	a, _ := testAgent(t)
	activeEnvWithSentry(t, a, strings.Replace(srv.URL, "http://", "http://pubkey@", 1)+"/3")

	a.fail("prepare-ecs/migrate", errors.New("relation does not exist"))
	a.Failed("appliance-backup.service")
	a.recordBackup(t.Context(), BackupRecord{Result: "failed", Error: "target unreachable", Target: "s3://bucket"})
	got := rec.all()
	if len(got) != 3 {
		t.Fatalf("%d reports, want 3: %q", len(got), got)
	}
	for i, want := range []string{"appliance failed: prepare-ecs/migrate: relation does not exist", "unit appliance-backup.service failed", "backup failed: target unreachable"} {
		if !strings.Contains(got[i], want) || !strings.HasPrefix(got[i], "/api/3/envelope/\n") || !strings.Contains(got[i], "sentry_key=pubkey") {
			t.Errorf("report %d:\n%s\nwant %q", i, got[i], want)
		}
	}
	if strings.Contains(a.Log.(interface{ String() string }).String(), "pubkey") {
		t.Error("the DSN's key is in the log")
	}
}

// Without a DSN nothing is sent; SentryTest says what is missing.
func TestSentryUnset(t *testing.T) {
	a, _ := testAgent(t)
	activeEnvWithSentry(t, a, "")
	a.fail("x", errors.New("y")) // must not panic or block
	if err := a.SentryTest("hi"); !errors.Is(err, errNoSentry) {
		t.Errorf("err = %v", err)
	}
}

// A failed update (manual §4.5) reaches the DSN too, naming its step and
// the reason, through the same path that marks the appliance failed.
func TestUpdateFailureReportedToSentry(t *testing.T) {
	rec := &envelopes{}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	a, hr := testAgent(t)
	dsn := strings.Replace(srv.URL, "http://", "http://pubkey@", 1) + "/5"
	activate(t, a, strings.Replace(siteEnv, "\nappliance:\n", "\nappliance:\n  sentry:\n    dsn: '"+dsn+"'\n", 1))
	if n := len(rec.all()); n != 0 {
		t.Fatalf("%d reports before the update", n)
	}
	hr.Responses["apt-get -s"] = host.Response{Stdout: aptSim}
	hr.Responses["unattended-upgrade"] = host.Response{Err: errors.New("dpkg: error processing package docker.io (--configure)")}
	if err := a.Update(t.Context()); err == nil {
		t.Fatal("no error")
	}
	got := rec.all()
	want := "appliance failed: appliance-update: unattended-upgrade: dpkg: error processing package docker.io"
	if len(got) != 1 || !strings.Contains(got[0], want) || !strings.HasPrefix(got[0], "/api/5/envelope/\n") || !strings.Contains(got[0], `"step":"appliance-update"`) {
		t.Fatalf("reports %q, want one naming %q", got, want)
	}
}
