package builder

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/communicator"
)

// forcedPoweroffWait bounds the wait for a forced power-off before the
// ACPI power button is tried.
var forcedPoweroffWait = time.Minute

// stepShutdown powers the guest off. A build VM's services need no orderly
// stop (their state is thrown away or generalised), so the guest is told
// `systemctl poweroff --force`: systemd skips stopping units but still
// kills every process and unmounts the file systems cleanly before the
// power-off. If that fails, the ACPI power button is pressed, waited for up
// to shutdown_timeout, then QEMU is stopped (and the stage fails: a disk of
// an unclean shutdown is not cached).
type stepShutdown struct {
	Stage   *stageRun     // its machine and SSH client
	Timeout time.Duration // the template's shutdown_timeout
	Log     logrus.FieldLogger
}

func (s *stepShutdown) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	if sr.client != nil {
		sr.client.Run(ctx, "sync", communicator.RunOptions{})
		// The connection drops as the guest goes down: no exit status.
		go sr.client.Run(ctx, "systemctl poweroff --force", communicator.RunOptions{Sudo: true})
		select {
		case <-sr.machine.Done():
		case <-time.After(forcedPoweroffWait):
			s.Log.Warnf("the guest did not power off within %s of systemctl poweroff --force: pressing the ACPI power button", forcedPoweroffWait)
		case <-ctx.Done():
			return halt(state, ctx.Err())
		}
		sr.client.Close()
		sr.client = nil
	}
	if sr.machine.Exited() {
		<-sr.machine.Done()
		if err := sr.machine.Err(); err != nil {
			return halt(state, fmt.Errorf("shutdown: %w", err))
		}
		return multistep.ActionContinue
	}
	if err := sr.machine.Shutdown(ctx, s.Timeout); err != nil {
		return halt(state, fmt.Errorf("shutdown: %w", err))
	}
	return multistep.ActionContinue
}

func (s *stepShutdown) Cleanup(multistep.StateBag) {}
