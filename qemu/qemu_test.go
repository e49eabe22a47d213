package qemu

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/qemuimg"

	"github.com/ecs-image/ecs-image/qemu/qemutest"
	"github.com/ecs-image/ecs-image/testenv"
)

func needQEMU(t *testing.T) {
	t.Helper()
	testenv.Tools(t, DefaultBinary, qemuimg.Binary)
}

// argValue returns the value after flag (the n-th occurrence).
func argValues(args []string, flag string) []string {
	var v []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			v = append(v, args[i+1])
		}
	}
	return v
}

func TestArgsTCGAndKVM(t *testing.T) {
	base := Config{
		Name: "build", Disk: "/c/disk.qcow2", CDROMs: []string{"/c/seed.iso", "/c/b,c.iso"},
		Memory: 2048, CPUs: 2,
		Forwards:  []Forward{{Guest: 22, Host: 40022}, {Guest: 443, Host: 40443}},
		SerialLog: "/run/serial.log", QMPSocket: "/run/qmp.sock",
		ExtraArgs: []string{"-no-reboot"},
	}
	for _, tc := range []struct {
		accel Accel
		cpu   string
	}{{AccelTCG, "max"}, {AccelKVM, "host"}} {
		c := base
		c.Accel = tc.accel
		a, err := c.Args()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string][]string{
			"-name":    {"build"},
			"-accel":   {string(tc.accel)},
			"-cpu":     {tc.cpu},
			"-m":       {"2048"},
			"-smp":     {"2"},
			"-display": {"none"},
			"-netdev":  {"user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40443-:443"},
			"-chardev": {"file,id=serial0,path=/run/serial.log"},
			"-serial":  {"chardev:serial0"},
			"-qmp":     {"unix:/run/qmp.sock,server=on,wait=off"},
			"-drive": {
				"file=/c/disk.qcow2,format=qcow2,if=virtio,cache=writeback,discard=unmap,detect-zeroes=unmap",
				"file=/c/seed.iso,format=raw,if=ide,index=0,media=cdrom,readonly=on",
				"file=/c/b,,c.iso,format=raw,if=ide,index=1,media=cdrom,readonly=on",
			},
		}
		for flag, w := range want {
			if got := argValues(a, flag); !slices.Equal(got, w) {
				t.Errorf("%s: %s = %q, want %q", tc.accel, flag, got, w)
			}
		}
		if !slices.Contains(argValues(a, "-device"), "virtio-net-pci,netdev=net0") {
			t.Errorf("no virtio-net device: %q", a)
		}
		if a[len(a)-1] != "-no-reboot" {
			t.Errorf("extra args not last: %q", a)
		}
		if slices.Contains(a, "-snapshot") {
			t.Errorf("-snapshot without Snapshot: %q", a)
		}
	}
}

func TestArgsOptions(t *testing.T) {
	c := Config{Disk: "/d.raw", DiskFormat: "raw", DiskCache: "unsafe", Snapshot: true, Accel: AccelTCG,
		Firmware: FirmwareUEFI, UEFIVars: "/run/vars.fd"}
	a, err := c.Args()
	if err != nil {
		t.Fatal(err)
	}
	drives := argValues(a, "-drive")
	want := []string{
		"if=pflash,format=raw,unit=0,readonly=on,file=" + DefaultUEFICode,
		"if=pflash,format=raw,unit=1,file=/run/vars.fd",
		"file=/d.raw,format=raw,if=virtio,cache=unsafe,discard=unmap,detect-zeroes=unmap",
	}
	if !slices.Equal(drives, want) {
		t.Errorf("drives = %q, want %q", drives, want)
	}
	if !slices.Contains(a, "-snapshot") {
		t.Error("no -snapshot")
	}
	if slices.Contains(a, "-kernel") {
		t.Error("-kernel without Kernel")
	}
	c.Kernel, c.Initrd, c.Append = "/k/vmlinuz", "/k/initrd.img", "root=/dev/vda1 console=ttyS0"
	a = mustArgs(t, c)
	if argValues(a, "-kernel")[0] != "/k/vmlinuz" || argValues(a, "-initrd")[0] != "/k/initrd.img" || argValues(a, "-append")[0] != "root=/dev/vda1 console=ttyS0" {
		t.Errorf("direct kernel boot: %q", a)
	}
	if got := argValues(a, "-m"); got[0] != "1024" {
		t.Errorf("default memory = %s", got[0])
	}
	if got := argValues(a, "-serial"); got[0] != "none" {
		t.Errorf("serial without log = %s", got[0])
	}
	if slices.Contains(a, "-qmp") {
		t.Error("-qmp without socket")
	}
}

