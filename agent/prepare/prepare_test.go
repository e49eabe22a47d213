package prepare

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/agent/discover"
	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/env"
	"github.com/ecs-image/ecs-image/testenv"
)

const defaultEnv = "../../env/testdata/default-env.yml" // a byte-identical copy of shared/compat/default-env.yml

// testAgent returns an agent on a temp root with a recording runner.
func testAgent(t *testing.T) (*Agent, *host.Recorder) {
	t.Helper()
	rec := &host.Recorder{Responses: map[string]host.Response{}}
	root := t.TempDir()
	a := &Agent{
		Host:     host.New(root, rec),
		Discover: discover.Config{EC2URL: "-", GCEURL: "-"},
		Log:      &bytes.Buffer{},
		MemBytes: 4 << 30,
		Cores:    2,
	}
	return a, rec
}

func put(t *testing.T, a *Agent, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(a.Host.Path(p)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.Host.Path(p), data, mode); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, a *Agent, p string) string {
	t.Helper()
	data, err := a.Host.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func mode(t *testing.T, a *Agent, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(a.Host.Path(p))
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func defaultEnvData(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(defaultEnv)
	if err != nil {
		t.Fatalf("the repository's compat env: %v", err)
	}
	return data
}

func TestPrepareEnvDefaultEnv(t *testing.T) {
	a, _ := testAgent(t)
	data := defaultEnvData(t)
	put(t, a, "/app/env.yml", data, 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{ActiveEnv, ActiveEnvShell, ActiveEnvCompose, ActiveEnvSource} {
		if m := mode(t, a, p); m != 0o600 {
			t.Errorf("%s: mode %o, want 600", p, m)
		}
	}
	if got := read(t, a, ActiveEnv); got != string(data) {
		t.Error("active-env.yml differs from the env.yml found")
	}
	if got := read(t, a, ActiveEnvSource); got != "file:/app/env.yml\n" {
		t.Errorf("source = %q", got)
	}
	// The flattened file is env.Flatten's output, byte for byte.
	doc, err := env.Parse("default-env.yml", data)
	if err != nil {
		t.Fatal(err)
	}
	want, missing := env.Flatten(doc, []string{"ecs", "appliance"}, "", "")
	if len(missing) != 0 {
		t.Fatalf("missing %v", missing)
	}
	if got := read(t, a, ActiveEnvShell); got != want {
		t.Errorf("active-env.env differs from env.Flatten:\n%s\nwant:\n%s", got, want)
	}
	if !strings.Contains(want, "APPLIANCE_SSL_LETSENCRYPT_ENABLED=false\n") || !strings.Contains(want, "ECS_USERSWITCHER_PARAMETER=-it\n") {
		t.Errorf("unexpected flatten output:\n%s", want)
	}
	st, _ := status.Read(a.Host)
	if st.State != status.Preparing || st.Domain != "localhost" || st.EnvSource != "file:/app/env.yml" {
		t.Errorf("state = %+v", st)
	}
	if a.Host.Exists(status.FailedFlag) || a.Host.Exists(status.StandbyFlag) {
		t.Error("unexpected flag")
	}
}

// The shell env file means the same to bash as the compose env file to
// python-dotenv (what docker-compose 1.29 uses), and both match our parser.
func TestEnvFilesAgreeWithBashAndDotenv(t *testing.T) {
	a, _ := testAgent(t)
	tricky := defaultEnvData(t)
	tricky = append(tricky, []byte("  extra:\n    files:\n      - path: /etc/x\n        contents: \"it's a \\\"test\\\" with $HOME and \\\\ and `cmd`\\n  second line\\n\"\n")...)
	put(t, a, "/app/env.yml", tricky, 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
	vars, err := ParseShellAssignments(read(t, a, ActiveEnvShell))
	if err != nil {
		t.Fatal(err)
	}
	ours := VarMap(vars)
	if !strings.Contains(ours["ECS_EXTRA_FILES_0_CONTENTS"], "it's a \"test\" with $HOME") {
		t.Fatalf("ECS_EXTRA_FILES_0_CONTENTS = %q", ours["ECS_EXTRA_FILES_0_CONTENTS"])
	}
	bash := testenv.Tool(t, "bash", "make deps")
	out, err := exec.Command(bash, "-c", `set -a; . "$1"; for v in $(compgen -e | grep -E '^(ECS|APPLIANCE)_'); do printf '%s\0%s\0' "$v" "${!v}"; done`, "x", a.Host.Path(ActiveEnvShell)).Output()
	if err != nil {
		t.Fatal(err)
	}
	compare(t, "bash", pairs(out), ours)
	// Debian's python3-dotenv is what Debian's docker-compose 1.29 uses.
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import dotenv").Run(); err != nil {
		py = "python3"
		if err := exec.Command(py, "-c", "import dotenv").Run(); err != nil {
			testenv.Missing(t, "python3-dotenv not available (make deps): the compose env file is not cross-checked")
		}
	}
	out, err = exec.Command(py, "-c", `import sys, dotenv
for k, v in dotenv.dotenv_values(sys.argv[1]).items():
    sys.stdout.write(k + "\0" + v + "\0")`, a.Host.Path(ActiveEnvCompose)).Output()
	if err != nil {
		t.Fatal(err)
	}
	compare(t, "python-dotenv", pairs(out), ours)
}

func pairs(out []byte) map[string]string {
	m := map[string]string{}
	f := strings.Split(string(out), "\x00")
	for i := 0; i+1 < len(f); i += 2 {
		m[f[i]] = f[i+1]
	}
	return m
}

func compare(t *testing.T, who string, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d variables, want %d", who, len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q", who, k, got[k], v)
		}
	}
}

