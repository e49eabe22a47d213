package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
)

// Container is the state of one container.
type Container struct {
	Exists  bool   `json:"exists"`
	Running bool   `json:"running"`
	Status  string `json:"status,omitempty"`
	Image   string `json:"image,omitempty"`
}

// Runtime is the container engine. The real one (Docker) shells out to the
// docker CLI; tests use a fake.
type Runtime interface {
	// Load loads a docker-archive tarball and returns the loaded image
	// (a tag or an image ID).
	Load(ctx context.Context, archive string) (string, error)
	Tag(ctx context.Context, image, tag string) error
	// Run creates and starts container name from image, detached.
	Run(ctx context.Context, name, image string, args []string) error
	Start(ctx context.Context, name string) error
	Stop(ctx context.Context, name string) error
	Remove(ctx context.Context, name string) error
	Rename(ctx context.Context, from, to string) error
	Inspect(ctx context.Context, name string) (Container, error)
	// RestartStack restarts the declared stack (appliance.service) without
	// waiting for it.
	RestartStack(ctx context.Context) error
}

// StackUnit is the unit that runs the declared stack.
const StackUnit = "appliance.service"

// RestartStack implements Runtime.
func (d Docker) RestartStack(ctx context.Context) error {
	_, err := d.Runner.Run(ctx, host.Cmd{Name: "systemctl", Args: []string{"restart", "--no-block", StackUnit}})
	return err
}

// Docker is the Runtime backed by the docker CLI.
type Docker struct {
	Runner host.Runner
	// StopReapWait bounds Stop's wait for a killed container's process to
	// be reaped (default 2 min).
	StopReapWait time.Duration
}

func (d Docker) docker(ctx context.Context, args ...string) (string, error) {
	out, err := d.Runner.Run(ctx, host.Cmd{Name: "docker", Args: args})
	return string(out), err
}

// Load implements Runtime.
func (d Docker) Load(ctx context.Context, archive string) (string, error) {
	out, err := d.docker(ctx, "load", "-i", archive)
	if err != nil {
		return "", err
	}
	var refs []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		for _, p := range []string{"Loaded image: ", "Loaded image ID: "} {
			if strings.HasPrefix(l, p) {
				refs = append(refs, strings.TrimPrefix(l, p))
			}
		}
	}
	if len(refs) == 0 {
		return "", errors.New("docker load reported no image")
	}
	return refs[0], nil
}

// Tag implements Runtime.
func (d Docker) Tag(ctx context.Context, image, tag string) error {
	_, err := d.docker(ctx, "tag", image, tag)
	return err
}

// Run implements Runtime.
func (d Docker) Run(ctx context.Context, name, image string, args []string) error {
	a := append([]string{"run", "-d", "--name", name, "--label", "ecs-agent.deployment=" + name}, args...)
	_, err := d.docker(ctx, append(a, image)...)
	return err
}

// Start implements Runtime.
func (d Docker) Start(ctx context.Context, name string) error {
	_, err := d.docker(ctx, "start", name)
	return err
}

// Stop implements Runtime. dockerd gives up on a container whose process
// was killed but not yet reaped by its containerd shim ("PID … is zombie
// and can not be killed"), which a loaded host can take longer than
// dockerd's 10 s to do; Stop then waits up to StopReapWait for the
// container to be reported stopped before it fails.
func (d Docker) Stop(ctx context.Context, name string) error {
	_, err := d.docker(ctx, "stop", name)
	if err == nil || !strings.Contains(err.Error(), "zombie") {
		return err
	}
	wait := d.StopReapWait
	if wait == 0 {
		wait = 2 * time.Minute
	}
	deadline := time.Now().Add(wait)
	for {
		c, ierr := d.Inspect(ctx, name)
		if ierr == nil && !c.Running {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (still running after %s)", err, wait)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

// Remove implements Runtime.
func (d Docker) Remove(ctx context.Context, name string) error {
	_, err := d.docker(ctx, "rm", "-f", name)
	return err
}

// Rename implements Runtime.
func (d Docker) Rename(ctx context.Context, from, to string) error {
	_, err := d.docker(ctx, "rename", from, to)
	return err
}

// Inspect implements Runtime.
func (d Docker) Inspect(ctx context.Context, name string) (Container, error) {
	out, err := d.docker(ctx, "container", "inspect", "--format", "{{json .State}}|{{.Config.Image}}", name)
	if err != nil {
		if strings.Contains(err.Error(), "No such") || strings.Contains(err.Error(), "no such") {
			return Container{}, nil
		}
		return Container{}, err
	}
	stateJSON, image, _ := strings.Cut(strings.TrimSpace(out), "|")
	var st struct {
		Status  string
		Running bool
	}
	if err := json.Unmarshal([]byte(stateJSON), &st); err != nil {
		return Container{}, fmt.Errorf("docker inspect %s: %w", name, err)
	}
	return Container{Exists: true, Running: st.Running, Status: st.Status, Image: image}, nil
}