// TestArgsDataDisks: data disks follow the boot disk read-write, in order,
// with commas in their paths escaped; one without a format is refused.
func TestArgsDataDisks(t *testing.T) {
	c := Config{Disk: "/d.qcow2", Accel: AccelTCG, DataDisks: []DataDisk{{"/v/ecs-data.raw", "raw"}, {"/v/a,b.qcow2", "qcow2"}}}
	drives := argValues(mustArgs(t, c), "-drive")
	want := []string{
		"file=/d.qcow2,format=qcow2,if=virtio,cache=writeback,discard=unmap,detect-zeroes=unmap",
		"file=/v/ecs-data.raw,format=raw,if=virtio,cache=writeback,discard=unmap",
		"file=/v/a,,b.qcow2,format=qcow2,if=virtio,cache=writeback,discard=unmap",
	}
	if !slices.Equal(drives[:3], want) {
		t.Errorf("drives = %q, want %q first", drives, want)
	}
	c.DataDisks = []DataDisk{{File: "/v/x.raw"}}
	if _, err := c.Args(); err == nil || !strings.Contains(err.Error(), "format") {
		t.Errorf("data disk without a format: %v", err)
	}
}

func TestArgsErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		c    Config
		want string
	}{
		"no disk":        {Config{Accel: AccelTCG}, "no disk"},
		"no accel":       {Config{Disk: "d"}, "no accelerator"},
		"bad accel":      {Config{Disk: "d", Accel: "hvf"}, `accelerator "hvf"`},
		"bad firmware":   {Config{Disk: "d", Accel: AccelTCG, Firmware: "coreboot"}, `firmware "coreboot"`},
		"unallocated":    {Config{Disk: "d", Accel: AccelTCG, Forwards: []Forward{{Guest: 22}}}, "no host port"},
		"bad guest port": {Config{Disk: "d", Accel: AccelTCG, Forwards: []Forward{{Guest: 70000, Host: 1}}}, "guest port 70000"},
		"twice":          {Config{Disk: "d", Accel: AccelTCG, Forwards: []Forward{{Guest: 22, Host: 1}, {Guest: 22, Host: 2}}}, "forwarded twice"},
		"uefi vars":      {Config{Disk: "d", Accel: AccelTCG, Firmware: FirmwareUEFI}, "variable store"},
		"bad cache":      {Config{Disk: "d", Accel: AccelTCG, DiskCache: "fast"}, `disk cache "fast"`},
		"initrd alone":   {Config{Disk: "d", Accel: AccelTCG, Initrd: "i"}, "without a kernel"},
	} {
		_, err := tc.c.Args()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
}

func TestChooseAccel(t *testing.T) {
	ok := func() error { return nil }
	broken := func() error { return errors.New("failed to set MSR") }
	called := false
	spy := func() error { called = true; return nil }
	for _, tc := range []struct {
		override string
		probe    func() error
		want     Accel
	}{
		{"", ok, AccelKVM},
		{"", broken, AccelTCG},
		{"tcg", ok, AccelTCG},
		{"KVM", broken, AccelKVM},
	} {
		if got, _ := chooseAccel(tc.override, tc.probe); got != tc.want {
			t.Errorf("override %q: got %s, want %s", tc.override, got, tc.want)
		}
	}
	if _, reason := chooseAccel("", broken); !strings.Contains(reason, "MSR") {
		t.Errorf("reason %q does not explain the probe failure", reason)
	}
	chooseAccel("tcg", spy)
	if called {
		t.Error("probe ran although the accelerator was forced")
	}
}

func TestProbeKVMDeviceMissing(t *testing.T) {
	old := KVMDevice
	KVMDevice = filepath.Join(t.TempDir(), "kvm")
	defer func() { KVMDevice = old }()
	if err := ProbeKVM(); err == nil || !strings.Contains(err.Error(), "open") {
		t.Errorf("err = %v", err)
	}
	// A regular file is not a KVM device: the ioctl must fail.
	os.WriteFile(KVMDevice, nil, 0o600)
	if err := ProbeKVM(); err == nil || !strings.Contains(err.Error(), "KVM_GET_API_VERSION") {
		t.Errorf("err = %v", err)
	}
}

