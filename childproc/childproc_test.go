package childproc

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
)

// The main goroutine keeps the process's first thread, which the runtime
// never ends (it parks it instead); every other thread can end.
func init() { runtime.LockOSThread() }

// startOnDyingThread starts `sleep 1` from a goroutine that ends locked to
// its thread, so the runtime ends that thread right after the fork.
func startOnDyingThread(t *testing.T, start func(*exec.Cmd) (func() error, error)) error {
	t.Helper()
	type res struct {
		wait func() error
		err  error
	}
	ch := make(chan res)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		w, err := start(exec.Command("sleep", "1"))
		ch <- res{w, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.wait()
}

func TestStartSurvivesThreadExit(t *testing.T) {
	// The hazard Start guards against: a plain Start with Pdeathsig dies
	// with its thread.
	err := startOnDyingThread(t, func(c *exec.Cmd) (func() error, error) {
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		return c.Wait, c.Start()
	})
	if err == nil {
		t.Fatal("control: plain Pdeathsig child survived its thread's exit; the test cannot tell")
	}
	err = startOnDyingThread(t, func(c *exec.Cmd) (func() error, error) {
		return Start(c, syscall.SIGKILL)
	})
	if err != nil {
		t.Fatalf("child started through Start: %v", err)
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := Start(exec.Command("/nonexistent/binary"), syscall.SIGKILL); err == nil {
		t.Error("Start of a missing binary succeeded")
	}
	if err := Run(exec.Command("false"), syscall.SIGKILL); err == nil {
		t.Error("Run(false) succeeded")
	}
	if err := Run(exec.Command("true"), 0); err != nil {
		t.Error(err)
	}
}
