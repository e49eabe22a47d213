package builder

import (
	"context"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/formats"
)

// stepDriverCheck fails the build before any output is written when the
// image's kernel lacks a driver that a hypervisor of one of the requested
// formats needs for the boot disk or the seed CD-ROM (formats' hypervisor
// table), e.g. Debian's cloud kernel (no AHCI) for qcow2 on libvirt q35.
type stepDriverCheck struct{}

func (s *stepDriverCheck) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	if b.kernel == nil {
		b.log.Warnf("driver check skipped: the image kernel's drivers are unknown")
		return multistep.ActionContinue
	}
	if !b.kernel.covers(formats.AllDrivers()) {
		b.log.Warnf("driver check skipped: the cached generalisation knows only some drivers (rebuild with --no-cache to check)")
		return multistep.ActionContinue
	}
	if err := formats.CheckDrivers(b.kernel.kernelDrivers(), b.plan.Outputs); err != nil {
		return halt(state, err)
	}
	b.log.Infof("driver check: kernel %s has the disk and seed drivers of %v", b.kernel.Version, b.plan.Outputs)
	return multistep.ActionContinue
}

func (s *stepDriverCheck) Cleanup(multistep.StateBag) {}