func TestProbeFirmwareRuns(t *testing.T) {
	needQEMU(t)
	// The same probe under TCG proves the firmware really exits QEMU with
	// the expected status (so a KVM failure is KVM's, not the probe's).
	if err := probeQEMU(context.Background(), DefaultBinary, AccelTCG, "max"); err != nil {
		t.Fatal(err)
	}
	if err := probeQEMU(context.Background(), "/bin/false", AccelTCG, "max"); err == nil {
		t.Fatal("a failing binary passed the probe")
	}
}

func TestFreePortDistinctAndFree(t *testing.T) {
	seen := map[int]bool{}
	for range 20 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", itoa(p)))
		if err != nil {
			t.Fatalf("port %d not free: %v", p, err)
		}
		l.Close()
	}
	for p := range seen {
		releasePort(p)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestCleanLineAndTail(t *testing.T) {
	for in, want := range map[string]string{
		"\x1b[0;32m  OK  \x1b[0m] Started ssh.service\r": "  OK  ] Started ssh.service",
		"progress 10%\rprogress 100%\r\n":                "progress 100%",
		"ECS-APPLIANCE-READY\r":                          "ECS-APPLIANCE-READY",
		"\x1b]0;title\x07plain\x00":                      "plain",
	} {
		if got := cleanLine([]byte(in)); got != want {
			t.Errorf("cleanLine(%q) = %q, want %q", in, got, want)
		}
	}
	data := []byte("one\r\ntwo\r\n\r\nthree\r\nfour")
	if got := tailLines(data, 2); got != "three\nfour" {
		t.Errorf("tail 2 = %q", got)
	}
	if got := tailLines(data, 10); got != "one\ntwo\nthree\nfour" {
		t.Errorf("tail 10 = %q", got)
	}
	if got := tailLines(nil, 3); got != "" {
		t.Errorf("tail of nothing = %q", got)
	}
}

func TestOverlay(t *testing.T) {
	needQEMU(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	data := []byte(strings.Repeat("base-data!", 1000))
	if err := os.WriteFile(base, append(data, make([]byte, 4<<20-len(data))...), 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(base)

	out := filepath.Join(dir, "over.qcow2")
	if err := Overlay(ctx, "base.raw", "raw", out, 0); err == nil {
		t.Error("relative base from another directory accepted")
	}
	if err := Overlay(ctx, base, "raw", out, 16<<20); err != nil {
		t.Fatal(err)
	}
	info, err := qemuimg.ReadInfo(ctx, out, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.BackingFile != base || info.BackingFormat != "raw" || info.VirtualSize != 16<<20 {
		t.Errorf("overlay info = %+v", info)
	}
	// Reading the overlay shows the base's data; writing it leaves the base alone.
	raw := filepath.Join(dir, "flat.raw")
	if _, err := qemuimg.Run(ctx, "convert", "-f", "qcow2", "-O", "raw", out, raw); err != nil {
		t.Fatal(err)
	}
	flat, _ := os.ReadFile(raw)
	if !strings.HasPrefix(string(flat), string(data)) || len(flat) != 16<<20 {
		t.Errorf("overlay content: %d bytes, prefix ok=%v", len(flat), strings.HasPrefix(string(flat), string(data)))
	}
	if _, err := qemuimg.Run(ctx, "resize", "-f", "qcow2", out, "32M"); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(base)
	if string(before) != string(after) {
		t.Error("base modified")
	}

	// An overlay on an overlay (stage chains) detects the qcow2 parent.
	out2 := filepath.Join(dir, "over2.qcow2")
	if err := Overlay(ctx, out, "qcow2", out2, 0); err != nil {
		t.Fatal(err)
	}
	if info, _ := qemuimg.ReadInfo(ctx, out2, "qcow2"); info.BackingFormat != "qcow2" || info.VirtualSize != 32<<20 {
		t.Errorf("second overlay = %+v", info)
	}

	if err := Overlay(ctx, base, "raw", filepath.Join(dir, "small.qcow2"), 1<<20); err == nil || !strings.Contains(err.Error(), "shrink") {
		t.Errorf("shrinking overlay: err = %v", err)
	}
	if err := Overlay(ctx, filepath.Join(dir, "missing"), "qcow2", filepath.Join(dir, "x.qcow2"), 0); err == nil {
		t.Error("missing base accepted")
	}
	// Nothing half-written is left behind.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") || e.Name() == "small.qcow2" || e.Name() == "x.qcow2" {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

func startTest(t *testing.T, cfg Config) *Machine {
	t.Helper()
	needQEMU(t)
	if cfg.Accel == "" {
		cfg.Accel = AccelTCG
	}
	if cfg.Memory == 0 {
		cfg.Memory = 32
	}
	cfg.CPUs = 1
	m, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Kill(); <-m.Done() })
	return m
}

func TestMachineSerialForwardsKill(t *testing.T) {
	disk := bootDisk(t, "booting\r\nECS-TEST-BOOT-OK\r\n")
	m := startTest(t, Config{Disk: disk, DiskFormat: "raw", Forwards: []Forward{{Guest: 22}, {Guest: 443}}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.WaitSerial(ctx, "ECS-TEST-BOOT-OK"); err != nil {
		t.Fatal(err)
	}
	line, err := m.WaitSerialMatch(ctx, regexp.MustCompile(`^boot`))
	if err != nil || line != "booting" {
		t.Errorf("WaitSerialMatch = %q, %v", line, err)
	}
	if got := m.SerialTail(1); got != "ECS-TEST-BOOT-OK" {
		t.Errorf("SerialTail(1) = %q", got)
	}
	p22, p443 := m.HostPort(22), m.HostPort(443)
	if p22 == 0 || p443 == 0 || p22 == p443 || m.HostPort(80) != 0 {
		t.Fatalf("host ports 22→%d 443→%d 80→%d", p22, p443, m.HostPort(80))
	}
	// QEMU listens on the forwarded port.
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(p22)))
	if err != nil {
		t.Errorf("forwarded port: %v", err)
	} else {
		c.Close()
	}
	if _, err := m.QMP(ctx, "query-status", nil); err != nil {
		t.Error(err)
	}
	// A pattern that never comes times out with the tail in the error.
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	defer scancel()
	if err := m.WaitSerial(sctx, "NEVER"); err == nil || !strings.Contains(err.Error(), "ECS-TEST-BOOT-OK") {
		t.Errorf("timeout err = %v", err)
	}
	runDir := m.runDir
	m.Kill()
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Kill did not stop QEMU")
	}
	if !errors.Is(m.Err(), ErrKilled) {
		t.Errorf("Err = %v", m.Err())
	}
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Errorf("run dir %s left behind", runDir)
	}
	if got := m.SerialTail(1); got != "ECS-TEST-BOOT-OK" {
		t.Errorf("SerialTail after exit = %q", got)
	}
	if err := m.WaitSerial(ctx, "booting"); err != nil {
		t.Errorf("WaitSerial after exit on logged line: %v", err)
	}
}

func TestMachineExitFailsFast(t *testing.T) {
	disk := bootDisk(t, "kernel panic - not syncing: test\r\n")
	m := startTest(t, Config{Disk: disk, DiskFormat: "raw",
		ExtraArgs: qemutest.DebugExitArgs})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	err := m.WaitSerial(ctx, "login:")
	if err == nil {
		t.Fatal("WaitSerial succeeded")
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("took %s to notice the exit", time.Since(start))
	}
	var ee *ExitError
	if !errors.As(err, &ee) || !strings.Contains(err.Error(), "kernel panic - not syncing: test") || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("err = %v", err)
	}
	if !errors.As(m.Err(), &ee) {
		t.Errorf("Err = %v", m.Err())
	}
}

