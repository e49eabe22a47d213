package prepare

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ecs-image/ecs-image/agent/discover"
	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/env"
)

// PrepareEnv finds the env.yml, validates it and activates it:
// /run/active-env.yml (0600, byte for byte the env.yml found),
// /run/active-env.source (where it came from), and the flattened
// environment in /run/active-env.env (shell / systemd EnvironmentFile) and
// /run/active-env.compose.env (docker-compose env_file). Nothing is written
// unless the env.yml is valid. With appliance.standby: true the appliance
// enters standby and the rest of the chain is skipped.
func (a *Agent) PrepareEnv(ctx context.Context) error {
	const step = "prepare-env"
	if err := a.checkBlocked(); err != nil {
		return err
	}
	_ = status.Update(a.Host, status.State{State: status.Preparing, Step: step})
	cfg := a.Discover
	cfg.Host = a.Host
	res, err := discover.Find(ctx, cfg)
	if res != nil {
		for _, at := range res.Attempts {
			a.logf("%s: %s: %s", step, at.Source, at.Result)
		}
	}
	devWarning := ""
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, discover.ErrNotFound) {
			return a.fail(step, err)
		}
		variant := a.Variant()
		if !DevFallbackVariants[variant] {
			return a.fail(step, fmt.Errorf("no env.yml found (tried %s)", res.Summary()))
		}
		// The original appliance's default-env fallback, for development
		// and test images only.
		res = &discover.Result{Source: DevEnvSource, Data: env.DevelopmentEnv(), Attempts: res.Attempts}
		devWarning = fmt.Sprintf("no env.yml found (tried %s); running the built-in development env "+
			"(domain localhost, published secrets) because this is a %s image; production images never do", res.Summary(), variant)
		a.logf("%s: warning: %s", step, devWarning)
	}
	if err := status.Warn(a.Host, "env", devWarning); err != nil {
		a.logf("%s: status: %v", step, err)
	}
	name := res.Source
	doc, err := env.Parse(name, res.Data)
	if err != nil {
		var ee *env.Error
		if errors.As(err, &ee) {
			err = fmt.Errorf("invalid env.yml: %s", strings.ReplaceAll(ee.Error(), "\n", "; "))
		}
		return a.fail(step, err)
	}
	for _, w := range doc.Warnings {
		a.logf("%s: warning: %s", step, w.String())
	}
	flat := Flattened(doc)
	vars, err := ParseShellAssignments(flat)
	if err != nil {
		return a.fail(step, fmt.Errorf("flattened env: %w", err))
	}
	// Write the derived files first and the active env last, each atomically:
	// a reader that sees the new active-env.yml sees matching env files.
	files := []struct {
		path string
		data []byte
	}{
		{ActiveEnvShell, []byte(flat)},
		{ActiveEnvCompose, []byte(a.Compose().EnvFile(vars))},
		{ActiveEnvSource, []byte(name + "\n")},
		{ActiveEnv, res.Data},
	}
	for _, f := range files {
		if _, err := a.Host.WriteFile(f.path, f.data, 0o600); err != nil {
			return a.fail(step, err)
		}
	}
	a.logf("%s: activated env.yml for %s from %s (%d variables)", step, doc.Domain(), name, len(vars))
	a.logf("%s: %s", step, a.cpuReport(10))
	a.reportKeys(step, doc)
	if doc.Standby() {
		if _, err := a.Host.WriteFile(status.StandbyFlag, []byte("appliance.standby is true in "+name+"\n"), 0o644); err != nil {
			return a.fail(step, err)
		}
		_ = status.Update(a.Host, status.State{State: status.Standby, Domain: doc.Domain(), EnvSource: name,
			Reason: "appliance.standby: true"})
		status.Console(a.Host, status.StandbyMarker)
		return nil
	}
	if err := a.Host.Remove(status.StandbyFlag); err != nil {
		return a.fail(step, err)
	}
	return status.Update(a.Host, status.State{State: status.Preparing, Step: step, Domain: doc.Domain(), EnvSource: strings.TrimSpace(name)})
}
