//go:build integration

package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/builder"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/qemu"
	"github.com/ecs-image/ecs-image/qemu/qemutest"
	"github.com/ecs-image/ecs-image/qemuimg"
)

// buildTemplate is templates/test-small.yml on the local base, with a
// marker in the booted stage so that this run really builds it, and the
// file-only last stage's content as a parameter.
func buildTemplate(base, marker, motd string) string {
	return `name: it-small
base:
  file: ` + base + `
disk_size: 4G
memory: 1024
ssh_timeout: 20m
stages:
  - name: system
    provisioners:
      - type: packages
        packages: [jq]
      - type: shell
        inline:
          - echo "` + marker + `" > /etc/ecs-build-marker
          - mkdir -p /app /data /volatile
  - name: files
    provisioners:
      - type: file
        content: "` + motd + `\n"
        destination: /etc/motd
        mode: "0644"
      - type: file
        source: tree
        destination: /app/etc-test
        owner: root:root
`
}

func readManifest(t *testing.T, path string) *builder.Manifest {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m builder.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// TestBuildSmall builds a small template from the local base (packages +
// shell in a booted stage, files in an offline stage, generalise), checks
// the image before and after its first boot, and rebuilds it with only the
// last stage changed.
func TestBuildSmall(t *testing.T) {
	base := baseImage(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tree", "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "tree", "sub", "conf"), []byte("conf\n"), 0o640)
	rnd := make([]byte, 6)
	rand.Read(rnd)
	marker := "it-" + hex.EncodeToString(rnd)
	tmpl := filepath.Join(dir, "it-small.yml")
	os.WriteFile(tmpl, []byte(buildTemplate(base, marker, "first build")), 0o644)
	out := filepath.Join(dir, "out")

	// The cold build runs on a host whose KVM lies (issue 12): QEMU is the
	// qemutest.LyingKVM wrapper, whose KVM passes the probe and then hangs
	// every guest. The build must pass, under TCG, saying why once.
	wrapper, err := qemutest.LyingKVM(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	stdout, errOut, err := ecsImageRunEnv([]string{qemu.BinaryEnv + "=" + wrapper, qemu.AccelEnv + "="}, "build", tmpl, "-o", out)
	if err != nil {
		t.Fatalf("cold build on a lying KVM: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, errOut)
	}
	t.Logf("cold build (lying KVM): %s", time.Since(start).Round(time.Second))
	if n := strings.Count(errOut, "KVM is not usable"); n != 1 {
		t.Errorf("want one warning saying why TCG was chosen, got %d:\n%s", n, errOut)
	}
	if qemu.ProbeKVM() == nil && !strings.Contains(errOut, "restarted under TCG") {
		// /dev/kvm works here, so the wrapper's lying probe passed: the
		// watchdog must have caught the silent build VM.
		t.Errorf("the stalled KVM build VM was not restarted under TCG:\n%s", errOut)
	}
	img := filepath.Join(out, "it-small.qcow2")
	if !strings.Contains(stdout, img) {
		t.Fatalf("stdout does not name the image: %q", stdout)
	}
	m := readManifest(t, filepath.Join(out, "it-small.build.json"))
	// The file-only stage and the generalisation run in a chroot on the
	// build host where it can chroot, else in the offline helper.
	hostMode := template.ModeOffline
	if builder.ChrootUsable() == nil {
		hostMode = template.ModeChroot
	}
	if len(m.Stages) != 2 || m.Stages[0].Cached || m.Stages[1].Cached || m.Stages[1].Mode != hostMode || m.Stages[0].Mode != template.ModeBoot ||
		m.Generalise.Mode != hostMode {
		t.Errorf("manifest stages: %+v, generalise %+v (want the last stage and the generalisation %s)", m.Stages, m.Generalise, hostMode)
	}
	hasJQ := false
	for _, p := range m.Packages {
		hasJQ = hasJQ || strings.HasPrefix(p, "jq\t")
	}
	if !hasJQ || !strings.HasPrefix(m.Base.Digest, "sha256:") || !strings.HasPrefix(m.TemplateDigest, "sha256:") {
		t.Errorf("manifest: jq listed %v, base %q, template %q", hasJQ, m.Base.Digest, m.TemplateDigest)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 2 {
		t.Errorf("output directory holds %d entries, want the image and its manifest", len(ents))
	}
	info, err := qemuimg.ReadInfo(context.Background(), img, "qcow2")
	if err != nil || info.Format != "qcow2" || info.BackingFile != "" {
		t.Fatalf("image: %+v %v", info, err)
	}

	checkImageOffline(t, img)
	// In a subtest, so that the guest is gone before the rebuilds.
	t.Run("first boot", func(t *testing.T) { bootBuiltImage(t, img, marker) })

	// Rebuild with only the last (file-only) stage changed: the booted
	// stage comes from the cache, the last stage runs offline.
	os.WriteFile(tmpl, []byte(buildTemplate(base, marker, "second build")), 0o644)
	start = time.Now()
	_, warmLog, err := ecsImageRun("build", tmpl, "-o", out)
	if err != nil {
		t.Fatalf("warm rebuild: %v\n%s", err, warmLog)
	}
	warm := time.Since(start)
	if hostMode == template.ModeChroot && strings.Contains(warmLog, "offline helper") {
		// The kernel's AppArmor features were recorded by the cold build
		// (or earlier): no VM at all.
		t.Errorf("the warm rebuild on a chroot host started the offline helper:\n%s", warmLog)
	}
	t.Logf("warm rebuild (last stage changed): %s", warm.Round(time.Second))
	m2 := readManifest(t, filepath.Join(out, "it-small.build.json"))
	if !m2.Stages[0].Cached || m2.Stages[0].Key != m.Stages[0].Key {
		t.Errorf("first stage not from the cache: %+v", m2.Stages[0])
	}
	if m2.Stages[1].Cached || m2.Stages[1].Key == m.Stages[1].Key {
		t.Errorf("changed last stage not rebuilt: %+v", m2.Stages[1])
	}
	for _, s := range m2.Steps {
		if strings.Contains(s.Step, "start qemu") || strings.Contains(s.Step, "wait ssh") {
			t.Errorf("the warm rebuild booted the image: step %q ran", s.Step)
		}
	}
	// And a third build with nothing changed is all cache.
	ecsImage(t, "build", tmpl, "-o", out)
	m3 := readManifest(t, filepath.Join(out, "it-small.build.json"))
	if !m3.Stages[1].Cached || !m3.Generalise.Cached {
		t.Errorf("unchanged rebuild: %+v %+v", m3.Stages, m3.Generalise)
	}
}

// checkImageOffline reads files of the built image's root file system with
// debugfs (a raw copy; the base's root partition starts at 1 MiB): the
// machine-id is empty, SSH host keys, the build user and its key are gone.
func checkImageOffline(t *testing.T, img string) {
	t.Helper()
	raw := img + ".raw"
	defer os.Remove(raw)
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v %s", err, out)
	}
	fs := raw + "?offset=1048576"
	debugfs := func(cmd string) string {
		out, err := exec.Command("debugfs", "-R", cmd, fs).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs %s: %v %s", cmd, err, out)
		}
		return string(out)
	}
	if out := debugfs("stat /etc/machine-id"); !strings.Contains(out, "Size: 0") {
		t.Errorf("machine-id is not empty in the image:\n%s", out)
	}
	if out := debugfs("ls /etc/ssh"); strings.Contains(out, "ssh_host_") {
		t.Errorf("SSH host keys in the image:\n%s", out)
	}
	if out := debugfs("cat /etc/passwd"); strings.Contains(out, builder.BuildUser) {
		t.Errorf("build user %s still in /etc/passwd", builder.BuildUser)
	}
	if out := debugfs("ls /home"); strings.Contains(out, builder.BuildUser) {
		t.Errorf("build user's home (with its authorized_keys) still in the image:\n%s", out)
	}
	if out := debugfs("ls /var/lib/cloud"); strings.Contains(out, "instances") {
		t.Errorf("cloud-init instance state still in the image:\n%s", out)
	}
}

// bootBuiltImage boots the image with a fresh seed and key and checks what
// the build put in and what the first boot regenerated.
func bootBuiltImage(t *testing.T, img, marker string) {
	t.Helper()
	g := bootBase(t, bootOptions{Name: "built-it", Image: img, Timeout: 25 * time.Minute, User: "tester", SSHTimeout: 15 * time.Minute})
	ctx, c, key := g.Ctx, g.C, g.Key
	if ds := cloudInitDone(t, ctx, c); !strings.Contains(ds, "NoCloud") {
		t.Errorf("cloud-init datasource %q, want NoCloud (the test's seed)", ds)
	}
	check := func(cmd, want string) {
		t.Helper()
		out, err := c.Output(ctx, cmd, true)
		if err != nil || strings.TrimSpace(out) != want {
			t.Errorf("%s: got %q (%v), want %q", cmd, strings.TrimSpace(out), err, want)
		}
	}
	check("cat /etc/motd", "first build")
	check("cat /etc/ecs-build-marker", marker)
	check("jq -n 1+1", "2")
	check("stat -c %a /app/etc-test/sub/conf", "640")
	check("test -s /etc/machine-id && echo regenerated", "regenerated")
	check("ls /etc/ssh/ssh_host_ed25519_key.pub", "/etc/ssh/ssh_host_ed25519_key.pub")
	check("getent passwd "+builder.BuildUser+" || echo absent", "absent")
	// The only authorized key in the whole image is this test's.
	check("cat /home/*/.ssh/authorized_keys /root/.ssh/authorized_keys 2>/dev/null | grep -vxcF '"+key.AuthorizedKey+"' || true", "0")
	check("ls /var/lib/apt/lists | grep -c _Packages || true", "0")
}

// TestBuildInterrupt sends SIGINT to a build while its VM boots: the build
// exits non-zero, QEMU is gone, nothing is left in the output directory and
// the work directory is removed.
func TestBuildInterrupt(t *testing.T) {
	base := baseImage(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tree"), 0o755)
	rnd := make([]byte, 6)
	rand.Read(rnd)
	tmpl := filepath.Join(dir, "it-small.yml")
	os.WriteFile(tmpl, []byte(buildTemplate(base, "interrupt-"+hex.EncodeToString(rnd), "x")), 0o644)
	out := filepath.Join(dir, "out")
	log, _ := interruptBuild(t, "qemu started", 3*time.Second, tmpl, "-o", out)
	workDir := ""
	if i := strings.Index(log, "serial log "); i >= 0 {
		p := strings.Fields(log[i+len("serial log "):])[0]
		workDir = filepath.Dir(filepath.Dir(strings.Trim(p, `"`)))
	}
	if workDir == "" {
		t.Fatalf("no serial log named before the interrupt:\n%s", log)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("output directory not empty after the interrupt: %v", ents)
	}
	if _, err := os.Stat(workDir); !os.IsNotExist(err) {
		t.Errorf("work directory %s left behind", workDir)
	}
	if data, _ := exec.Command("pgrep", "-f", workDir).Output(); len(data) > 0 {
		t.Errorf("QEMU still running: %s", data)
	}
}

// interruptBuild runs `ecs-image build ARGS…`, waits until its log holds
// until (5 minutes at most), lets it run delay longer, sends SIGINT and
// waits for it to exit. It returns the log up to the interrupt and the
// whole log. A log that never holds until, or a build that exits 0,
// fails the test.
func interruptBuild(t *testing.T, until string, delay time.Duration, args ...string) (before, all string) {
	t.Helper()
	cmd := exec.Command(ecsImagePath(), append([]string{"build"}, args...)...)
	var log syncBuffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(5 * time.Minute)
	for !strings.Contains(log.String(), until) {
		select {
		case err := <-done:
			t.Fatalf("the build exited (%v) before its log held %q:\n%s", err, until, log.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			t.Fatalf("no %q in the build's log after 5 minutes:\n%s", until, log.String())
		}
	}
	time.Sleep(delay)
	before = log.String()
	cmd.Process.Signal(os.Interrupt)
	if err := <-done; err == nil {
		t.Fatalf("an interrupted build exited 0:\n%s", log.String())
	}
	return before, log.String()
}
