package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
)

func TestInstallWritesAndEnables(t *testing.T) {
	root := t.TempDir()
	written, err := Install(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(written) != len(Names())+len(Enabled) {
		t.Fatalf("written %v", written)
	}
	for _, n := range []string{"prepare-env.service", "prepare-appliance.service", "prepare-ecs.service",
		"appliance.service", "appliance-cleanup.service", "appliance-failed@.service", "ecs-agent-deploy.service"} {
		p := filepath.Join(root, UnitDir, n)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %o", n, st.Mode().Perm())
		}
		data, _ := os.ReadFile(p)
		if n != "appliance-cleanup.service" && !strings.Contains(string(data), "ExecStart="+AgentBinary+" ") {
			t.Errorf("%s does not run %s", n, AgentBinary)
		}
	}
	link, err := os.Readlink(filepath.Join(root, UnitDir, "multi-user.target.wants/appliance.service"))
	if err != nil || link != "/etc/systemd/system/appliance.service" {
		t.Fatalf("enable link: %q %v", link, err)
	}
	// Idempotent.
	if _, err := Install(root); err != nil {
		t.Fatal(err)
	}
}

// systemd itself checks the units (syntax, keys, dependencies, ExecStart).
func TestUnitsVerifyWithSystemd(t *testing.T) {
	testenv.Tools(t, "systemd-analyze")
	testenv.File(t, "/lib/systemd/system/multi-user.target", "systemd's units to verify against: make deps")
	root := t.TempDir()
	if _, err := Install(root); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "lib/systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", "/lib/systemd/system", filepath.Join(root, "lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	bin := filepath.Join(root, AgentBinary)
	os.MkdirAll(filepath.Dir(bin), 0o755)
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"verify", "--root=" + root}
	for _, n := range Names() {
		if strings.HasSuffix(n, "@.service") {
			n = strings.Replace(n, "@.service", "@prepare-env.service.service", 1)
		}
		args = append(args, filepath.Join(root, UnitDir, n))
	}
	cmd := exec.Command("systemd-analyze", args...)
	cmd.Dir = filepath.Join(root, UnitDir)
	out, err := cmd.CombinedOutput()
	// Ignore complaints about units of the host we did not install.
	var problems []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && (strings.Contains(l, root+UnitDir) || strings.Contains(l, "ecs-agent") ||
			strings.HasPrefix(l, "appliance") || strings.HasPrefix(l, "prepare-")) {
			problems = append(problems, l)
		}
	}
	if err != nil || len(problems) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, strings.Join(problems, "\n"))
	}
}
