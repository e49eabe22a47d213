package boottest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// TestClassify: the agent's markers (WaitState's) and their states.
func TestClassify(t *testing.T) {
	m := agentMarkers()
	for line, want := range map[string][2]string{
		"ECS-APPLIANCE-READY":                               {"ready", ""},
		"[   42.1] ecs-agent[312]: ECS-APPLIANCE-READY":     {"ready", ""},
		"ECS-APPLIANCE-FAILED: postgresql: role missing":    {"failed", "postgresql: role missing"},
		"ECS-APPLIANCE-FAILED":                              {"failed", ""},
		"ECS-APPLIANCE-STANDBY: appliance.standby is true":  {"standby", "appliance.standby is true"},
		"[ 3.2] Kernel panic - not syncing: VFS: Unable to": {"panic", "kernel panic: VFS: Unable to"},
		"Started ssh.service":                               {"", ""},
	} {
		s, r := m.classify(line)
		if s != want[0] || r != want[1] {
			t.Errorf("classify(%q) = %q, %q; want %q, %q", line, s, r, want[0], want[1])
		}
		if (want[0] != "") != m.all.MatchString(line) {
			t.Errorf("combined pattern on %q: %v", line, m.all.MatchString(line))
		}
	}
}

// A bare base's ready line names cloud-init's datasource: DataSourceNone
// means the seed was not read.
func TestClassifyNoSeed(t *testing.T) {
	m, err := newMarkers(CloudInitDone)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := m.classify("Cloud-init v. 22.4.2 finished at Sun, 06 Dec 2026. Datasource DataSourceNoCloud [seed=/dev/sr0][dsmode=net].  Up 40.1 seconds"); s != "ready" {
		t.Errorf("NoCloud: %q", s)
	}
	if s, r := m.classify("Cloud-init v. 22.4.2 finished at Sun, 06 Dec 2026. Datasource DataSourceNone.  Up 40.1 seconds"); s != "no-seed" || !strings.Contains(r, "DataSourceNone") {
		t.Errorf("None: %q %q", s, r)
	}
}

func TestPageText(t *testing.T) {
	page := `<html><head><title>x</title><style>p{}</style></head><body><h1>ECS appliance: failed</h1>
<p>Reason: appliance.domain &amp; more   missing</p><script>var a=1;</script></body></html>`
	if got := pageText(page, 500); got != "ECS appliance: failed Reason: appliance.domain & more missing" {
		t.Errorf("pageText = %q", got)
	}
	if got := pageText("abcdef", 3); got != "abc…" {
		t.Errorf("cut = %q", got)
	}
}

func TestWaitHTTPS(t *testing.T) {
	var calls atomic.Int32
	var host, sni atomic.Value
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host.Store(r.Host)
		sni.Store(r.TLS.ServerName)
		if calls.Add(1) < 2 {
			http.Error(w, "preparing", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	srv.StartTLS()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	status, body, err := WaitHTTPS(ctx, logrus.StandardLogger(), addr, "ecs.example.org", true, nil)
	if err != nil || status != 200 || calls.Load() != 2 || body != "ok" {
		t.Fatalf("status %d, %d calls, %v", status, calls.Load(), err)
	}
	if host.Load() != "ecs.example.org" || sni.Load() != "ecs.example.org" {
		t.Errorf("Host %v, SNI %v", host.Load(), sni.Load())
	}
	// Not wanting 200, the first answer (503) is enough.
	calls.Store(0)
	if status, body, err := WaitHTTPS(ctx, logrus.StandardLogger(), addr, "", false, nil); err != nil || status != 503 || body != "preparing\n" {
		t.Errorf("status %d %q %v", status, body, err)
	}
	// QEMU exiting ends the wait.
	stopped := make(chan struct{})
	close(stopped)
	srv.Close()
	if _, _, err := WaitHTTPS(ctx, logrus.StandardLogger(), addr, "x", true, stopped); err == nil || !strings.Contains(err.Error(), "QEMU exited") {
		t.Errorf("err = %v", err)
	}
}
