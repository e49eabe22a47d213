//go:build integration

package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/builder"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/testenv"
)

// chrootTemplate installs nginx in a packages-only stage (a chroot on the
// build host by default) and runs shell commands in a stage that asks for
// a chroot; the disk grows from the base's 4 GiB to 6 GiB.
func chrootTemplate(base, marker string) string {
	return `name: it-chroot
base:
  file: ` + base + `
disk_size: 6G
memory: 1024
ssh_timeout: 20m
stages:
  - name: web
    provisioners:
      - type: packages
        packages: [nginx, apparmor]
      - type: file
        content: "<h1>` + marker + `</h1>\n"
        destination: /var/www/html/index.html
  - name: configure
    mode: chroot
    provisioners:
      - type: shell
        inline:
          - echo "` + marker + `" > /etc/ecs-build-marker
          - hostname > /etc/ecs-build-hostname
          - test -x /usr/sbin/policy-rc.d && echo "policy-rc.d in place"
          - id -u > /etc/ecs-build-uid
`
}

// needChroot skips on a host where ecs-image builds chroot stages in the
// booted image instead (not root, no FUSE or loop devices, a tool missing:
// the builder's own check); in CI, which has all of them, it fails.
func needChroot(t *testing.T) {
	t.Helper()
	if err := builder.ChrootUsable(); err != nil {
		testenv.Missing(t, "chroot stages cannot run on this host: %v", err)
	}
}

// TestBuildChroot builds stages in a chroot on the build host (no build
// VM at all: the packages, the file and the shell commands), then boots
// the image: nginx (installed but never started during the build) serves
// the page, the root file system was grown, and the chroot's policy-rc.d
// and resolv.conf are gone.
func TestBuildChroot(t *testing.T) {
	needChroot(t)
	base := baseImage(t)
	dir := t.TempDir()
	rnd := make([]byte, 6)
	rand.Read(rnd)
	marker := "chroot-" + hex.EncodeToString(rnd)
	tmpl := filepath.Join(dir, "it-chroot.yml")
	os.WriteFile(tmpl, []byte(chrootTemplate(base, marker)), 0o644)
	out := filepath.Join(dir, "out")

	start := time.Now()
	ecsImage(t, "build", tmpl, "-o", out)
	t.Logf("cold build, chroot stages: %s", time.Since(start).Round(time.Second))
	img := filepath.Join(out, "it-chroot.qcow2")
	m := readManifest(t, filepath.Join(out, "it-chroot.build.json"))
	if len(m.Stages) != 2 || m.Stages[0].Mode != template.ModeChroot || m.Stages[1].Mode != template.ModeChroot || m.Generalise.Mode != template.ModeChroot {
		t.Errorf("manifest stages: %+v, generalise %+v (want all in a chroot)", m.Stages, m.Generalise)
	}
	for _, s := range m.Steps {
		if strings.Contains(s.Step, "start qemu") || strings.Contains(s.Step, "wait ssh") {
			t.Errorf("a chroot build booted the image: step %q ran", s.Step)
		}
	}
	checkImageOffline(t, img)
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), "stage-") {
		t.Errorf("a stage mount is left on the host:\n%s", mounts)
	}

	g := bootBase(t, bootOptions{Name: "chroot-it", Image: img, Timeout: 20 * time.Minute, User: "tester", SSHTimeout: 15 * time.Minute})
	ctx, c := g.Ctx, g.C
	check := func(cmd, want string) {
		t.Helper()
		out, err := c.Output(ctx, cmd, true)
		if err != nil || strings.TrimSpace(out) != want {
			t.Errorf("%s: got %q (%v), want %q", cmd, strings.TrimSpace(out), err, want)
		}
	}
	// cloud-init on the chroot-built image (whose machine-id and instance
	// state the build reset) runs again and ends cleanly, from our seed.
	if ds := cloudInitDone(t, ctx, c); !strings.Contains(ds, "NoCloud") {
		t.Errorf("cloud-init datasource %q, want NoCloud (the test's seed)", ds)
	}
	check("cat /etc/ecs-build-marker", marker)
	check("cat /etc/ecs-build-uid", "0")
	// The chroot saw the image's own hostname, not the build host's.
	if host, _ := os.Hostname(); host != "" {
		check("grep -cxF '"+host+"' /etc/ecs-build-hostname || true", "0")
	}
	check("test -e /usr/sbin/policy-rc.d && echo left || echo gone", "gone")
	check("systemctl is-active nginx", "active")
	check(`bash -c 'exec 3<>/dev/tcp/127.0.0.1/80; printf "GET / HTTP/1.0\r\n\r\n" >&3; tail -n 1 <&3'`, "<h1>"+marker+"</h1>")
	// Grown from the base's 4 GiB: more than 5 GiB of root file system.
	check("test $(df --output=size -k / | tail -n 1) -gt 5242880 && echo grown", "grown")
	check("test -s /etc/machine-id && echo regenerated", "regenerated")
	// The AppArmor policy cache the chroot generalisation compiled for the
	// image kernel's recorded feature set is the one this kernel selects,
	// and apparmor.service loaded the profiles from it: every file of the
	// cache directory predates this boot (a cache for other features
	// would be missing there, or written now).
	check("systemctl is-active apparmor", "active")
	aa, err := c.Output(ctx, `sh -c 'd=$(apparmor_parser --print-cache-dir) || exit 1; bt=$(awk "/^btime/ {print \$2}" /proc/stat); n=0; new=0; `+
		`for f in "$d"/* "$d"/.features; do [ -f "$f" ] || continue; n=$((n+1)); [ $(stat -c %Y "$f") -lt "$bt" ] || new=$((new+1)); done; `+
		`echo "$n $new $(grep -c . /sys/kernel/security/apparmor/profiles)"'`, true)
	var files, fresh, loaded int
	if _, serr := fmt.Sscan(aa, &files, &fresh, &loaded); err != nil || serr != nil || files < 2 || fresh != 0 || loaded == 0 {
		t.Errorf("AppArmor cache: %q (%v): want cache files (with .features) all older than the boot, and profiles loaded", strings.TrimSpace(aa), err)
	}
}

