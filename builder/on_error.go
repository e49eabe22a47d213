package builder

// What a build does when a stage fails, like Packer's -on-error: clean up
// (the default), abort (keep the failed stage's VM or chroot running, with
// the way in printed), or ask on the terminal (retry, abort or clean up).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// On-error modes (Options.OnError).
const (
	OnErrorCleanup = "cleanup"
	OnErrorAbort   = "abort"
	OnErrorAsk     = "ask"
)

// OnErrorModes lists the modes, the default first.
var OnErrorModes = []string{OnErrorCleanup, OnErrorAbort, OnErrorAsk}

// Answers to Options.Ask.
const (
	AskRetry   = "retry"
	AskAbort   = "abort"
	AskCleanup = "cleanup"
)

// stateAborted marks a failed build whose stage is kept (no clean-up).
const stateAborted = "aborted"

// onErrorStep applies the build's on-error mode to one step of a stage.
type onErrorStep struct {
	step  multistep.Step
	name  string
	stage string
}

// onErrorSteps wraps the steps of stage with the build's on-error mode.
func onErrorSteps(steps []multistep.Step, stage string) []multistep.Step {
	out := make([]multistep.Step, len(steps))
	for i, s := range steps {
		name := stepName(s)
		if t, ok := s.(*timed); ok {
			name = t.name
		}
		out[i] = &onErrorStep{step: s, name: name, stage: stage}
	}
	return out
}

func (s *onErrorStep) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	for {
		action := s.step.Run(ctx, state)
		raw, failed := state.GetOk("error")
		if action != multistep.ActionHalt || !failed || ctx.Err() != nil {
			return action // Ctrl-C always cleans up
		}
		switch b.opts.OnError {
		case OnErrorAbort:
			state.Put(stateAborted, true)
			return action
		case OnErrorAsk:
			if b.opts.Ask == nil {
				return action
			}
			answer, err := b.opts.Ask(fmt.Sprintf("step %q of stage %s failed: %v", s.name, s.stage, raw))
			if err != nil || ctx.Err() != nil {
				if err != nil {
					b.log.Warnf("--on-error=ask: %v; cleaning up", err)
				}
				return action
			}
			switch answer {
			case AskRetry:
				b.log.Infof("retrying %s", s.name)
				state.Remove("error")
				continue
			case AskAbort:
				state.Put(stateAborted, true)
			}
			return action
		default:
			return action
		}
	}
}

// Cleanup is skipped for a kept (aborted) stage.
func (s *onErrorStep) Cleanup(state multistep.StateBag) {
	if _, aborted := state.GetOk(stateAborted); aborted {
		return
	}
	s.step.Cleanup(state)
}

// aborted tells whether the build stopped with --on-error=abort (or the
// answer abort) and keeps what it had.
func aborted(state multistep.StateBag) bool {
	_, ok := state.GetOk(stateAborted)
	return ok
}

// KeptError is the error of a build stopped by --on-error=abort: the
// stage's error and what was kept, with the way in and the way out.
type KeptError struct {
	Err error
	// Help is the text that says how to get in and how to clean up.
	Help string
}

func (e *KeptError) Error() string { return e.Err.Error() + "\n\n" + e.Help }
func (e *KeptError) Unwrap() error { return e.Err }

// keepStage leaves the failed stage's VM or chroot running, writes
// cleanup.sh into the build's work directory and returns the text that
// says how to get in and how to clean up.
func (b *buildState) keepStage(sr *stageRun) (string, error) {
	var help strings.Builder
	script := filepath.Join(b.work, "cleanup.sh")
	var sh strings.Builder
	sh.WriteString("#!/bin/sh\n# Written by ecs-image build --on-error=abort: stops what the failed stage\n# left running and removes the build's work directory.\n")
	// waitGone waits up to 30 s for a process to end.
	waitGone := func(pid int) string {
		return fmt.Sprintf("i=0; while kill -0 %d 2>/dev/null && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done\n", pid)
	}
	owner := 0 // the process the work directory's pid file names
	switch {
	case sr.machine != nil && !sr.machine.Exited():
		pid, err := sr.machine.Detach()
		if err != nil {
			return "", err
		}
		if sr.client != nil {
			sr.client.Close()
			sr.client = nil
		}
		key := filepath.Join(sr.dir, "id_ed25519")
		if sr.sshKey == nil {
			return "", errors.New("no build key")
		}
		if err := os.WriteFile(key, sr.sshKey.PrivatePEM, 0o600); err != nil {
			return "", err
		}
		port := sr.machine.HostPort(22)
		fmt.Fprintf(&help, "The build VM of stage %s is still running (QEMU pid %d, serial log %s).\n", sr.stage.Name, pid, sr.machine.SerialLog())
		fmt.Fprintf(&help, "Log in (build user %s, passwordless sudo):\n\n", BuildUser)
		fmt.Fprintf(&help, "  ssh -i %s -p %d -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null %s@127.0.0.1\n\n", key, port, BuildUser)
		fmt.Fprintf(&sh, "kill %d 2>/dev/null\n%srm -rf %s\n", pid, waitGone(pid), sr.machine.RunDir())
		owner = pid
	case sr.chroot != nil && !sr.chroot.closed:
		k, err := sr.chroot.keep()
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&help, "The chroot of stage %s is still mounted (in the mount namespace of pid %d; disk exported by qemu-storage-daemon pid %d).\n", sr.stage.Name, k.Keeper, k.Export)
		help.WriteString("Enter it as root:\n\n")
		fmt.Fprintf(&help, "  nsenter --target %d --mount --uts -- chroot %s /bin/sh -c 'cd /root; exec bash -l || exec sh -l'\n\n", k.Keeper, k.Root)
		// The keeper's end drops the namespace and its mounts; the export
		// stops on SIGTERM; a FUSE mount may linger lazily on its file.
		fmt.Fprintf(&sh, "kill %d 2>/dev/null\n%s", k.Keeper, waitGone(k.Keeper))
		fmt.Fprintf(&sh, "kill %d 2>/dev/null\n%s", k.Export, waitGone(k.Export))
		fmt.Fprintf(&sh, "umount -l %s 2>/dev/null\n", filepath.Join(k.Dir, "export.raw"))
		owner = k.Export
	default:
		fmt.Fprintf(&help, "Nothing of stage %s is running any more (the step that failed had none, or it had stopped).\n", sr.stage.Name)
		help.WriteString("Its disk and logs are kept in " + sr.dir + ".\n\n")
	}
	fmt.Fprintf(&sh, "rm -rf %s\n", b.work)
	if err := os.WriteFile(script, []byte(sh.String()), 0o700); err != nil {
		return "", err
	}
	// The work directory stays while what it holds runs (CleanStale);
	// with nothing running, like --keep-on-error's, for an hour at least.
	pidFile := filepath.Join(b.work, "pid")
	if owner == 0 {
		os.Remove(pidFile)
	} else if err := os.WriteFile(pidFile, []byte(strconv.Itoa(owner)+"\n"), 0o644); err != nil {
		return "", err
	}
	fmt.Fprintf(&help, "The work directory %s (disks, seed, build key) is kept.\nWhen done, stop it all and remove it:\n\n  sh %s\n", b.work, script)
	return help.String(), nil
}

// keepable tells whether a failed stage may be kept (abort or ask): its
// QEMU and qemu-storage-daemon are then started so that they can outlive
// ecs-image.
func (b *buildState) keepable() bool {
	return b.opts.OnError == OnErrorAbort || b.opts.OnError == OnErrorAsk
}
