package builder

import (
	"context"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/formats"
)

// stepDriverCheck fails the build before any output is written when the
// image's kernel lacks a driver that a hypervisor of one of the requested
// formats needs for the boot disk or the seed CD-ROM (formats' hypervisor
// table), e.g. Debian's cloud kernel (no AHCI) for qcow2 on libvirt q35.
type stepDriverCheck struct {
	// Kernel is the image kernel's drivers, from the generalisation (nil:
	// unknown); Outputs the plan's formats.
	Kernel  *KernelInfo
	Outputs []string
	Log     logrus.FieldLogger
}

// driverCheckStep checks the generalised image's kernel against the plan's
// outputs.
func (b *buildState) driverCheckStep() *stepDriverCheck {
	return &stepDriverCheck{Kernel: b.kernel, Outputs: b.plan.Outputs, Log: b.log}
}

func (s *stepDriverCheck) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if s.Kernel == nil {
		s.Log.Warnf("driver check skipped: the image kernel's drivers are unknown")
		return multistep.ActionContinue
	}
	if !s.Kernel.covers(formats.AllDrivers()) {
		s.Log.Warnf("driver check skipped: the cached generalisation knows only some drivers (rebuild with --no-cache to check)")
		return multistep.ActionContinue
	}
	if err := formats.CheckDrivers(s.Kernel.kernelDrivers(), s.Outputs); err != nil {
		return halt(state, err)
	}
	s.Log.Infof("driver check: kernel %s has the disk and seed drivers of %v", s.Kernel.Version, s.Outputs)
	return multistep.ActionContinue
}

func (s *stepDriverCheck) Cleanup(multistep.StateBag) {}
