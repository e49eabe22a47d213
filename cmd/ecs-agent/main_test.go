package main

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/templates/systemd"
)

var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ecs-agent-test")
	if err != nil {
		panic(err)
	}
	agentBin = filepath.Join(dir, "ecs-agent")
	cmd := exec.Command("go", "build", "-o", agentBin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func agent(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(agentBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestStaticBinary(t *testing.T) {
	f, err := elf.Open(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("ecs-agent is dynamically linked")
		}
	}
}

func TestChainUnderRoot(t *testing.T) {
	root := t.TempDir()
	iso, err := cidata.Build(cidata.Options{UserData: []byte("#cloud-config\nappliance:\n  domain: cli.example.org\n")})
	if err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(t.TempDir(), "seed.iso")
	os.WriteFile(seed, iso, 0o600)
	net := []string{"--ec2-url", "-", "--gce-url", "-"}

	_, stderr, code := agent(t, nil, append([]string{"--root", root, "prepare-env", "--device", seed}, net...)...)
	if code != 0 {
		t.Fatalf("prepare-env: exit %d\n%s", code, stderr)
	}
	out, _, code := agent(t, nil, "--root", root, "status")
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("status: %v %d %s", err, code, out)
	}
	if st["state"] != "preparing" || st["domain"] != "cli.example.org" || !strings.HasPrefix(st["env_source"].(string), "cidata:"+seed) {
		t.Errorf("status %v", st)
	}
	if _, stderr, code = agent(t, nil, "--root", root, "prepare-appliance"); code != 0 {
		t.Fatalf("prepare-appliance: exit %d\n%s", code, stderr)
	}
	log, _ := os.ReadFile(filepath.Join(root, "var/log/ecs-agent/commands.log"))
	if !strings.Contains(string(log), "hostname cli.example.org") {
		t.Errorf("commands.log:\n%s", log)
	}
	// Failure handler, then everything is blocked with exit 3.
	if _, _, code = agent(t, nil, "--root", root, "failed", "prepare-ecs.service"); code != 0 {
		t.Fatalf("failed: exit %d", code)
	}
	for _, c := range []string{"prepare-env", "prepare-appliance", "prepare-ecs", "appliance"} {
		_, stderr, code = agent(t, nil, "--root", root, c)
		if code != 3 || !strings.Contains(stderr, "/run/appliance-failed") {
			t.Errorf("%s with failed flag: exit %d\n%s", c, code, stderr)
		}
	}
	out, _, _ = agent(t, nil, "--root", root, "status")
	if !strings.Contains(out, `"state": "failed"`) || !strings.Contains(out, "prepare-ecs.service failed") {
		t.Errorf("status after failure:\n%s", out)
	}
	console, _ := os.ReadFile(filepath.Join(root, "dev/ttyS0"))
	if !strings.Contains(string(console), "ECS-APPLIANCE-FAILED: unit prepare-ecs.service failed") {
		t.Errorf("console %q", console)
	}
}

func TestInvalidEnvExit1AndStandbyExit4(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "app"), 0o755)
	os.WriteFile(filepath.Join(root, "app/env.yml"), []byte("#cloud-config\nappliance: {}\n"), 0o600)
	_, stderr, code := agent(t, nil, "--root", root, "prepare-env", "--ec2-url", "-", "--gce-url", "-")
	if code != 1 || !strings.Contains(stderr, "appliance.domain") {
		t.Fatalf("invalid env: exit %d\n%s", code, stderr)
	}
	root = t.TempDir()
	envFile := filepath.Join(root, "site.yml")
	os.WriteFile(envFile, []byte("#cloud-config\nappliance:\n  domain: s.example.org\n  standby: true\n"), 0o600)
	_, stderr, code = agent(t, []string{"ENV_YML=/site.yml"}, "--root", root, "prepare-env", "--ec2-url", "-", "--gce-url", "-")
	if code != 0 || !strings.Contains(stderr, "ECS-APPLIANCE-STANDBY") {
		t.Fatalf("standby prepare-env: exit %d\n%s", code, stderr)
	}
	if _, _, code = agent(t, nil, "--root", root, "prepare-appliance"); code != 0 {
		t.Errorf("prepare-appliance in standby: exit %d", code)
	}
	if _, _, code = agent(t, nil, "--root", root, "appliance"); code != 4 {
		t.Errorf("appliance in standby: exit %d", code)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--bogus"}, {"status", "extra"}, {"nosuchcmd"}, {"--runner", "maybe", "--root", t.TempDir(), "status"}, {"serve", "--config", "/nonexistent.json"}} {
		if _, stderr, code := agent(t, nil, args...); code != 2 {
			t.Errorf("%v: exit %d\n%s", args, code, stderr)
		}
	}
}

func TestInstallUnits(t *testing.T) {
	root := t.TempDir()
	out, _, code := agent(t, nil, "--root", root, "install-units")
	if code != 0 || !strings.Contains(out, "/etc/systemd/system/multi-user.target.wants/appliance.service") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/systemd/system/prepare-env.service")); err != nil {
		t.Fatal(err)
	}
}

