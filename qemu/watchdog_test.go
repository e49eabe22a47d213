package qemu

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/ecs-image/ecs-image/qemu/qemutest"
)

// lyingKVM sets up a host whose KVM passes the probe and hangs guests: a
// probe double that passes, the qemutest.LyingKVM wrapper as the QEMU
// binary, a short stall timeout and a fresh per-process state.
func lyingKVM(t *testing.T) (binary string, logs *logtest.Hook) {
	t.Helper()
	needQEMU(t)
	bin, err := qemutest.LyingKVM(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	oldProbe, oldStall := kvmProbe, KVMStallTimeout
	kvmProbe = func(context.Context) error { return probeQEMU(context.Background(), bin, AccelKVM, "host") }
	KVMStallTimeout = 3 * time.Second
	reset := func() {
		probeOnce, tcgWarning = sync.Once{}, sync.Once{}
		probeErr = nil
		stallMu.Lock()
		stallReason = ""
		stallMu.Unlock()
	}
	reset()
	t.Setenv(AccelEnv, "")
	logs = logtest.NewLocal(logrus.StandardLogger())
	t.Cleanup(func() {
		kvmProbe, KVMStallTimeout = oldProbe, oldStall
		logrus.StandardLogger().ReplaceHooks(make(logrus.LevelHooks))
		reset()
	})
	return bin, logs
}

func TestLyingKVMPassesTheProbeDouble(t *testing.T) {
	lyingKVM(t)
	if a := DetectAccel(context.Background()); a != AccelKVM {
		t.Fatalf("the lying wrapper should pass the probe, got %s", a)
	}
}

// A guest that prints nothing under KVM is restarted under TCG, says why
// once, and the machines after it start under TCG.
func TestKVMWatchdogRestartsUnderTCG(t *testing.T) {
	bin, logs := lyingKVM(t)
	disk := bootDisk(t, "ECS-TEST-BOOT-OK\r\n")
	m := startTest(t, Config{Disk: disk, DiskFormat: "raw", Binary: bin, Accel: DetectAccel(context.Background()), Forwards: []Forward{{Guest: 22}}})
	if m.Config.Accel != AccelKVM {
		t.Fatalf("started under %s, want kvm", m.Config.Accel)
	}
	port := m.HostPort(22)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.WaitSerial(ctx, "ECS-TEST-BOOT-OK"); err != nil {
		t.Fatal(err)
	}
	if m.Config.Accel != AccelTCG {
		t.Errorf("accel after the restart = %s, want tcg", m.Config.Accel)
	}
	if m.HostPort(22) != port {
		t.Errorf("forwarded port changed across the restart: %d → %d", port, m.HostPort(22))
	}
	if _, err := m.QMP(ctx, "query-status", nil); err != nil {
		t.Errorf("QMP after the restart: %v", err)
	}
	if !strings.Contains(m.SerialTail(5), "restarting under TCG") {
		t.Errorf("serial log does not say it restarted:\n%s", m.SerialTail(5))
	}
	var warned []string
	for _, e := range logs.AllEntries() {
		if e.Level == logrus.WarnLevel {
			warned = append(warned, e.Message)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "KVM") || !strings.Contains(warned[0], AccelEnv) || !strings.Contains(warned[0], "printed nothing") {
		t.Errorf("want one warning naming the stall and %s, got %q", AccelEnv, warned)
	}
	if a := DetectAccel(ctx); a != AccelTCG {
		t.Errorf("DetectAccel after a stall = %s, want tcg", a)
	}
	// A later machine asked to run under KVM starts under TCG at once.
	m2 := startTest(t, Config{Disk: bootDisk(t, "SECOND\r\n"), DiskFormat: "raw", Binary: bin, Accel: AccelKVM})
	if m2.Config.Accel != AccelTCG {
		t.Errorf("second machine accel = %s, want tcg", m2.Config.Accel)
	}
	if err := m2.WaitSerial(ctx, "SECOND"); err != nil {
		t.Error(err)
	}
	if n := len(logs.AllEntries()); n == 0 {
		t.Error("no log")
	}
	for _, e := range logs.AllEntries()[len(warned):] {
		if e.Level == logrus.WarnLevel && e.Message != warned[0] {
			t.Errorf("a second warning: %s", e.Message)
		}
	}
}

// KVM asked for explicitly (a template's accel: kvm) is never replaced.
func TestKVMWatchdogRespectsForcedKVM(t *testing.T) {
	bin, _ := lyingKVM(t)
	m := startTest(t, Config{Disk: bootDisk(t, "NEVER-UNDER-LYING-KVM\r\n"), DiskFormat: "raw", Binary: bin, Accel: AccelKVM, AccelForced: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*KVMStallTimeout)
	defer cancel()
	if err := m.WaitSerial(ctx, "NEVER-UNDER-LYING-KVM"); err == nil {
		t.Fatal("a forced KVM guest was restarted under TCG")
	}
	if m.Config.Accel != AccelKVM || kvmStalled() != "" {
		t.Errorf("accel %s, stall %q", m.Config.Accel, kvmStalled())
	}
}

// The probe firmware needs long mode: a CPU without it fails the probe.
func TestProbeFirmwareNeedsLongMode(t *testing.T) {
	needQEMU(t)
	err := probeQEMU(context.Background(), DefaultBinary, AccelTCG, "qemu32")
	if err == nil {
		t.Fatal("a CPU without long mode passed the probe")
	}
	if !strings.Contains(err.Error(), "exited 0") {
		t.Errorf("err = %v, want the triple fault's reset to end QEMU (-no-reboot)", err)
	}
}

// ECS_IMAGE_ACCEL=tcg is a choice, not a failure: the log says so once and
// does not claim KVM is unusable.
func TestAccelTCGByRequestIsNotAWarning(t *testing.T) {
	probeOnce, tcgWarning = sync.Once{}, sync.Once{}
	t.Cleanup(func() { probeOnce, tcgWarning = sync.Once{}, sync.Once{} })
	t.Setenv(AccelEnv, "tcg")
	logs := logtest.NewLocal(logrus.StandardLogger())
	t.Cleanup(func() { logrus.StandardLogger().ReplaceHooks(make(logrus.LevelHooks)) })
	for i := 0; i < 2; i++ {
		if a := DetectAccel(context.Background()); a != AccelTCG {
			t.Fatalf("accel = %s, want tcg", a)
		}
	}
	if n := len(logs.AllEntries()); n != 1 {
		t.Fatalf("%d log lines, want 1: %v", n, logs.AllEntries())
	}
	e := logs.LastEntry()
	if e.Level != logrus.InfoLevel || !strings.Contains(e.Message, AccelEnv+"=tcg asks") || strings.Contains(e.Message, "not usable") {
		t.Errorf("log = %s %q", e.Level, e.Message)
	}
}

// QEMU failing under KVM before the guest shows life (an error as it
// starts, or an abort a moment later: KVM errors end QEMU so) is the host's
// KVM not working: the machine runs under TCG instead, and so do later ones.
func TestKVMFailureFallsBackToTCG(t *testing.T) {
	for _, mode := range []string{"start", "abort"} {
		t.Run(mode, func(t *testing.T) {
			bin, logs := lyingKVM(t)
			t.Setenv("LYING_KVM_FAIL", mode)
			KVMStallTimeout = time.Minute // the failure, not the watchdog, must do it
			m := startTest(t, Config{Disk: bootDisk(t, "ECS-AFTER-KVM-FAILED\r\n"), DiskFormat: "raw", Binary: bin, Accel: DetectAccel(context.Background())})
			ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
			defer cancel()
			if err := m.WaitSerial(ctx, "ECS-AFTER-KVM-FAILED"); err != nil {
				t.Fatalf("%v\n%s", err, m.SerialTail(10))
			}
			if m.Accel() != AccelTCG {
				t.Errorf("accel = %s, want tcg", m.Accel())
			}
			var warned []string
			for _, e := range logs.AllEntries() {
				if e.Level == logrus.WarnLevel {
					warned = append(warned, e.Message)
				}
			}
			if len(warned) != 1 || !strings.Contains(warned[0], "qemu exited under KVM") {
				t.Errorf("want one warning saying QEMU exited under KVM, got %q", warned)
			}
			if mode == "abort" && !strings.Contains(warned[0], "hardware error") {
				t.Errorf("the warning does not quote QEMU's output: %q", warned[0])
			}
			if a := DetectAccel(ctx); a != AccelTCG {
				t.Errorf("DetectAccel after the failure = %s, want tcg", a)
			}
		})
	}
}
