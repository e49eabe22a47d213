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
// AccelTCG, logging a warning once per process. It does not trust the
// device node: the probe (run once per process) creates a VM through the
// KVM API and then boots a 5-instruction firmware under
// `qemu-system-x86_64 -accel kvm -cpu host`, which must exit with the code
// the firmware sets. (Some sandboxes let KVM_CREATE_VM succeed while QEMU
// aborts setting up a vCPU.)
func DetectAccel(ctx context.Context) Accel {
	a, reason := chooseAccel(os.Getenv(AccelEnv), func() error {
		probeOnce.Do(func() {
			probeErr = ProbeKVM()
			if probeErr == nil {
				probeErr = ProbeKVMQEMU(ctx, DefaultBinary)
			}
		})
		return probeErr
	})
	if a == AccelTCG {
		tcgWarning.Do(func() {
			logrus.Warnf("KVM is not usable (%s): using TCG software emulation, boots will be slow", reason)
		})
	}
	return a
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

// probeFirmware is a 64 KiB BIOS image whose reset vector (F000:FFF0)
// runs: mov al, 0x2a; out 0xf4, al; hlt.
func probeFirmware() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = 0xF4 // hlt
	}
	copy(b[0xFFF0:], []byte{0xB0, probeExit, 0xE6, 0xF4, 0xF4})
	return b
}

// ProbeKVMQEMU runs a tiny VM under `binary -accel kvm -cpu host` and checks
// that its guest code ran: QEMU must exit with the status the probe
// firmware asks for, within 20 seconds.
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
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "-accel", string(accel), "-cpu", cpu, "-machine", "q35",
		"-m", "16", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "none",
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