func TestStatusWritesNothing(t *testing.T) {
	root := filepath.Join(t.TempDir(), "absent")
	out, _, code := agent(t, nil, "--root", root, "status")
	if code != 0 || !strings.Contains(out, `"state": "unconfigured"`) {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Errorf("status created %s", root)
	}
}

// TestApplianceExit3AfterFailedRuns runs `appliance` the way systemd's
// Restart=always does, with a docker-compose that always fails: exit 1
// twice (restart), then exit 3 with the failure recorded (no restart).
func TestApplianceExit3AfterFailedRuns(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "app"), 0o755)
	os.WriteFile(filepath.Join(root, "app/env.yml"), []byte("#cloud-config\nappliance:\n  domain: cli.example.org\n"), 0o600)
	if _, stderr, code := agent(t, nil, "--root", root, "prepare-env", "--ec2-url", "-", "--gce-url", "-"); code != 0 {
		t.Fatalf("prepare-env: exit %d\n%s", code, stderr)
	}
	// A published web service makes the agent probe 127.0.0.1:18000.
	os.WriteFile(filepath.Join(root, "app/docker-compose.yml"), []byte("services:\n  web:\n    ports: [\"127.0.0.1:18000:8000\"]\n"), 0o644)
	bin := t.TempDir()
	os.WriteFile(filepath.Join(bin, "docker-compose"), []byte("#!/bin/sh\necho 'ERROR: no such image: ecs/web' >&2\nexit 1\n"), 0o755)
	env := []string{"PATH=" + bin + ":" + os.Getenv("PATH")}
	args := []string{"--root", root, "--runner", "exec", "appliance", "--max-failures", "3"}
	for i, want := range []int{1, 1, 3, 3} {
		_, stderr, code := agent(t, env, args...)
		if code != want {
			t.Fatalf("run %d: exit %d, want %d\n%s", i+1, code, want, stderr)
		}
	}
	console, _ := os.ReadFile(filepath.Join(root, "dev/ttyS0"))
	if !strings.Contains(string(console), "ECS-APPLIANCE-FAILED: appliance: 3 consecutive failed runs, giving up; last: before ready: docker-compose: exit status 1: ERROR: no such image: ecs/web") {
		t.Errorf("console %q", console)
	}
	out, _, _ := agent(t, nil, "--root", root, "status")
	if !strings.Contains(out, `"state": "failed"`) || !strings.Contains(out, "no such image: ecs/web") {
		t.Errorf("status:\n%s", out)
	}
	if _, stderr, code := agent(t, env, "--root", root, "appliance", "--max-failures", "0"); code != 2 {
		t.Errorf("--max-failures 0: exit %d\n%s", code, stderr)
	}
}

// wait-storage (docker.service's ExecStartPre) returns at once without an
// attached volume, and with one that stays unmounted warns after --timeout
// and still exits 0, so that dockerd starts.
func TestWaitStorageCommand(t *testing.T) {
	root := t.TempDir()
	if _, e, code := agent(t, nil, "--root", root, "wait-storage"); code != 0 || e != "" {
		t.Fatalf("no volume: exit %d\n%s", code, e)
	}
	if err := os.MkdirAll(filepath.Join(root, "dev/disk/by-label"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "dev/vdb"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../vdb", filepath.Join(root, "dev/disk/by-label/ecs-data")); err != nil {
		t.Fatal(err)
	}
	_, e, code := agent(t, nil, "--root", root, "wait-storage", "--timeout", "300ms")
	if code != 0 || !strings.Contains(e, "waiting for /data to be mounted") || !strings.Contains(e, "warning: the storage volumes were not settled in time: /data not mounted after 300ms; dockerd starts anyway") {
		t.Fatalf("unmounted volume: exit %d\n%s", code, e)
	}
}

// The image's docker.service runs wait-storage with arguments the command
// takes ("-" in the unit ignores a failure, so a bad flag would go unseen
// in the guest: "10min" is systemd's spelling, not Go's).
func TestDockerUnitRunsWaitStorage(t *testing.T) {
	unit, err := os.ReadFile("../../templates/files/appliance/systemd/docker.service")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, l := range strings.Split(string(unit), "\n") {
		if rest, ok := strings.CutPrefix(l, "ExecStartPre=-"+systemd.AgentBinary+" "); ok {
			args = strings.Fields(rest)
		}
	}
	if len(args) == 0 || args[0] != "wait-storage" {
		t.Fatalf("docker.service has no ExecStartPre=-%s wait-storage …", systemd.AgentBinary)
	}
	if _, e, code := agent(t, nil, append([]string{"--root", t.TempDir()}, args...)...); code != 0 || e != "" {
		t.Fatalf("ecs-agent %s: exit %d\n%s", strings.Join(args, " "), code, e)
	}
}
