package builder

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/communicator"
)

// stepWaitSSH waits until the build user can log in over SSH (bounded by
// ssh_timeout) and cloud-init has finished. If QEMU exits first, it fails
// at once with the serial console's last lines.
type stepWaitSSH struct{}

func (s *stepWaitSSH) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, sr := getBuild(state), getStage(state)
	addr := fmt.Sprintf("127.0.0.1:%d", sr.machine.HostPort(22))
	defer sr.machine.Waiting(b.log, "SSH and the end of the boot")()
	c, err := communicator.Dial(ctx, addr, BuildUser, sr.sshKey.Signer, b.tmpl.SSHTimeout, sr.machine.Done())
	if err != nil {
		if sr.machine.Exited() {
			<-sr.machine.Done()
			if e := sr.machine.Err(); e != nil {
				return halt(state, fmt.Errorf("the VM stopped before SSH came up: %w", e))
			}
			return halt(state, fmt.Errorf("the VM powered off before SSH came up\n%s", sr.machine.SerialTail(30)))
		}
		return halt(state, fmt.Errorf("%w\n%s", err, sr.machine.SerialTail(30)))
	}
	sr.client = c
	sr.guest = guest{c}
	wctx, cancel := context.WithTimeout(ctx, b.tmpl.SSHTimeout)
	defer cancel()
	if sr.kernel != nil {
		// Direct boot masks cloud-init's config and final stages, so its
		// status never reads "done": wait for the boot to finish instead
		// (cloud-init's init stage, which created the user, is part of it).
		out, err := c.Output(wctx, "systemctl is-system-running --wait 2>/dev/null; true", false)
		if err != nil {
			return halt(state, fmt.Errorf("systemctl is-system-running: %w", err))
		}
		if st := strings.TrimSpace(out); st != "running" {
			b.log.Warnf("the build VM finished booting %s", st)
		}
		return multistep.ActionContinue
	}
	// cloud-init must be done (users, host keys, growpart) before we
	// provision; status 2 means "done with recoverable errors".
	out, err := c.Output(wctx, "cloud-init status --wait >/dev/null 2>&1; echo $?", false)
	if err != nil {
		return halt(state, fmt.Errorf("cloud-init status: %w", err))
	}
	if code := strings.TrimSpace(out); code != "0" && code != "2" {
		b.log.Warnf("cloud-init status exited %s", code)
	}
	return multistep.ActionContinue
}

func (s *stepWaitSSH) Cleanup(multistep.StateBag) {}
