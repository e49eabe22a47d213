//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/qemu"
	"github.com/ecs-image/ecs-image/qemu/qemutest"
	"go.yaml.in/yaml/v3"
)

// TestMachineBootSSH boots the local Debian base on a qcow2 overlay with a
// cidata seed, waits for SSH with an ephemeral ed25519 key, runs commands,
// moves files both ways and powers the guest off through ACPI.
func TestMachineBootSSH(t *testing.T) {
	base := baseImage(t)
	baseSum := machineDigest(t, base)
	g := bootBase(t, bootOptions{Name: "machine-it", Image: base, Size: 6 << 30})
	ctx, m, c, dir := g.Ctx, g.M, g.C, g.Dir

	out, err := c.Output(ctx, "id -un; hostname", false)
	if err != nil || out != "builder\nmachine-it\n" {
		t.Errorf("id/hostname: %q %v", out, err)
	}
	if out, err := c.Output(ctx, "id -u", true); err != nil || out != "0\n" {
		t.Errorf("sudo: %q %v", out, err)
	}
	var lines []string
	code, err := c.Run(ctx, "for i in 1 2 3; do echo line$i; done; exit 7", communicator.RunOptions{
		Env: map[string]string{"X": "y"}, Stdout: func(l string) { lines = append(lines, l) }})
	if code != 7 || err == nil || strings.Join(lines, ",") != "line1,line2,line3" {
		t.Errorf("run: %d %v %q", code, err, lines)
	}

	// Upload a file as root with a mode, and a directory as the user.
	src := filepath.Join(dir, "motd")
	os.WriteFile(src, []byte("built by ecs-image\n"), 0o644)
	if err := c.Upload(ctx, src, "/etc/ecs/motd", communicator.UploadOptions{Mode: 0o600, Sudo: true}); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Output(ctx, "stat -c '%U:%G %a' /etc/ecs/motd && cat /etc/ecs/motd", true); err != nil || out != "root:root 600\nbuilt by ecs-image\n" {
		t.Errorf("uploaded file: %q %v", out, err)
	}
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	os.WriteFile(filepath.Join(tree, "bin", "hello"), []byte("#!/bin/sh\necho hello from the guest\n"), 0o755)
	if err := c.Upload(ctx, tree, "/home/builder/tree", communicator.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Output(ctx, "/home/builder/tree/bin/hello", false); err != nil || out != "hello from the guest\n" {
		t.Errorf("uploaded script: %q %v", out, err)
	}
	got := filepath.Join(dir, "os-release")
	if err := c.Download(ctx, "/etc/os-release", got); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(got); !strings.Contains(string(b), "ID=debian") {
		t.Errorf("downloaded os-release: %q", b)
	}

	// Power off through ACPI (the guest's systemd-logind handles the button).
	start := time.Now()
	if err := m.Shutdown(ctx, 4*time.Minute); err != nil {
		t.Fatalf("ACPI shutdown: %v\nserial:\n%s", err, m.SerialTail(30))
	}
	t.Logf("ACPI power-off took %s", time.Since(start).Round(100*time.Millisecond))
	if m.Err() != nil {
		t.Errorf("Err after power-off: %v", m.Err())
	}
	if machineDigest(t, base) != baseSum {
		t.Error("the base image was modified")
	}
}

// TestMachineEarlyExitFailsFast: QEMU dying while the builder waits for SSH
// ends the wait at once, with the guest's last console lines.
func TestMachineEarlyExitFailsFast(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	// A corrupt disk: QEMU refuses to start, Start says why.
	corrupt := filepath.Join(dir, "corrupt.qcow2")
	os.WriteFile(corrupt, append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 4096)...), 0o644)
	start := time.Now()
	_, err := qemu.Start(ctx, qemu.Config{Disk: corrupt, Forwards: []qemu.Forward{{Guest: 22}}})
	var ee *qemu.ExitError
	if !errors.As(err, &ee) || !strings.Contains(ee.Output, "corrupt.qcow2") {
		t.Errorf("corrupt disk: %v", err)
	}
	t.Logf("corrupt disk reported after %s: %v", time.Since(start).Round(time.Millisecond), err)

	// A guest that panics and makes QEMU exit while Dial waits.
	disk := filepath.Join(dir, "panic.raw")
	if err := qemutest.BootDisk(disk, "Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"); err != nil {
		t.Fatal(err)
	}
	m, err := qemu.Start(ctx, qemu.Config{Disk: disk, DiskFormat: "raw", Memory: 64, Forwards: []qemu.Forward{{Guest: 22}},
		ExtraArgs: qemutest.DebugExitArgs})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := communicator.GenerateKey()
	start = time.Now()
	_, err = communicator.Dial(ctx, "127.0.0.1:"+strconv.Itoa(m.HostPort(22)), "builder", key.Signer, 10*time.Minute, m.Done())
	if !errors.Is(err, communicator.ErrAborted) {
		t.Fatalf("Dial: %v", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Dial noticed the exit after %s", d)
	}
	<-m.Done()
	if !errors.As(m.Err(), &ee) || !strings.Contains(m.Err().Error(), "Unable to mount root fs") {
		t.Errorf("exit error without the serial tail: %v", m.Err())
	}
}

