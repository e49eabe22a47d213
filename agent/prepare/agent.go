package prepare

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ecs-image/ecs-image/agent/discover"
	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/env"
	"go.yaml.in/yaml/v3"
)

// ErrBlocked is returned when the failed flag blocks a (re)start.
var ErrBlocked = errors.New("blocked by " + status.FailedFlag + " (remove it after fixing the cause, then systemctl restart appliance)")

// ErrStandby is returned by the later chain steps when the appliance is in standby.
var ErrStandby = errors.New("appliance is in standby (appliance.standby: true)")

// Agent runs the boot chain on a Host.
type Agent struct {
	Host     *host.Host
	Discover discover.Config // Host is filled in from Agent.Host
	// Log receives progress lines (the journal); default os.Stderr.
	Log io.Writer
	// Facts about the machine; zero values are read from the host.
	MemBytes int64
	Cores    int
	// PG overrides how the local PostgreSQL server is reached (tests).
	PG PGOptions

	tlsChanged bool                    // set by the tls step: nginx and stunnel must restart
	pgMoved    bool                    // set by the postgresql-data step: the server must restart
	hook       func(checkpoint string) // tests: called at checkpoints of long runs
	logMu      sync.Mutex
}

func (a *Agent) logf(format string, args ...any) {
	w := a.Log
	if w == nil {
		w = os.Stderr
	}
	a.logMu.Lock() // steps of concurrent branches log at the same time
	defer a.logMu.Unlock()
	fmt.Fprintf(w, format+"\n", args...)
}

// checkBlocked returns ErrBlocked while the failed flag exists.
func (a *Agent) checkBlocked() error {
	if reason, ok := status.FailedReason(a.Host); ok {
		return fmt.Errorf("%w; recorded reason: %s", ErrBlocked, reason)
	}
	return nil
}

// Step is one idempotent unit of work of a chain command.
type Step struct {
	Name string
	Run  func(ctx context.Context, e *Env) error
	// Branches, when set, replaces Run: each branch (a list of steps run
	// in order) runs concurrently with the others, and the step ends when
	// all have ended. A failing branch stops at its failing step; the first
	// failure is the step's. Independent steps overlap this way (e.g.
	// PostgreSQL starting while postfix starts).
	Branches [][]Step
}

// stepError is the failure of the named step of a chain.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// Env is the active env.yml of a running chain.
type Env struct {
	Doc  *env.Doc
	Vars map[string]string // flattened ecs,appliance variables
}

// Str returns the trimmed scalar at a dotted path, or "".
func (e *Env) Str(path string) string {
	n := e.Doc.Lookup(path)
	if n == nil || n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return ""
	}
	return strings.TrimSpace(n.Value)
}

// Bool returns the boolean at path, or def when unset.
func (e *Env) Bool(path string, def bool) bool {
	n := e.Doc.Lookup(path)
	if n == nil || n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return def
	}
	var b bool
	if err := n.Decode(&b); err != nil {
		return def
	}
	return b
}

// Decode decodes the node at path into v; a missing node leaves v alone.
func (e *Env) Decode(path string, v any) error {
	n := e.Doc.Lookup(path)
	if n == nil || n.Tag == "!!null" {
		return nil
	}
	if err := n.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// loadActive parses /run/active-env.yml.
func (a *Agent) loadActive() (*Env, error) {
	data, err := a.Host.ReadFile(ActiveEnv)
	if err != nil {
		return nil, fmt.Errorf("no active env (did prepare-env run?): %w", err)
	}
	doc, err := env.Parse(ActiveEnv, data)
	if err != nil {
		return nil, err
	}
	vars, err := ParseShellAssignments(Flattened(doc))
	if err != nil {
		return nil, fmt.Errorf("flattened env: %w", err)
	}
	return &Env{Doc: doc, Vars: VarMap(vars)}, nil
}

// runChain runs the named chain command: failed-flag check, standby check,
// the steps in order with state updates, and on error the failed state.
func (a *Agent) runChain(ctx context.Context, name string, steps []Step) error {
	if err := a.checkBlocked(); err != nil {
		return err
	}
	if a.Host.Exists(status.StandbyFlag) {
		a.logf("%s: skipped: %v", name, ErrStandby)
		return ErrStandby
	}
	e, err := a.loadActive()
	if err != nil {
		return a.fail(name, err)
	}
	if err := a.runSteps(ctx, name, e, steps); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var se *stepError
		if errors.As(err, &se) {
			return a.fail(se.step, se.err)
		}
		return a.fail(name, err)
	}
	a.logf("%s: done", name)
	return nil
}

// runSteps runs steps in order (a step with Branches runs them
// concurrently); the first failure ends it as a *stepError.
func (a *Agent) runSteps(ctx context.Context, name string, e *Env, steps []Step) error {
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if len(s.Branches) > 0 {
			if err := a.runBranches(ctx, name, s.Name, e, s.Branches); err != nil {
				return err
			}
			continue
		}
		step := name + "/" + s.Name
		a.logf("%s: running", step)
		if err := status.Update(a.Host, status.State{State: status.Preparing, Step: step, Domain: e.Doc.Domain()}); err != nil {
			a.logf("%s: status: %v", step, err)
		}
		start := time.Now()
		if err := s.Run(ctx, e); err != nil {
			return &stepError{step, err}
		}
		a.logf("%s: done in %.1fs", step, time.Since(start).Seconds())
	}
	return nil
}

// runBranches runs each branch concurrently and waits for all of them; it
// returns the first failure.
func (a *Agent) runBranches(ctx context.Context, name, group string, e *Env, branches [][]Step) error {
	var desc []string
	for _, b := range branches {
		var names []string
		for _, s := range b {
			names = append(names, s.Name)
		}
		desc = append(desc, strings.Join(names, ", "))
	}
	a.logf("%s/%s: concurrently: %s", name, group, strings.Join(desc, " | "))
	errs := make(chan error, len(branches))
	for _, b := range branches {
		go func() { errs <- a.runSteps(ctx, name, e, b) }()
	}
	var first error
	for range branches {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// fail records a failure (flag, status page, console) and returns err.
func (a *Agent) fail(step string, err error) error {
	if ferr := status.Fail(a.Host, step, step+": "+err.Error()); ferr != nil {
		a.logf("recording failure: %v", ferr)
	}
	a.report("ecs-agent", "appliance failed: "+step+": "+err.Error(), map[string]string{"step": step})
	return err
}

// Failed is the OnFailure handler: it records that unit failed, keeping a
// reason already recorded by the chain itself.
func (a *Agent) Failed(unit string) error {
	if unit == "" {
		unit = "appliance"
	}
	err := status.Fail(a.Host, unit, "unit "+unit+" failed; see journalctl -u "+unit)
	a.report("ecs-agent", "unit "+unit+" failed", map[string]string{"unit": unit})
	// A failure before nginx was configured must still be visible.
	if serr := a.serveStatusPage(); serr != nil {
		a.logf("failed: serving the status page: %v", serr)
	}
	return err
}
