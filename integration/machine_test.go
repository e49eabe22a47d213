//go:build integration

package integration

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/qemu"
	"github.com/ecs-image/ecs-image/qemu/qemutest"
)

// machineSeed writes a NoCloud seed creating user "builder" with password-less
// sudo and key's public half in its authorized_keys.
func machineSeed(t *testing.T, dir string, key *communicator.Key) string {
	t.Helper()
	seed := filepath.Join(dir, "seed.iso")
	ud := "#cloud-config\nusers:\n  - name: builder\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    shell: /bin/bash\n    lock_passwd: true\n    ssh_authorized_keys:\n      - \"" + key.AuthorizedKey + "\"\n"
	if err := cidata.Write(seed, cidata.Options{UserData: []byte(ud), Raw: true, Hostname: "machine-it"}); err != nil {
		t.Fatal(err)
	}
	return seed
}

// TestMachineBootSSH boots the local Debian base on a qcow2 overlay with a
// cidata seed, waits for SSH with an ephemeral ed25519 key, runs commands,
// moves files both ways and powers the guest off through ACPI.
func TestMachineBootSSH(t *testing.T) {
	base := baseImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	if err := qemu.Overlay(ctx, base, disk, 6<<30); err != nil {
		t.Fatal(err)
	}
	key, err := communicator.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	seed := machineSeed(t, dir, key)
	baseSum := machineDigest(t, base)

	m, err := qemu.Start(ctx, qemu.Config{
		Name: "machine-it", Disk: disk, CDROMs: []string{seed}, Memory: 1024, CPUs: 2,
		Forwards: []qemu.Forward{{Guest: 22}}, SerialLog: filepath.Join(dir, "serial.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { m.Kill(); <-m.Done() }()
	addr := "127.0.0.1:" + strconv.Itoa(m.HostPort(22))
	c, err := communicator.Dial(ctx, addr, "builder", key.Signer, 12*time.Minute, m.Done())
	if err != nil {
		t.Fatalf("%v\n%v\nserial:\n%s", err, m.Err(), m.SerialTail(40))
	}
	defer c.Close()
	t.Logf("boot to SSH: %s (accel %s)", time.Since(m.Started).Round(100*time.Millisecond), m.Config.Accel)

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
func TestMachineTestCommandBareBase(t *testing.T) {
	base := baseImage(t)
	out, errOut, err := ecsImageRun("test", base, "--no-https", "--json", "--memory", "1024", "--timeout", "12m")
	if err != nil {
		t.Fatalf("ecs-image test: %v\n%s\n%s", err, out, errOut)
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
	t.Logf("bare base (%s): SSH banner after %.1fs, cloud-init done after %.1fs", rep.Accel, rep.SSHSeconds, rep.ReadySeconds)
}

// machineDigest is the SHA-256 of a file.
func machineDigest(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}