func TestStartCorruptDisk(t *testing.T) {
	needQEMU(t)
	disk := filepath.Join(t.TempDir(), "corrupt.qcow2")
	os.WriteFile(disk, []byte("QFI\xfbgarbage"), 0o644)
	start := time.Now()
	_, err := Start(context.Background(), Config{Disk: disk, Accel: AccelTCG, Memory: 32})
	var ee *ExitError
	if !errors.As(err, &ee) || !strings.Contains(ee.Output, "corrupt.qcow2") {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("took %s", time.Since(start))
	}
	if _, err := Start(context.Background(), Config{Disk: disk + ".missing", Accel: AccelTCG}); err == nil || !os.IsNotExist(errors.Unwrap(err)) {
		t.Errorf("missing disk: %v", err)
	}
}

func TestStartRetriesTakenPort(t *testing.T) {
	needQEMU(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	calls := 0
	freePort = func() (int, error) {
		calls++
		if calls == 1 {
			return takenPort, nil
		}
		return FreePort()
	}
	defer func() { freePort = FreePort }()
	m := startTest(t, Config{Disk: bootDisk(t, "x"), DiskFormat: "raw", Forwards: []Forward{{Guest: 22}}})
	if calls < 2 || m.HostPort(22) == takenPort || m.HostPort(22) == 0 {
		t.Errorf("calls=%d port=%d taken=%d", calls, m.HostPort(22), takenPort)
	}
}

func TestContextCancelKillsAndCleansUp(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := Start(ctx, Config{Disk: bootDisk(t, "x"), DiskFormat: "raw", Accel: AccelTCG, Memory: 32, Forwards: []Forward{{Guest: 22}}})
	if err != nil {
		t.Fatal(err)
	}
	pid := m.proc.cmd.Process.Pid
	port := m.HostPort(22)
	cancel()
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("cancel did not stop QEMU")
	}
	if !errors.Is(m.Err(), context.Canceled) {
		t.Errorf("Err = %v", m.Err())
	}
	if _, err := os.Stat(m.runDir); !os.IsNotExist(err) {
		t.Error("run dir left behind")
	}
	if _, err := os.Stat(filepath.Join("/proc", itoa(pid))); !os.IsNotExist(err) {
		t.Error("qemu process still exists")
	}
	portMu.Lock()
	held := handedOut[port]
	portMu.Unlock()
	if held {
		t.Error("port not released")
	}
}

