package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Accel is a QEMU accelerator.
type Accel string

// Accelerators ecs-image uses.
const (
	AccelKVM Accel = "kvm" // hardware virtualisation through /dev/kvm
	AccelTCG Accel = "tcg" // software emulation (slow, works everywhere)
)

// AccelEnv overrides the detection: ECS_IMAGE_ACCEL=tcg forces software
// emulation, ECS_IMAGE_ACCEL=kvm forces KVM (QEMU then fails if it does not work).
const AccelEnv = "ECS_IMAGE_ACCEL"

// KVMDevice is the device the KVM probe opens.
var KVMDevice = "/dev/kvm"

var (
	tcgWarning sync.Once
	probeOnce  sync.Once
	probeErr   error
)

// DetectAccel returns AccelKVM when KVM really works on this host, else
// AccelTCG, logging why once per process. It does not trust the device
// node: the probe (run once per process) creates a VM through the KVM API
// and then boots a probe firmware under `qemu-system-x86_64 -accel kvm
// -cpu host` that must reach 64-bit long mode with paging on and exit with
// the code it computes there. (Some sandboxes let KVM_CREATE_VM succeed
// while QEMU aborts setting up a vCPU; some hosts run real mode under KVM
// and hang every kernel as it leaves it.) A guest that later stalls under
// KVM anyway (Start's watchdog) turns KVM off for the rest of the process.
func DetectAccel(ctx context.Context) Accel {
	a, reason := chooseAccel(os.Getenv(AccelEnv), func() error {
		probeOnce.Do(func() {
			start := time.Now()
			probeErr = kvmProbe(ctx)
			logrus.Infof("KVM probe (a guest reaching 64-bit long mode with paging under %s -accel kvm -cpu host): %s in %s",
				SystemBinary(), errOr(probeErr, "works"), time.Since(start).Round(time.Millisecond))
		})
		if probeErr != nil {
			return probeErr
		}
		if r := kvmStalled(); r != "" {
			return errors.New(r)
		}
		return nil
	})
	switch {
	case a == AccelTCG && reason == AccelEnv+"=tcg":
		tcgWarning.Do(func() {
			logrus.Infof("using TCG software emulation as %s=tcg asks (KVM not probed); boots will be slow", AccelEnv)
		})
	case a == AccelTCG:
		warnTCG(reason)
	}
	return a
}

// kvmProbe proves KVM works; tests replace it with a double.
var kvmProbe = func(ctx context.Context) error {
	if err := ProbeKVM(); err != nil {
		return err
	}
	return ProbeKVMQEMU(ctx, SystemBinary())
}

func errOr(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

// warnTCG logs, once per process, why TCG was chosen.
func warnTCG(reason string) {
	tcgWarning.Do(func() {
		logrus.Warnf("KVM is not usable (%s): using TCG software emulation, boots will be slow; set %s=tcg to skip the check, %s=kvm to insist on KVM", reason, AccelEnv, AccelEnv)
	})
}

var (
	stallMu     sync.Mutex
	stallReason string
)

// markKVMStalled records that a guest hung under KVM: later machines of
// this process start under TCG. It warns once.
func markKVMStalled(reason string) {
	stallMu.Lock()
	first := stallReason == ""
	if first {
		stallReason = reason
	}
	stallMu.Unlock()
	if first {
		warnTCG(reason)
	}
}

// Effective is the accelerator a machine asked for runs under: TCG for
// KVM once a guest stalled under KVM in this process (unless forced).
func Effective(a Accel) Accel {
	if a == AccelKVM && kvmStalled() != "" {
		return AccelTCG
	}
	return a
}

// kvmStalled is the reason a guest hung under KVM in this process, or "".
func kvmStalled() string {
	stallMu.Lock()
	defer stallMu.Unlock()
	return stallReason
}

// chooseAccel picks the accelerator from the override value and the probe;
// reason explains a TCG choice.
func chooseAccel(override string, probe func() error) (Accel, string) {
	switch strings.ToLower(strings.TrimSpace(override)) {
	case "kvm":
		return AccelKVM, ""
	case "tcg":
		return AccelTCG, AccelEnv + "=tcg"
	}
	if err := probe(); err != nil {
		return AccelTCG, err.Error()
	}
	return AccelKVM, ""
}

// KVM ioctl numbers (linux/kvm.h: _IO(0xAE, n)).
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmAPIVersion    = 12
)

// ProbeKVM checks that the KVM API works: /dev/kvm opens read-write, reports the
// stable API version and lets this process create a VM.
func ProbeKVM() error {
	fd, err := unix.Open(KVMDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", KVMDevice, err)
	}
	defer unix.Close(fd)
	v, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmGetAPIVersion, 0)
	if errno != 0 {
		return fmt.Errorf("KVM_GET_API_VERSION on %s: %w", KVMDevice, errno)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("%s: KVM API version %d, want %d", KVMDevice, v, kvmAPIVersion)
	}
	vm, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmCreateVM, 0)
	if errno != 0 {
		return fmt.Errorf("KVM_CREATE_VM on %s: %w", KVMDevice, errno)
	}
	unix.Close(int(vm))
	return nil
}

// probeExit is the value the probe firmware writes to the isa-debug-exit
// port; QEMU then exits with status probeExit<<1 | 1.
const probeExit = 0x2a

