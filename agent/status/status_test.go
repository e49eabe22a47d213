package status

import (
	"os"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/agent/host"
)

func TestFailKeepsFirstReasonAndEscapes(t *testing.T) {
	h := host.New(t.TempDir(), &host.Recorder{})
	if err := Fail(h, "prepare-env", "bad <script>alert(1)</script>\nsecond line"); err != nil {
		t.Fatal(err)
	}
	if err := Fail(h, "appliance.service", "unit appliance.service failed"); err != nil {
		t.Fatal(err)
	}
	reason, ok := FailedReason(h)
	if !ok || reason != "bad <script>alert(1)</script>; second line" {
		t.Fatalf("reason %q", reason)
	}
	page, err := h.ReadFile(StatusPage)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(page), "<script>") || !strings.Contains(string(page), "&lt;script&gt;") {
		t.Errorf("reason not escaped:\n%s", page)
	}
	st, _ := Read(h)
	if st.State != Failed || !st.FailedFlag || st.Step != "appliance.service" {
		t.Errorf("state %+v", st)
	}
	console, _ := h.ReadFile("/dev/console")
	if strings.Count(string(console), FailedMarker+": bad <script>") != 2 {
		t.Errorf("console %q", console)
	}
}

func TestReadyRemovesPage(t *testing.T) {
	h := host.New(t.TempDir(), &host.Recorder{})
	if err := Update(h, State{State: Preparing, Step: "x", Domain: "d.example.org"}); err != nil {
		t.Fatal(err)
	}
	if !h.Exists(StatusPage) {
		t.Fatal("no page while preparing")
	}
	page, _ := h.ReadFile(StatusPage)
	if !strings.Contains(string(page), `http-equiv="refresh"`) || !strings.Contains(string(page), "d.example.org") {
		t.Errorf("page:\n%s", page)
	}
	if err := Update(h, State{State: Ready}); err != nil {
		t.Fatal(err)
	}
	if h.Exists(StatusPage) {
		t.Error("page kept when ready")
	}
	st, _ := Read(h)
	if st.State != Ready || st.Domain != "d.example.org" || st.Step != "" {
		t.Errorf("state %+v", st)
	}
}

func TestReadUnconfigured(t *testing.T) {
	h := host.New(t.TempDir(), &host.Recorder{})
	st, err := Read(h)
	if err != nil || st.State != Unconfigured {
		t.Fatalf("%+v %v", st, err)
	}
	os.MkdirAll(h.Path("/run/ecs-agent"), 0o755)
	os.WriteFile(h.Path(StateFile), []byte("{"), 0o644)
	if _, err := Read(h); err == nil {
		t.Error("corrupt state accepted")
	}
}
