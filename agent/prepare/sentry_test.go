package prepare

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
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