// TestBuildChrootInterrupt interrupts a build while apt runs in the chroot:
// non-zero exit, nothing in the output directory, no mount, loop device or
// qemu-storage-daemon left behind, the work directory removed.
func TestBuildChrootInterrupt(t *testing.T) {
	needChroot(t)
	base := baseImage(t)
	dir := t.TempDir()
	rnd := make([]byte, 6)
	rand.Read(rnd)
	tmpl := filepath.Join(dir, "it-chroot.yml")
	os.WriteFile(tmpl, []byte(chrootTemplate(base, "interrupt-"+hex.EncodeToString(rnd))), 0o644)
	out := filepath.Join(dir, "out")
	// "Unpacking" is dpkg at work inside the chroot.
	before, log := interruptBuild(t, "Unpacking ", 0, tmpl, "-o", out, "--no-cache")
	if !strings.Contains(before, "chroot on the build host") {
		t.Fatalf("the build did not run a chroot stage:\n%s", log)
	}
	time.Sleep(time.Second)
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("output directory not empty after the interrupt: %v", ents)
	}
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), "export.raw") || strings.Contains(string(mounts), "stage-web") {
		t.Errorf("a stage mount is left on the host:\n%s", mounts)
	}
	if data, _ := exec.Command("losetup", "-a").Output(); strings.Contains(string(data), "export.raw") {
		t.Errorf("loop device left: %s", data)
	}
	if data, _ := exec.Command("pgrep", "-af", "qemu-storage-daemon.*stage-web").Output(); len(data) > 0 {
		t.Errorf("qemu-storage-daemon still running: %s", data)
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if r, err := os.Readlink(filepath.Join("/proc", e.Name(), "root")); err == nil && strings.Contains(r, "stage-web") {
			cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			t.Errorf("process %s still runs in the chroot: %q", e.Name(), cmdline)
		}
	}
	if t.Failed() {
		t.Logf("build log:\n%s", log)
	}
}

// TestBuildChrootOnErrorAbort: a chroot stage whose shell fails, built
// with --on-error=abort, stays mounted after ecs-image exits; the printed
// nsenter command enters it (what the stage wrote before failing is
// there), and the printed cleanup.sh removes everything: no process,
// mount or loop device is left, nor the work directory.
func TestBuildChrootOnErrorAbort(t *testing.T) {
	needChroot(t)
	base := baseImage(t)
	dir := t.TempDir()
	rnd := make([]byte, 6)
	rand.Read(rnd)
	marker := "abort-" + hex.EncodeToString(rnd)
	tmpl := filepath.Join(dir, "it-abort.yml")
	os.WriteFile(tmpl, []byte(`name: it-abort
base:
  file: `+base+`
stages:
  - name: fails
    mode: chroot
    provisioners:
      - type: shell
        inline:
          - echo `+marker+` > /root/abort-marker
          - echo "failing on purpose"; exit 3
`), 0o644)
	out := filepath.Join(dir, "out")
	stdout, stderr, err := ecsImageRun("build", tmpl, "-o", out, "--no-cache", "--on-error=abort")
	if err == nil {
		t.Fatalf("the build succeeded:\n%s\n%s", stdout, stderr)
	}
	nsenter := regexp.MustCompile(`(?m)^  (nsenter --target (\d+) --mount --uts -- chroot (\S+)) /bin/sh -c .*$`).FindStringSubmatch(stderr)
	cleanup := regexp.MustCompile(`(?m)^  sh (\S+/cleanup\.sh)$`).FindStringSubmatch(stderr)
	if nsenter == nil || cleanup == nil || !strings.Contains(stderr, "exited with status 3") {
		t.Fatalf("no way in or out printed:\n%s", stderr)
	}
	work := filepath.Dir(cleanup[1])
	t.Cleanup(func() { exec.Command("sh", cleanup[1]).Run() })

	// ecs-image has exited; the chroot is still there.
	args := append(strings.Fields(nsenter[1]), "cat", "/root/abort-marker")
	got, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) != marker {
		t.Fatalf("%s: %q %v, want the marker", strings.Join(args, " "), got, err)
	}
	if _, err := os.Stat(work); err != nil {
		t.Fatalf("work directory: %v", err)
	}
	// A build in between must not take it for a crashed build's.
	ecsImageRun("cache", "ls")
	builder.DefaultStageCache().CleanStale()
	if _, err := os.Stat(work); err != nil {
		t.Fatalf("work directory removed while the chroot runs: %v", err)
	}

	if out, err := exec.Command("sh", cleanup[1]).CombinedOutput(); err != nil {
		t.Fatalf("cleanup.sh: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Errorf("work directory left: %v", err)
	}
	for _, pid := range []string{nsenter[2]} {
		if _, err := os.Stat("/proc/" + pid); err == nil {
			t.Errorf("process %s still running", pid)
		}
	}
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), work) {
		t.Errorf("a mount of %s is left:\n%s", work, mounts)
	}
	if data, _ := exec.Command("losetup", "-a").Output(); strings.Contains(string(data), work) {
		t.Errorf("loop device left: %s", data)
	}
	if data, _ := exec.Command("pgrep", "-af", "qemu-storage-daemon.*"+filepath.Base(work)).Output(); len(data) > 0 {
		t.Errorf("qemu-storage-daemon still running: %s", data)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("output directory not empty: %v", ents)
	}
}
