package prepare

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/contract"
)

// fakeCompose puts an executable docker-compose shell script with body
// first on $PATH and makes the agent run commands for real.
func fakeCompose(t *testing.T, a *Agent, body string) {
	t.Helper()
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "docker-compose"), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	a.Host.Runner = host.ExecRunner{Grace: 2 * time.Second}
}

func TestApplianceGivesUpAfterConsecutiveFailures(t *testing.T) {
	a, _ := testAgent(t)
	activate(t, a, siteEnv)
	put(t, a, ComposeFile, []byte("services: {}\n"), 0o644)
	fakeCompose(t, a, `echo "ERROR: pull access denied for ecs/web" >&2; exit 1`)
	never := func(context.Context) bool { return false }
	o := RunOptions{Probe: never, Interval: 10 * time.Millisecond}
	run := func() error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return a.Appliance(ctx, o)
	}

	for i := 1; i <= 2; i++ {
		err := run()
		if err == nil || errors.Is(err, ErrBlocked) || !strings.Contains(err.Error(), "pull access denied") {
			t.Fatalf("run %d: err = %v", i, err)
		}
		if _, ok := status.FailedReason(a.Host); ok {
			t.Fatalf("run %d: failed flag written before the limit", i)
		}
		st, _ := status.Read(a.Host)
		if st.State != status.Starting || !strings.Contains(st.Reason, "failed run") {
			t.Errorf("run %d: state %+v", i, st)
		}
	}
	if c := read(t, a, FailuresFile); !strings.Contains(c, `"consecutive_failures": 2`) {
		t.Errorf("counter: %s", c)
	}
	err := run()
	if !errors.Is(err, ErrBlocked) || !strings.Contains(err.Error(), "3 consecutive failed runs") {
		t.Fatalf("third run: err = %v", err)
	}
	reason, ok := status.FailedReason(a.Host)
	if !ok || !strings.HasPrefix(reason, "appliance: 3 consecutive failed runs") || !strings.Contains(reason, "pull access denied for ecs/web") {
		t.Fatalf("flag reason %q", reason)
	}
	if st, _ := status.Read(a.Host); st.State != status.Failed || st.Reason != reason {
		t.Errorf("state %+v", st)
	}
	if page := read(t, a, status.StatusPage); !strings.Contains(page, "pull access denied") {
		t.Errorf("status page lacks the reason:\n%s", page)
	}
	if c := read(t, a, "/dev/ttyS0"); !strings.Contains(c, status.FailedMarker+": "+reason) {
		t.Errorf("console %q", c)
	}
	if a.Host.Exists(FailuresFile) {
		t.Error("counter kept after giving up")
	}
	// The flag blocks the next start (systemd stops restarting on exit 3).
	if err := run(); !errors.Is(err, ErrBlocked) {
		t.Fatalf("with the flag: %v", err)
	}
	// After the operator removes the flag the count starts afresh.
	if err := a.Host.Remove(status.FailedFlag); err != nil {
		t.Fatal(err)
	}
	if err := run(); err == nil || errors.Is(err, ErrBlocked) {
		t.Fatalf("after removing the flag: %v", err)
	}
}

