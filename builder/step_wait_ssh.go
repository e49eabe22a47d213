package builder

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/qemu"
)

// stepWaitSSH waits until the build user can log in over SSH (bounded by
// ssh_timeout) and cloud-init has finished. If QEMU exits first, it fails
// at once with the serial console's last lines.
type stepWaitSSH struct {
	// Stage holds the machine and the build user's key and receives the
	// SSH client (its guest).
	Stage   *stageRun
	Timeout time.Duration // the template's ssh_timeout
	Log     logrus.FieldLogger
}

func (s *stepWaitSSH) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	addr := fmt.Sprintf("127.0.0.1:%d", sr.machine.HostPort(22))
	defer sr.machine.Waiting(s.Log, "SSH and the end of the boot")()
	dctx, stop := context.WithCancelCause(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		watchSeed(dctx, sr.machine, seedLoginGrace, stop)
	}()
	c, err := communicator.Dial(dctx, addr, BuildUser, sr.sshKey.Signer, s.Timeout, sr.machine.Done())
	stop(nil)
	<-watched
	var noSeed *noSeedError
	if cause := context.Cause(dctx); err != nil && errors.As(cause, &noSeed) {
		return halt(state, fmt.Errorf("%w\nlast serial console lines:\n%s", noSeed, sr.machine.SerialTail(30)))
	}
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
	sr.guest, sr.files = guest{c}, guest{c}
	wctx, cancel := context.WithTimeout(ctx, s.Timeout)
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
			s.Log.Warnf("the build VM finished booting %s", st)
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
		s.Log.Warnf("cloud-init status exited %s", code)
	}
	return multistep.ActionContinue
}

func (s *stepWaitSSH) Cleanup(multistep.StateBag) {}

// seedLoginGrace is how long the build user may still fail to log in after
// the build VM's console showed its serial getty starting: by then cloud-init's init
// stage, which creates the user, has finished (cloud-init.service runs
// before systemd-user-sessions.service, getty after it), so only sshd's
// start and one handshake under emulation are left.
var seedLoginGrace = 3 * time.Minute

// noSeedError says that the build VM's cloud-init did not apply the build
// seed, so the build user will never exist.
type noSeedError struct {
	why   string   // what the console showed
	lines []string // cloud-init's lines on the console
}

func (e *noSeedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the build VM's cloud-init did not apply the build seed, so user %s cannot log in: %s.", BuildUser, e.why)
	b.WriteString(" The seed is a read-only virtio disk labelled cidata; a guest whose cloud-init does not read it" +
		" lacks NoCloud in its datasource_list, or has cloud-init disabled")
	if len(e.lines) > 0 {
		b.WriteString("\ncloud-init on the console:\n  " + strings.Join(e.lines, "\n  "))
	} else {
		b.WriteString("\ncloud-init printed nothing on the console (ds-identify found no datasource and disabled it, or the image has no cloud-init)")
	}
	return b.String()
}

var cloudInitRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?i)cloud-init|ds-identify`) })

// watchSeed watches the build VM's serial console while SSH is awaited and
// calls fail with a *noSeedError as soon as it is clear that the build user
// will never be created: cloud-init says it used no datasource
// (DataSourceNone, "Used fallback datasource"), or the boot reached its
// serial getty (the login prompt) without cloud-init having run, or with
// it and the user still cannot log in grace later. It returns
// when ctx ends or cloud-init names a real datasource.
func watchSeed(ctx context.Context, m *qemu.Machine, grace time.Duration, fail context.CancelCauseFunc) {
	re := regexp.MustCompile(cidata.ConsoleDatasourceRE().String() + "|" + cidata.ConsoleGettyRE().String())
	line, err := m.WaitSerialMatch(ctx, re)
	if err != nil {
		return
	}
	if ds, noSeed, ok := cidata.ConsoleDatasource(line); ok {
		if noSeed {
			fail(&noSeedError{why: fmt.Sprintf("it fell back to %s (%q)", ds, line), lines: cloudInitLines(m)})
		}
		return
	}
	// The getty is up: cloud-init's local and network stages are done.
	// Without a line from them, cloud-init did not run at all.
	if !consoleHas(m, cidata.ConsoleCloudInitRE()) {
		fail(&noSeedError{why: fmt.Sprintf("the VM reached its login prompt (%q) and cloud-init never ran: ds-identify found no datasource (no seed it can see) and disabled it", line)})
		return
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-m.Done():
	case <-t.C:
		fail(&noSeedError{why: fmt.Sprintf("the VM reached its login prompt (%q) %s ago and the user still cannot log in", line, grace), lines: cloudInitLines(m)})
	}
}

// consoleHas reports whether a console line so far matches re.
func consoleHas(m *qemu.Machine, re *regexp.Regexp) bool {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // read what is there, do not wait
	_, err := m.WaitSerialMatch(ctx, re)
	return err == nil
}

// cloudInitLines are the console's lines from cloud-init (its version and
// stage lines, warnings, datasource) among the last 400.
func cloudInitLines(m *qemu.Machine) []string {
	var out []string
	for _, l := range strings.Split(m.SerialTail(400), "\n") {
		if l = strings.TrimSpace(l); cloudInitRE().MatchString(l) && !strings.Contains(l, "ci-info:") {
			out = append(out, l)
		}
	}
	if len(out) > 12 {
		out = out[len(out)-12:]
	}
	return out
}
