package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// client-cert create, list and revoke through the CLI, on a root whose CA
// prepare-appliance created (commands recorded, not run).
func TestClientCertCLI(t *testing.T) {
	root := t.TempDir()
	envFile := filepath.Join(root, "app", "env.yml")
	os.MkdirAll(filepath.Dir(envFile), 0o755)
	os.WriteFile(envFile, []byte("#cloud-config\nappliance:\n  domain: cli.example.org\n"), 0o600)
	net := []string{"--ec2-url", "-", "--gce-url", "-", "--device", os.DevNull}
	if _, stderr, code := agent(t, nil, append([]string{"--root", root, "prepare-env"}, net...)...); code != 0 {
		t.Fatalf("prepare-env: %d\n%s", code, stderr)
	}

	// No CA yet.
	if _, stderr, code := agent(t, nil, "--root", root, "client-cert", "list"); code != 1 || !strings.Contains(stderr, "no client CA") {
		t.Errorf("list without CA: %d %s", code, stderr)
	}
	if _, stderr, code := agent(t, nil, "--root", root, "prepare-appliance"); code != 0 {
		t.Fatalf("prepare-appliance: %d\n%s", code, stderr)
	}
	out := filepath.Join(t.TempDir(), "office.p12")
	stdout, stderr, code := agent(t, nil, "--root", root, "client-cert", "create", "office@ek.example.org", "Office 1", "--days", "30", "-o", out)
	if code != 0 {
		t.Fatalf("create: %d\n%s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 || lines[0] != out || !strings.HasPrefix(lines[1], "transport password: ") {
		t.Errorf("stdout %q", stdout)
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("p12: %v %v", st, err)
	}
	if _, _, code := agent(t, nil, "--root", root, "client-cert", "create", "office@ek.example.org", "Office 1", "-o", out); code != 2 {
		t.Errorf("existing file: exit %d, want 2", code)
	}
	for _, args := range [][]string{{"create", "nomail", "x"}, {"create", "a@b.org"}, {"create", "a@b.org", "x", "--days", "0"}, {"revoke"}} {
		if _, _, code := agent(t, nil, append([]string{"--root", root, "client-cert"}, args...)...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	stdout, _, _ = agent(t, nil, "--root", root, "client-cert", "list")
	if !strings.Contains(stdout, `"Office 1"`) || !strings.Contains(stdout, "valid") {
		t.Errorf("list:\n%s", stdout)
	}
	stdout, stderr, code = agent(t, nil, "--root", root, "client-cert", "revoke", "office@ek.example.org")
	if code != 0 || !strings.HasPrefix(stdout, "revoked ") {
		t.Fatalf("revoke: %d %s %s", code, stdout, stderr)
	}
	log, _ := os.ReadFile(filepath.Join(root, "var/log/ecs-agent/commands.log"))
	if !strings.Contains(string(log), "systemctl try-reload-or-restart nginx.service") {
		t.Errorf("nginx not reloaded:\n%s", log)
	}
	if stdout, _, _ = agent(t, nil, "--root", root, "client-cert", "list"); !strings.Contains(stdout, "revoked") {
		t.Errorf("list after revoke:\n%s", stdout)
	}
	if _, _, code := agent(t, nil, "--root", root, "client-cert", "revoke", "office@ek.example.org"); code != 1 {
		t.Errorf("second revoke: exit %d, want 1", code)
	}
}
