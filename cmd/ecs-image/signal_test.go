package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// The test binary stands in for ecs-image when a test re-executes it.
	if os.Getenv("ECS_IMAGE_TEST_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// asMain starts this test binary as `ecs-image args...`.
func asMain(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), "ECS_IMAGE_TEST_AS_MAIN=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// TestSecondSignalEndsBlockedProcess: `env validate FIFO` blocks in open(2);
// the first SIGINT cannot unblock it, the second ends the process (issue
// 13: SIGINT and SIGTERM were swallowed until SIGKILL).
func TestSecondSignalEndsBlockedProcess(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		fifo := filepath.Join(t.TempDir(), "env.yml")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := asMain(t, "env", "validate", fifo)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		time.Sleep(500 * time.Millisecond)
		cmd.Process.Signal(sig)
		select {
		case <-done:
			continue // ended at the first signal: fine too
		case <-time.After(500 * time.Millisecond):
		}
		cmd.Process.Signal(sig)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatalf("%v: the process ignored a second signal", sig)
		}
	}
}

// TestFirstSignalEndsCidata: cidata runs without a signal handler (it
// starts in milliseconds; see run), so one SIGINT ends it even while it
// blocks reading a FIFO, and no seed or temporary file is left behind.
func TestFirstSignalEndsCidata(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "env.yml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out", "seed.iso")
	if err := os.Mkdir(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := asMain(t, "cidata", "-e", fifo, "-o", out)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	time.Sleep(500 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("cidata ended with success after SIGINT")
		}
	case <-time.After(3 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("cidata survived its first SIGINT")
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}
