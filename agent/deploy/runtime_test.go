package deploy

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
)

// flipRunner answers docker stop with dockerd's zombie error and inspect
// with "running" until after reaped inspections.
type flipRunner struct {
	stopErr  error
	reapedAt int
	inspects int
}

func (f *flipRunner) Run(ctx context.Context, c host.Cmd) ([]byte, error) {
	switch c.Args[0] {
	case "stop":
		return nil, f.stopErr
	case "container":
		f.inspects++
		running := f.inspects < f.reapedAt
		if running {
			return []byte(`{"Status":"running","Running":true}|img`), nil
		}
		return []byte(`{"Status":"exited","Running":false}|img`), nil
	}
	return nil, errors.New("unexpected " + c.String())
}

var errZombie = errors.New("docker: exit status 1: Error response from daemon: cannot stop container: x: container 4f70 PID 3220 is zombie and can not be killed. Use the --init option")

func TestStopWaitsForAZombieToBeReaped(t *testing.T) {
	r := &flipRunner{stopErr: errZombie, reapedAt: 2}
	if err := (Docker{Runner: r, StopReapWait: 10 * time.Second}).Stop(context.Background(), "x"); err != nil {
		t.Fatalf("Stop = %v, want nil once the container is reported stopped", err)
	}
	if r.inspects != 2 {
		t.Errorf("inspections = %d, want 2", r.inspects)
	}
}

func TestStopFailsWhenTheZombieStays(t *testing.T) {
	r := &flipRunner{stopErr: errZombie, reapedAt: 1 << 30}
	err := (Docker{Runner: r, StopReapWait: 1500 * time.Millisecond}).Stop(context.Background(), "x")
	if err == nil || !strings.Contains(err.Error(), "zombie") || !strings.Contains(err.Error(), "still running after 1.5s") {
		t.Fatalf("Stop = %v, want the zombie error and how long it waited", err)
	}
}

func TestStopOtherErrorsAreNotRetried(t *testing.T) {
	other := errors.New("docker: exit status 1: Error response from daemon: No such container: x")
	r := &flipRunner{stopErr: other}
	if err := (Docker{Runner: r}).Stop(context.Background(), "x"); !errors.Is(err, other) {
		t.Fatalf("Stop = %v, want %v", err, other)
	}
	if r.inspects != 0 {
		t.Errorf("inspected %d times after a non-zombie error", r.inspects)
	}
}