func TestApplianceReadyResetsFailureCount(t *testing.T) {
	a, _ := testAgent(t)
	activate(t, a, siteEnv)
	put(t, a, ComposeFile, []byte("services: {}\n"), 0o644)
	fakeCompose(t, a, `echo "ERROR: boom" >&2; exit 1`)
	ctx := context.Background()
	never := RunOptions{Probe: func(context.Context) bool { return false }, Interval: 10 * time.Millisecond}
	for i := 0; i < 2; i++ {
		if err := a.Appliance(ctx, never); err == nil || errors.Is(err, ErrBlocked) {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	// A run that gets ready and then dies counts once, from zero.
	fakeCompose(t, a, `sleep 0.3; echo "ERROR: web exited" >&2; exit 2`)
	up := RunOptions{Probe: func(context.Context) bool { return true }, Interval: 10 * time.Millisecond}
	err := a.Appliance(ctx, up)
	if err == nil || errors.Is(err, ErrBlocked) || !strings.Contains(err.Error(), "after ready") || !strings.Contains(err.Error(), "failed run 1 in a row") {
		t.Fatalf("after ready: %v", err)
	}
	if !strings.Contains(read(t, a, "/dev/ttyS0"), status.ReadyMarker) {
		t.Error("no ready marker")
	}
	fakeCompose(t, a, `echo "ERROR: boom" >&2; exit 1`)
	if err := a.Appliance(ctx, never); err == nil || errors.Is(err, ErrBlocked) {
		t.Fatalf("second failure after ready: %v", err)
	}
	if err := a.Appliance(ctx, never); !errors.Is(err, ErrBlocked) {
		t.Fatalf("third failure after ready: %v", err)
	}
}

func TestApplianceReadyTimeoutCounts(t *testing.T) {
	a, _ := testAgent(t)
	activate(t, a, siteEnv)
	put(t, a, ComposeFile, []byte("services: {}\n"), 0o644)
	fakeCompose(t, a, `exec sleep 60`)
	o := RunOptions{Probe: func(context.Context) bool { return false }, Interval: 10 * time.Millisecond,
		ReadyTimeout: 200 * time.Millisecond, MaxFailures: 2}
	start := time.Now()
	if err := a.Appliance(context.Background(), o); err == nil || !strings.Contains(err.Error(), "did not answer within 200ms") {
		t.Fatalf("first: %v", err)
	}
	err := a.Appliance(context.Background(), o)
	if !errors.Is(err, ErrBlocked) {
		t.Fatalf("second: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("compose was not stopped at the time-out (%s)", time.Since(start))
	}
	if reason, _ := status.FailedReason(a.Host); !strings.Contains(reason, "2 consecutive failed runs") || !strings.Contains(reason, "did not answer") {
		t.Errorf("reason %q", reason)
	}
}

func TestApplianceStopIsNotAFailure(t *testing.T) {
	a, _ := testAgent(t)
	activate(t, a, siteEnv)
	put(t, a, ComposeFile, []byte("services: {}\n"), 0o644)
	fakeCompose(t, a, `exec sleep 60`)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := a.Appliance(ctx, RunOptions{Probe: func(context.Context) bool { return false }, Interval: 10 * time.Millisecond}); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if a.Host.Exists(FailuresFile) {
		t.Error("a stop was counted as a failed run")
	}
}

// The appliance's `up` and the migrations' `run` use one Compose, project
// and file (composeCommand): a declared stack's project with the v2 plugin;
// the appliance starts the declared web service before the rest.
func TestApplianceAndMigrateShareComposeCommand(t *testing.T) {
	a, rec := testAgent(t)
	activate(t, a, siteEnv)
	put(t, a, contract.StackFile, []byte(`{"project":"site","web":{"service":"ecs.web","port":5000},"services":["ecs.web"]}`), 0o644)
	put(t, a, ComposeFile, []byte(migrateCompose), 0o644)
	put(t, a, "/usr/libexec/docker/cli-plugins/docker-compose", []byte("\x7fELF"), 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The recorded `up` returns at once: a failed run after ready, which
	// is not what is tested here.
	_ = a.Appliance(ctx, RunOptions{Probe: func(context.Context) bool { return true }, Interval: 10 * time.Millisecond})
	prefix := "docker compose -p site -f " + a.Host.Path(ComposeFile) + " "
	// The web service first (detached), then the whole stack.
	web, up := prefix+"up --no-color --detach ecs.web", prefix+"up --no-color --remove-orphans"
	cmds := strings.Join(rec.Commands, "\n")
	if w, u := strings.Index(cmds, web), strings.Index(cmds, up); w < 0 || u < 0 || w > u {
		t.Errorf("appliance ran\n%s\nwant %s, then %s", cmds, web, up)
	}
	name, args := a.composeCommand(migrateArgs...)
	if got := (host.Cmd{Name: name, Args: args}).String(); got != prefix+"run --rm -T ecs.web migrate" {
		t.Errorf("migrate runs %q", got)
	}
}
