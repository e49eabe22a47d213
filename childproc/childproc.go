// Package childproc starts child processes that die with this process
// (PR_SET_PDEATHSIG) and not before.
//
// The kernel sends the parent-death signal when the thread that forked the
// child exits, not when the process does, and the Go runtime ends a thread
// whenever a goroutine locked to it returns: a child started with
// Pdeathsig from an arbitrary goroutine can be killed at any moment by code
// elsewhere in the process (golang/go#27505). Start forks from a goroutine
// locked to its own thread and keeps that thread until the child is reaped.
package childproc

import (
	"os/exec"
	"runtime"
	"syscall"
)

// Start starts cmd so that it receives sig when this process dies. wait
// replaces cmd.Wait (same result and rules, call it once) and frees the
// thread afterwards. sig 0 starts cmd plainly.
func Start(cmd *exec.Cmd, sig syscall.Signal) (wait func() error, err error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = sig
	if sig == 0 {
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		return cmd.Wait, nil
	}
	started := make(chan error, 1)
	release := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			<-release
		}
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return func() error {
		defer close(release)
		return cmd.Wait()
	}, nil
}

// Run is cmd.Run through Start.
func Run(cmd *exec.Cmd, sig syscall.Signal) error {
	wait, err := Start(cmd, sig)
	if err != nil {
		return err
	}
	return wait()
}