func TestShutdownTimesOutOnDeafGuest(t *testing.T) {
	// The boot sector guest ignores the ACPI power button.
	m := startTest(t, Config{Disk: bootDisk(t, "x"), DiskFormat: "raw"})
	start := time.Now()
	err := m.Shutdown(context.Background(), 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "did not power off within 2s") {
		t.Errorf("err = %v", err)
	}
	if !m.Exited() {
		t.Error("QEMU still running")
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %s", d)
	}
	if err := m.Shutdown(context.Background(), time.Second); err == nil {
		t.Error("second Shutdown of a stopped machine reports no error")
	}
}

func TestStartUEFI(t *testing.T) {
	testenv.File(t, DefaultUEFIVars, "ovmf: make deps")
	m := startTest(t, Config{Disk: bootDisk(t, "x"), DiskFormat: "raw", Firmware: FirmwareUEFI, Memory: 256})
	if _, err := os.Stat(m.Config.UEFIVars); err != nil || !strings.HasPrefix(m.Config.UEFIVars, m.runDir) {
		t.Errorf("vars %s: %v", m.Config.UEFIVars, err)
	}
	if !slices.Contains(argValues(mustArgs(t, m.Config), "-drive"), "if=pflash,format=raw,unit=1,file="+m.Config.UEFIVars) {
		t.Error("no writable vars drive")
	}
	// OVMF (no CSM) runs and finds the virtio disk, which holds no EFI
	// loader, and says so on the serial console.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.WaitSerial(ctx, `BdsDxe: failed to load Boot0002 "UEFI Misc Device"`); err != nil {
		t.Error(err)
	}
}

func mustArgs(t *testing.T, c Config) []string {
	a, err := c.Args()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestRemoveStaleDirs(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, pids ...int) string {
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o700)
		if pids != nil {
			var s string
			for _, p := range pids {
				s += strconv.Itoa(p) + "\n"
			}
			os.WriteFile(filepath.Join(d, OwnerFile), []byte(s), 0o600)
		}
		return d
	}
	// A pid that surely does not exist: a child that has been reaped.
	cmd := exec.Command("true")
	cmd.Run()
	dead := cmd.Process.Pid
	stale := mk("ecs-qemu-stale", dead)
	live := mk("ecs-qemu-live", dead, os.Getpid())
	unknown := mk("ecs-qemu-unknown")
	other := mk("other-stale", dead)
	RemoveStaleDirs(filepath.Join(dir, "ecs-qemu-*"))
	for d, want := range map[string]bool{stale: false, live: true, unknown: true, other: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s: exists=%v, want %v", filepath.Base(d), err == nil, want)
		}
	}
}