func TestPrepareEnvInvalid(t *testing.T) {
	a, _ := testAgent(t)
	put(t, a, "/app/env.yml", []byte("#cloud-config\nappliance:\n  standby: false\n"), 0o600)
	err := a.PrepareEnv(context.Background())
	if err == nil {
		t.Fatal("invalid env accepted")
	}
	if !strings.Contains(err.Error(), "appliance.domain") {
		t.Errorf("error does not name the field: %v", err)
	}
	for _, p := range []string{ActiveEnv, ActiveEnvShell, ActiveEnvCompose, ActiveEnvSource} {
		if a.Host.Exists(p) {
			t.Errorf("%s written for an invalid env", p)
		}
	}
	reason, ok := status.FailedReason(a.Host)
	if !ok || !strings.Contains(reason, "appliance.domain") {
		t.Errorf("failed flag: %v %q", ok, reason)
	}
	page := read(t, a, status.StatusPage)
	if !strings.Contains(page, "appliance.domain") || !strings.Contains(page, "failed") {
		t.Errorf("status page lacks the reason:\n%s", page)
	}
	if c := read(t, a, "/dev/ttyS0"); !strings.Contains(c, status.FailedMarker+": prepare-env: invalid env.yml") {
		t.Errorf("console: %q", c)
	}
	// The flag blocks a rerun even with a good env now.
	put(t, a, "/app/env.yml", defaultEnvData(t), 0o600)
	if err := a.PrepareEnv(context.Background()); !errors.Is(err, ErrBlocked) {
		t.Fatalf("rerun with the failed flag: %v", err)
	}
	if err := a.Host.Remove(status.FailedFlag); err != nil {
		t.Fatal(err)
	}
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatalf("after removing the flag: %v", err)
	}
}

// An invalid env.yml found later must not clobber a previously active one
// half-way: the old files stay until the new env is valid.
func TestPrepareEnvInvalidKeepsPrevious(t *testing.T) {
	a, _ := testAgent(t)
	put(t, a, "/app/env.yml", defaultEnvData(t), 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := read(t, a, ActiveEnvShell)
	put(t, a, "/app/env.yml", []byte("appliance: [\n"), 0o600)
	if err := a.PrepareEnv(context.Background()); err == nil {
		t.Fatal("broken YAML accepted")
	}
	if read(t, a, ActiveEnvShell) != before || !strings.Contains(read(t, a, ActiveEnv), "domain: localhost") {
		t.Error("previous active env was modified")
	}
}

func TestPrepareEnvNothingFound(t *testing.T) {
	a, _ := testAgent(t)
	err := a.PrepareEnv(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no env.yml found") {
		t.Fatalf("err = %v", err)
	}
	st, _ := status.Read(a.Host)
	if st.State != status.Failed || !strings.Contains(st.Reason, "cidata drive: absent") {
		t.Errorf("state = %+v", st)
	}
}

func TestStandby(t *testing.T) {
	a, rec := testAgent(t)
	put(t, a, "/app/env.yml", []byte("#cloud-config\nappliance:\n  domain: sb.example.org\n  standby: true\n"), 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !a.Host.Exists(status.StandbyFlag) || !a.Host.Exists(ActiveEnv) {
		t.Fatal("standby flag or active env missing")
	}
	if c := read(t, a, "/dev/console"); !strings.Contains(c, status.StandbyMarker) {
		t.Errorf("console: %q", c)
	}
	st, _ := status.Read(a.Host)
	if st.State != status.Standby {
		t.Errorf("state %s", st.State)
	}
	if err := a.PrepareAppliance(context.Background()); !errors.Is(err, ErrStandby) {
		t.Errorf("prepare-appliance in standby: %v", err)
	}
	if err := a.Appliance(context.Background(), RunOptions{}); !errors.Is(err, ErrStandby) {
		t.Errorf("appliance in standby: %v", err)
	}
	if len(rec.Recorded()) != 0 {
		t.Errorf("commands ran in standby: %v", rec.Recorded())
	}
	// Leaving standby clears the flag.
	put(t, a, "/app/env.yml", []byte("#cloud-config\nappliance:\n  domain: sb.example.org\n"), 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a.Host.Exists(status.StandbyFlag) {
		t.Error("standby flag kept")
	}
}

func TestTunePostgres(t *testing.T) {
	small := TunePostgres(1<<30, 1)
	if small.SharedBuffersMB != 256 || small.MaxWorkers != 8 || small.ParallelPerGather != 1 {
		t.Errorf("1 GiB/1 core: %+v", small)
	}
	big := TunePostgres(64<<30, 16)
	if big.SharedBuffersMB != 8192 || big.EffectiveCacheMB != 49152 || big.MaintenanceWorkMB != 2048 || big.MaxWorkers != 16 || big.ParallelPerGather != 8 {
		t.Errorf("64 GiB/16 cores: %+v", big)
	}
	tiny := TunePostgres(256<<20, 1)
	if tiny.SharedBuffersMB != 128 || tiny.WorkMemMB != 4 {
		t.Errorf("256 MiB: %+v", tiny)
	}
}

func TestParseShellAssignments(t *testing.T) {
	in := "A=plain\nB='it'\"'\"'s\nmulti'\nC=\nD=''\nE=\"dq \\\"x\\\" \\$y\"\n"
	vars, err := ParseShellAssignments(in)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(vars)
	want := `[{"Name":"A","Value":"plain"},{"Name":"B","Value":"it's\nmulti"},{"Name":"C","Value":""},{"Name":"D","Value":""},{"Name":"E","Value":"dq \"x\" $y"}]`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if _, err := ParseShellAssignments("A='open\n"); err == nil {
		t.Error("unterminated quote accepted")
	}
}