// TestMachineTestCommandBareBase runs `ecs-image test` on the bare base
// (cloud-init's final message as the ready marker) and reports the bare
// boot time the appliance's first boot is compared with.
//
// It runs on a host whose KVM lies (issue 12): QEMU is the
// qemutest.LyingKVM wrapper, whose KVM passes the probe and then hangs
// every guest. The boot must still pass, under TCG, saying why once.
func TestMachineTestCommandBareBase(t *testing.T) {
	base := baseImage(t)
	wrapper, err := qemutest.LyingKVM(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ecsImagePath(), "test", base, "--no-https", "--json", "--memory", "1024", "--timeout", "12m")
	cmd.Env = append(os.Environ(), qemu.BinaryEnv+"="+wrapper, qemu.AccelEnv+"=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	out, errOut := stdout.String(), stderr.String()
	if err != nil {
		t.Fatalf("ecs-image test: %v\n%s\n%s", err, out, errOut)
	}
	if n := strings.Count(errOut, "KVM is not usable"); n != 1 || !strings.Contains(errOut, qemu.AccelEnv) {
		t.Errorf("want one warning saying why TCG was chosen (naming %s), got %d:\n%s", qemu.AccelEnv, n, errOut)
	}
	if qemu.ProbeKVM() == nil {
		// /dev/kvm works here, so the wrapper's lying probe passed: the
		// watchdog must have caught the silent guest.
		if !strings.Contains(errOut, "printed nothing on its serial console") || !strings.Contains(errOut, "restarted under TCG") {
			t.Errorf("the stalled KVM guest was not restarted under TCG:\n%s", errOut)
		}
	}
	var rep struct {
		Accel        string         `json:"accel"`
		Ports        map[string]int `json:"ports"`
		SSHSeconds   float64        `json:"ssh_seconds"`
		ReadySeconds float64        `json:"ready_seconds"`
		OK           bool           `json:"ok"`
		Line         string         `json:"console_line"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.OK || !strings.Contains(rep.Line, "finished at") {
		t.Fatalf("report %q: %v", out, err)
	}
	if rep.Accel != string(qemu.AccelTCG) {
		t.Errorf("report accel %q, want tcg", rep.Accel)
	}
	t.Logf("bare base (%s): SSH banner after %.1fs, cloud-init done after %.1fs", rep.Accel, rep.SSHSeconds, rep.ReadySeconds)
}

// machineDigest is the SHA-256 of a file.
func machineDigest(t *testing.T, path string) string {
	t.Helper()
	sum, _, err := atomicfile.SHA256File(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// TestMachineTestCommandInterrupt: Ctrl-C (SIGINT) during `ecs-image test`
// stops QEMU and leaves no temporary files.
func TestMachineTestCommandInterrupt(t *testing.T) {
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp")
	os.Mkdir(tmp, 0o700)
	disk := filepath.Join(dir, "silent.raw")
	if err := qemutest.BootDisk(disk, "waiting forever\r\n"); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ecsImagePath(), "test", disk, "--no-https", "--timeout", "10m", "--memory", "256")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stderr.String(), "started") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	qemuPID := machineFindProcess(t, tmp)
	if qemuPID == 0 {
		cmd.Process.Kill()
		t.Fatalf("no QEMU process found\n%s", stderr.String())
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Errorf("exit: %v\n%s", err, stderr.String())
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("Ctrl-C took %s", d)
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(qemuPID))); err == nil {
		t.Errorf("QEMU (pid %d) still running", qemuPID)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("left in TMPDIR: %v", left)
	}
}

// machineFindProcess returns the pid of a qemu-system process whose command
// line mentions dir.
func machineFindProcess(t *testing.T, dir string) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), dir) {
			return pid
		}
	}
	return 0
}

// syncBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// machineStandInAgent is a stand-in for ecs-agent on the bare base: an
// HTTPS server on 443 that answers 503 "preparing" to its first two
// requests for the domain (and to a wrong Host), then 200, and prints the
// ready marker on ttyS0. Counting requests, not seconds, makes the
// 503-then-200 sequence certain however slow the guest is.
const machineStandInAgent = `import http.server, ssl
seen = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global seen
        right = self.headers.get("Host", "") == "stand-in.example.org"
        seen += right
        ok = right and seen > 2
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok\n" if ok else b"preparing\n")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/root/standin-cert.pem", "/root/standin-key.pem")
srv = http.server.HTTPServer(("", 443), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open("/dev/ttyS0", "w") as c:
    c.write("ECS-APPLIANCE-READY\n")
srv.serve_forever()
`

// TestMachineTestCommandHTTPS runs `ecs-image test` with an env.yml on the
// bare base, whose cloud-init starts a stand-in agent (the env.yml's extra
// write_files/runcmd keys): the console marker and HTTPS 200 through the
// forwarded port (Host = appliance.domain) must both be seen.
func TestMachineTestCommandHTTPS(t *testing.T) {
	base := baseImage(t)
	dir := t.TempDir()
	envFile := filepath.Join(dir, "env.yml")
	ecsImage(t, "env", "create", "stand-in.example.org", "-o", envFile, "--extra", "")
	certPEM, keyPEM := machineSelfSigned(t, "stand-in.example.org")
	extra, err := yaml.Marshal(map[string]any{
		"write_files": []map[string]string{
			{"path": "/root/standin.py", "content": machineStandInAgent},
			{"path": "/root/standin-cert.pem", "content": string(certPEM)},
			{"path": "/root/standin-key.pem", "content": string(keyPEM), "permissions": "0600"},
		},
		"runcmd": [][]string{{"systemd-run", "--unit", "ecs-standin", "python3", "/root/standin.py"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(envFile, os.O_APPEND|os.O_WRONLY, 0)
	f.Write(append([]byte("\n"), extra...))
	f.Close()

	out, errOut, err := ecsImageRun("test", base, "--env", envFile, "--json", "--memory", "1024", "--timeout", "12m")
	if err != nil {
		t.Fatalf("ecs-image test: %v\n%s\n%s", err, out, errOut)
	}
	var rep struct {
		Accel        string  `json:"accel"`
		SSHSeconds   float64 `json:"ssh_seconds"`
		ReadySeconds float64 `json:"ready_seconds"`
		HTTPSSeconds float64 `json:"https_seconds"`
		HTTPSStatus  int     `json:"https_status"`
		State        string  `json:"state"`
		OK           bool    `json:"ok"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.OK || rep.State != "ready" || rep.HTTPSStatus != 200 || rep.SSHSeconds == 0 {
		t.Fatalf("report %s: %v\n%s", out, err, errOut)
	}
	// The stand-in answered 503 twice before 200: ecs-image test must have
	// seen the 503, kept waiting, and reported 200 after the marker.
	i503, i200 := strings.Index(errOut, "answered HTTP 503, waiting for 200"), strings.Index(errOut, "HTTPS answered 200")
	if i503 < 0 || i200 < i503 || rep.HTTPSSeconds < rep.ReadySeconds {
		t.Errorf("want HTTP 503 then 200 after the ready marker (%.1fs), HTTPS 200 at %.1fs; log:\n%s", rep.ReadySeconds, rep.HTTPSSeconds, errOut)
	}
	t.Logf("base + stand-in agent (%s): SSH %.1fs, ready marker %.1fs, HTTPS 200 %.1fs", rep.Accel, rep.SSHSeconds, rep.ReadySeconds, rep.HTTPSSeconds)
}

// machineSelfSigned makes a self-signed ECDSA certificate for name.
func machineSelfSigned(t *testing.T, name string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}