func TestArgsSeedBuses(t *testing.T) {
	for _, tc := range []struct {
		machine, bus string
		want         []string // -drive and -device values after the system disk, in order
	}{
		{"", "", []string{"-drive", "file=/s.iso,format=raw,if=ide,index=0,media=cdrom,readonly=on"}},
		{MachineQ35, SeedSATA, []string{"-drive", "file=/s.iso,format=raw,if=ide,index=0,media=cdrom,readonly=on"}},
		{MachinePC, "", []string{"-drive", "file=/s.iso,format=raw,if=ide,index=0,media=cdrom,readonly=on"}},
		{MachinePC, SeedSATA, []string{"-device", "ahci,id=seedahci",
			"-drive", "file=/s.iso,format=raw,if=none,id=seed0,media=cdrom,readonly=on", "-device", "ide-cd,drive=seed0,bus=seedahci.0"}},
		{"", SeedSCSI, []string{"-device", "virtio-scsi-pci,id=seedscsi",
			"-drive", "file=/s.iso,format=raw,if=none,id=seed0,media=cdrom,readonly=on", "-device", "scsi-cd,drive=seed0,bus=seedscsi.0,scsi-id=0,lun=0"}},
		{MachinePC, SeedPVSCSI, []string{"-device", "pvscsi,id=seedscsi",
			"-drive", "file=/s.iso,format=raw,if=none,id=seed0,media=cdrom,readonly=on", "-device", "scsi-cd,drive=seed0,bus=seedscsi.0,scsi-id=0,lun=0"}},
		{"", SeedVirtio, []string{"-drive", "file=/s.iso,format=raw,if=virtio,readonly=on"}},
	} {
		c := Config{Disk: "/d.qcow2", Accel: AccelTCG, CDROMs: []string{"/s.iso"}, Machine: tc.machine, SeedBus: tc.bus}
		a := mustArgs(t, c)
		wantMachine := tc.machine
		if wantMachine == "" {
			wantMachine = MachineQ35
		}
		if got := argValues(a, "-machine"); !slices.Equal(got, []string{wantMachine}) {
			t.Errorf("%s/%s: -machine %q", tc.machine, tc.bus, got)
		}
		var got []string
		for i := 0; i+1 < len(a); i++ {
			fixed := strings.HasPrefix(a[i+1], "file=/d.qcow2,") || a[i+1] == "virtio-net-pci,netdev=net0" || a[i+1] == "virtio-rng-pci"
			if (a[i] == "-drive" || a[i] == "-device") && !fixed {
				got = append(got, a[i], a[i+1])
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s/%s:\n got %q\nwant %q", tc.machine, tc.bus, got, tc.want)
		}
	}
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Disk: "d", Accel: AccelTCG, SeedBus: SeedIDE}, "q35 machine has no IDE controller"},
		{Config{Disk: "d", Accel: AccelTCG, SeedBus: "usb"}, `seed bus "usb": want one of sata, ide, scsi, pvscsi, virtio`},
		{Config{Disk: "d", Accel: AccelTCG, Machine: "virt"}, `machine "virt"`},
	} {
		if _, err := tc.c.Args(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want %q", tc.c, err, tc.want)
		}
	}
}

