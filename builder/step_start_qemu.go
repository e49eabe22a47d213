package builder

import (
	"context"
	"path/filepath"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/ecs-image/ecs-image/qemu"
)

var timeNow = time.Now

// stepStartQEMU boots the stage's disk with its seed: KVM when it really
// works, else TCG (qemu.DetectAccel warns); the serial console goes to a
// log file in the stage's work directory; QMP controls the VM. Cleanup
// kills a VM that is still running (failure, Ctrl-C).
type stepStartQEMU struct {
	// Stage holds the disk, seed and kernel and receives the machine.
	Stage        *stageRun
	Memory, CPUs int    // the template's memory (MiB) and cpus
	Firmware     string // qemu.FirmwareBIOS or qemu.FirmwareUEFI (the base's)
	Accel        qemu.Accel
	// AccelForced: the template or --accel asked for KVM (no TCG fallback).
	AccelForced bool
	// Detachable: --on-error=abort|ask may keep the VM running after
	// ecs-image exits.
	Detachable bool
	Log        logrus.FieldLogger
}

// startQEMUStep is the stage's stepStartQEMU from the template and base.
func (b *buildState) startQEMUStep(sr *stageRun) *stepStartQEMU {
	fw := qemu.FirmwareBIOS
	if b.base.Firmware == "uefi" {
		fw = qemu.FirmwareUEFI
	}
	return &stepStartQEMU{Stage: sr, Memory: b.tmpl.Memory, CPUs: b.tmpl.CPUs, Firmware: fw, Accel: b.accel, AccelForced: b.accelForced,
		Detachable: b.keepable(), Log: b.log}
}

func (s *stepStartQEMU) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	cfg := qemu.Config{
		Name:       "ecs-build-" + sr.stage.Name,
		Disk:       sr.disk,
		DiskFormat: "qcow2",
		// The VM is thrown away unless it shuts down cleanly: guest
		// flushes need not reach the host's disk.
		DiskCache: "unsafe",
		// The seed as a read-only virtio disk: every kernel that boots
		// from the virtio system disk reads it (cloud-init's NoCloud finds
		// the cidata label on any block device), whatever CD-ROM
		// controllers it has drivers for (Debian's cloud kernel has no AHCI).
		CDROMs:      []string{sr.seed},
		SeedBus:     qemu.SeedVirtio,
		Memory:      s.Memory,
		CPUs:        s.CPUs,
		Firmware:    s.Firmware,
		Accel:       s.Accel,
		AccelForced: s.AccelForced,
		Forwards:    []qemu.Forward{{Guest: 22}},
		SerialLog:   filepath.Join(sr.dir, "serial.log"),
		Detachable:  s.Detachable,
	}
	if sr.kernel != nil {
		// No firmware boot loader, no VGA: the serial console only. The
		// slim initrd (ecs-image as the initramfs's init: three drivers,
		// mount, switch to the root's init) instead of the image's own
		// when it can be made.
		cfg.Kernel, cfg.Initrd = sr.kernel.kernel(), sr.kernel.initrd()
		cfg.Append = buildAppend(sr.kernel.cmdline(), sr.kernel.root())
		cfg.ExtraArgs = []string{"-vga", "none"}
		if helper, err := helperBinary(); err != nil {
			s.Log.Debugf("the image's own initrd: %v", err)
		} else if err := writeSlimInitrd(filepath.Join(sr.dir, "boot-initrd.img"), sr.kernel.initrd(), helper, false, bootModules...); err != nil {
			s.Log.Debugf("the image's own initrd: %v", err)
		} else {
			cfg.Initrd = filepath.Join(sr.dir, "boot-initrd.img")
			cfg.Append = "rdinit=/" + offlinehelper.Name + " ecs.boot=switch " + cfg.Append
		}
	}
	m, err := qemu.Start(ctx, cfg)
	if err != nil {
		return halt(state, err)
	}
	sr.machine = m
	s.Log.Infof("qemu started (%s, %d MiB, %d CPUs), ssh on 127.0.0.1:%d, serial log %s", m.Accel(), cfg.Memory, cfg.CPUs, m.HostPort(22), cfg.SerialLog)
	return multistep.ActionContinue
}

func (s *stepStartQEMU) Cleanup(state multistep.StateBag) {
	sr := s.Stage
	if sr.client != nil {
		sr.client.Close()
		sr.client = nil
	}
	if sr.machine != nil && !sr.machine.Exited() {
		sr.machine.Kill()
		<-sr.machine.Done()
	}
}
