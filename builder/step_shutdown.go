package builder

import (
	"context"
	"fmt"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/communicator"
)

// stepShutdown syncs and powers the guest off with the ACPI power button,
// waits up to shutdown_timeout, then stops QEMU (and fails: a disk of an
// unclean shutdown is not cached).
type stepShutdown struct{}

func (s *stepShutdown) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, sr := getBuild(state), getStage(state)
	if sr.client != nil {
		sr.client.Run(ctx, "sync", communicator.RunOptions{})
		sr.client.Close()
		sr.client = nil
	}
	if err := sr.machine.Shutdown(ctx, b.tmpl.ShutdownTimeout); err != nil {
		return halt(state, fmt.Errorf("shutdown: %w", err))
	}
	return multistep.ActionContinue
}

func (s *stepShutdown) Cleanup(multistep.StateBag) {}