// Every machine and seed bus is accepted by the real QEMU: a boot-sector
// guest with a seed attached prints its line and exits.
func TestStartSeedBuses(t *testing.T) {
	needQEMU(t)
	seed := filepath.Join(t.TempDir(), "seed.iso")
	if err := os.WriteFile(seed, make([]byte, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mc := range []struct{ machine, bus string }{
		{MachineQ35, SeedSATA}, {MachinePC, SeedIDE}, {MachinePC, SeedSATA}, {MachineQ35, SeedSCSI}, {MachineQ35, SeedPVSCSI}, {MachinePC, SeedVirtio},
	} {
		disk := bootDisk(t, "seed-bus-ok\r\n")
		m := startTest(t, Config{Disk: disk, DiskFormat: "raw", Machine: mc.machine, SeedBus: mc.bus, CDROMs: []string{seed},
			ExtraArgs: qemutest.DebugExitArgs})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := m.WaitSerial(ctx, "seed-bus-ok")
		cancel()
		if err != nil {
			t.Errorf("%s/%s: %v", mc.machine, mc.bus, err)
		}
	}
}

// TestDetach: a detachable machine, once detached, survives the end of
// the context that would otherwise kill it (--on-error=abort keeps a
// build VM that way); a machine not started detachable refuses.
func TestDetach(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	plain, err := Start(ctx, Config{Disk: bootDisk(t, "x"), DiskFormat: "raw", Accel: AccelTCG, Memory: 32})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Detach(); err == nil {
		t.Error("Detach of a machine not started detachable")
	}
	m, err := Start(ctx, Config{Disk: bootDisk(t, "y"), DiskFormat: "raw", Accel: AccelTCG, Memory: 32, Detachable: true, Forwards: []Forward{{Guest: 22}}})
	if err != nil {
		t.Fatal(err)
	}
	pid, err := m.Detach()
	if err != nil || pid != m.proc.cmd.Process.Pid {
		t.Fatalf("Detach = %d, %v", pid, err)
	}
	t.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGKILL)
		os.RemoveAll(m.RunDir())
	})
	cancel()
	<-plain.Done()
	time.Sleep(500 * time.Millisecond)
	if m.Exited() {
		t.Fatalf("the detached QEMU exited: %v", m.Err())
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the detached QEMU is gone: %v", err)
	}
	if _, err := os.Stat(m.RunDir()); err != nil {
		t.Errorf("run directory: %v", err)
	}
}

// crashingQEMU writes a QEMU wrapper that runs the real QEMU and, on its
// first n starts, dies of SIGSEGV a second after QEMU is up (as QEMU does
// on a rare TCG bug).
func crashingQEMU(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "qemu-crashing")
	script := `#!/bin/sh
c=$(cat "` + dir + `/count" 2>/dev/null || echo 0)
echo $((c + 1)) > "` + dir + `/count"
if [ "$c" -ge ` + itoa(n) + ` ]; then exec qemu-system-x86_64 "$@"; fi
qemu-system-x86_64 "$@" & pid=$!
sleep 1
kill -KILL $pid
echo "crashing on purpose" >&2
kill -SEGV $$
`
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCrashRestartsOnce: QEMU dying of a crash signal mid-boot is restarted
// once on the same disks; a second crash is the machine's exit error.
func TestCrashRestartsOnce(t *testing.T) {
	disk := bootDisk(t, "booting\r\nECS-TEST-BOOT-OK\r\n")
	m := startTest(t, Config{Disk: disk, DiskFormat: "raw", Binary: crashingQEMU(t, 1)})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.WaitSerial(ctx, "qemu crashed"); err != nil {
		t.Fatalf("no restart note in the serial log: %v", err)
	}
	// The guest printed its lines again after the note: the restarted
	// QEMU runs it.
	for !strings.HasSuffix(m.SerialTail(4), "qemu crashed (signal: segmentation fault); restarting it ---\nbooting\nECS-TEST-BOOT-OK") {
		if ctx.Err() != nil || m.Exited() {
			t.Fatalf("no boot after the restart; serial tail:\n%s\nerr %v", m.SerialTail(6), m.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if m.Exited() {
		t.Fatalf("exited: %v", m.Err())
	}

	m2 := startTest(t, Config{Disk: bootDisk(t, "x\r\n"), DiskFormat: "raw", Binary: crashingQEMU(t, 2)})
	select {
	case <-m2.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("a machine crashing twice is still running")
	}
	var ee *ExitError
	if !errors.As(m2.Err(), &ee) || !strings.Contains(m2.Err().Error(), "segmentation fault") || !strings.Contains(ee.Output, "crashing on purpose") {
		t.Errorf("Err = %v", m2.Err())
	}
}

func TestQEMUCrashed(t *testing.T) {
	for _, c := range []struct {
		script string
		want   bool
	}{
		{"kill -SEGV $$", true},
		{"kill -ABRT $$", true},
		{"kill -KILL $$", false},
		{"kill -TERM $$", false},
		{"exit 1", false},
		{"exit 0", false},
	} {
		err := exec.Command("sh", "-c", c.script).Run()
		if got := qemuCrashed(err); got != c.want {
			t.Errorf("%s: qemuCrashed(%v) = %v", c.script, err, got)
		}
	}
}
