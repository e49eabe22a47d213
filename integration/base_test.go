//go:build integration

package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// baseSeedUserData is appended to the project's real default env.yml (which
// is cloud-config user-data): bootcmd and runcmd write markers to the serial
// console, and a transient unit waits for cloud-init to finish and prints
// its final status there (runcmd itself runs inside cloud-final, so it
// cannot wait for cloud-init without deadlocking).
const baseSeedUserData = `
bootcmd:
  - [sh, -c, 'echo ECS-BASE-BOOTCMD-MARKER > /dev/ttyS0']
runcmd:
  - [sh, -c, 'echo ECS-BASE-RUNCMD-MARKER > /dev/ttyS0']
  - [systemd-run, --no-block, --unit=ecs-ci-status, sh, -c, 'cloud-init status --wait >/dev/null 2>&1; cloud-init status --long 2>&1 | sed "s/^/ECS-CI: /" > /dev/ttyS0; echo "ECS-CI-RESULT: $(cloud-init status 2>&1 | tr "\n" " ")" > /dev/ttyS0']
`

// TestBaseBuildBoots builds (or takes from the cache) the local Debian 12
// base, boots it under QEMU with a NoCloud seed ISO made by `ecs-image
// cidata` from the default env.yml, and checks on the serial console that
// the real cloud-init consumed the seed and finished with status done.
func TestBaseBuildBoots(t *testing.T) {
	start := time.Now()
	base := baseImage(t)
	t.Logf("base image %s (%s)", base, time.Since(start).Round(time.Second))
	if !filepath.IsAbs(base) || strings.Contains(base, "\n") {
		t.Fatalf("base build printed %q, want one absolute path", base)
	}
	info := ecsImage(t, "base", "inspect", "--format", "qcow2", base)
	if !strings.Contains(info, "format:       qcow2") {
		t.Fatalf("base inspect:\n%s", info)
	}
	// A second build is a cache hit and prints the same path.
	t0 := time.Now()
	if again := strings.TrimSpace(ecsImage(t, "base", "build")); again != base {
		t.Fatalf("second build printed %q, want %q", again, base)
	}
	if d := time.Since(t0); d > 30*time.Second {
		t.Errorf("cached base build took %s", d)
	}

	dir := t.TempDir()
	envData, err := os.ReadFile("../env/testdata/default-env.yml")
	if err != nil {
		t.Fatal(err)
	}
	envPath := filepath.Join(dir, "env.yml")
	if err := os.WriteFile(envPath, append(envData, []byte(baseSeedUserData)...), 0o600); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(dir, "seed.iso")
	ecsImage(t, "cidata", "-e", envPath, "-o", seed)

	g := bootBase(t, bootOptions{Name: "base-boot", Image: base, Seed: seed, DiskCache: "unsafe", Timeout: 15 * time.Minute})
	ctx, m, bootStart := g.Ctx, g.M, g.M.Started
	for _, marker := range []string{"ECS-BASE-BOOTCMD-MARKER", "ECS-BASE-RUNCMD-MARKER"} {
		if err := m.WaitSerial(ctx, marker); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s after %s", marker, time.Since(bootStart).Round(time.Second))
	}
	line, err := m.WaitSerialMatch(ctx, regexp.MustCompile(`ECS-CI-RESULT: `))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to cloud-init done: %s (%s)", time.Since(bootStart).Round(time.Second), line)
	if !strings.Contains(line, "status: done") {
		t.Errorf("cloud-init did not finish cleanly: %s", line)
	}
	// cloud-init used our seed ISO (NoCloud), not its fallback datasource.
	ds, err := m.WaitSerialMatch(ctx, regexp.MustCompile(`ECS-CI: .*DataSourceNoCloud`))
	if err != nil {
		t.Errorf("datasource: %v", err)
	} else {
		t.Logf("%s", ds)
	}
	if err := m.Shutdown(ctx, 3*time.Minute); err != nil {
		t.Errorf("power off: %v", err)
	}
	t.Logf("boot + power off: %s", time.Since(bootStart).Round(time.Second))
}