// probeFirmware is a 64 KiB BIOS image that proves what a Linux kernel
// needs of the accelerator, not just that real mode runs: some hosts pass
// a real-mode probe and then hang every kernel as it leaves real mode. From
// the reset vector (F000:FFF0) it builds identity-mapped page tables in
// RAM, enables PAE, EFER.LME and paging, far-jumps into a 64-bit code
// segment and there computes the exit value with 64-bit instructions
// through a store and load in paged memory. Only a guest that reached
// long mode with paging on writes probeExit to the isa-debug-exit port:
// executed in any other mode the 64-bit code computes another value.
func probeFirmware() []byte {
	const (
		base  = 0xF0000 // where the last 64 KiB of the BIOS appear
		gdt   = 0x80    // image offsets
		gdtr  = gdt + 24
		entry = 0xA0
	)
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = 0xF4 // hlt
	}
	le16 := func(v uint32) []byte { return []byte{byte(v), byte(v >> 8)} }
	le32 := func(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	// 16-bit real mode, CS = F000 after the reset vector's far jump.
	real := cat(
		[]byte{0xFA},               // cli
		[]byte{0x31, 0xC0},         // xor ax, ax
		[]byte{0x8E, 0xD8},         // mov ds, ax
		[]byte{0x8E, 0xC0},         // mov es, ax
		[]byte{0xFC},               // cld
		[]byte{0xBF}, le16(0x1000), // mov di, 0x1000
		[]byte{0xB9}, le16(0x1800), // mov cx, 0x1800 (3 pages of words)
		[]byte{0xF3, 0xAB}, // rep stosw: zero PML4, PDPT, PD
		// PML4[0] → PDPT, PDPT[0] → PD, PD[0] = 2 MiB page at 0.
		[]byte{0x66, 0xC7, 0x06}, le16(0x1000), le32(0x2003),
		[]byte{0x66, 0xC7, 0x06}, le16(0x2000), le32(0x3003),
		[]byte{0x66, 0xC7, 0x06}, le16(0x3000), le32(0x83),
		[]byte{0x66, 0xB8}, le32(0x1000), // mov eax, 0x1000
		[]byte{0x0F, 0x22, 0xD8},             // mov cr3, eax
		[]byte{0x0F, 0x20, 0xE0},             // mov eax, cr4
		[]byte{0x66, 0x83, 0xC8, 0x20},       // or eax, 0x20 (PAE)
		[]byte{0x0F, 0x22, 0xE0},             // mov cr4, eax
		[]byte{0x66, 0xB9}, le32(0xC0000080), // mov ecx, EFER
		[]byte{0x0F, 0x32},              // rdmsr
		[]byte{0x66, 0x0D}, le32(0x100), // or eax, LME
		[]byte{0x0F, 0x30},                               // wrmsr
		[]byte{0x2E, 0x66, 0x0F, 0x01, 0x16}, le16(gdtr), // lgdt cs:[gdtr]
		[]byte{0x0F, 0x20, 0xC0},             // mov eax, cr0
		[]byte{0x66, 0x0D}, le32(0x80000001), // or eax, PG|PE
		[]byte{0x0F, 0x22, 0xC0},                         // mov cr0, eax
		[]byte{0x66, 0xEA}, le32(base+entry), le16(0x08), // jmp 0x08:entry (64-bit)
	)
	copy(b, real)
	// GDT: null, 64-bit code (L=1), data; then its descriptor.
	copy(b[gdt:], cat(
		make([]byte, 8),
		[]byte{0, 0, 0, 0, 0, 0x9A, 0x20, 0},
		[]byte{0, 0, 0, 0, 0, 0x92, 0, 0},
		le16(23), le32(base+gdt),
	))
	// 64-bit long mode.
	copy(b[entry:], cat(
		[]byte{0x48, 0xB8}, le32(0), le32(probeExit), // mov rax, probeExit<<32
		[]byte{0x48, 0xC1, 0xE8, 0x20},         // shr rax, 32
		[]byte{0x88, 0x04, 0x25}, le32(0x5000), // mov [0x5000], al
		[]byte{0x31, 0xC0},                     // xor eax, eax
		[]byte{0x8A, 0x04, 0x25}, le32(0x5000), // mov al, [0x5000]
		[]byte{0xE6, 0xF4}, // out 0xf4, al
		[]byte{0xF4},       // hlt
	))
	if len(real) > gdt {
		panic("probe firmware: real-mode code overlaps the GDT")
	}
	// Reset vector: jmp F000:0000.
	copy(b[0xFFF0:], []byte{0xEA, 0x00, 0x00, 0x00, 0xF0})
	return b
}

// probeTimeout bounds a probe run: where KVM works it takes well under a
// second; where it hangs guests, this is what the probe costs.
var probeTimeout = 8 * time.Second

// ProbeKVMQEMU runs a tiny VM under `binary -accel kvm -cpu host` (the CPU
// model the VMs use) and checks that it reached 64-bit long mode with
// paging: QEMU must exit with the status the probe firmware sets there,
// within probeTimeout.
func ProbeKVMQEMU(ctx context.Context, binary string) error {
	return probeQEMU(ctx, binary, AccelKVM, "host")
}

func probeQEMU(ctx context.Context, binary string, accel Accel, cpu string) error {
	dir, err := os.MkdirTemp("", "ecs-kvm-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fw := filepath.Join(dir, "probe.bin")
	if err := os.WriteFile(fw, probeFirmware(), 0o600); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "-accel", string(accel), "-cpu", cpu, "-machine", "q35",
		"-m", "16", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "none", "-no-reboot",
		"-bios", fw, "-device", "isa-debug-exit,iobase=0xf4,iosize=4")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == probeExit<<1|1 {
		return nil
	}
	msg := strings.TrimSpace(string(out))
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if err == nil {
		err = errors.New("exited 0")
	}
	if msg != "" {
		return fmt.Errorf("%s -accel %s: %v: %s", binary, accel, err, msg)
	}
	return fmt.Errorf("%s -accel %s: %v", binary, accel, err)
}
