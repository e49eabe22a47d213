package prepare

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
)

// RunOptions tune Appliance.
type RunOptions struct {
	// ReadyTimeout bounds the wait for the web service (default 15 min).
	ReadyTimeout time.Duration
	// Probe reports whether the application answers; default: an HTTP GET of
	// http://127.0.0.1:WebPort/ answering below 500.
	Probe func(ctx context.Context) bool
	// Interval between probes (default 500 ms: a refused local connection
	// costs nothing, and the ready signal comes that much sooner).
	Interval time.Duration
	// MaxFailures is the number of consecutive failed runs after which the
	// appliance is marked failed instead of being restarted again
	// (default DefaultMaxFailures).
	MaxFailures int
}

// Stopped is the state after the appliance service stopped.
const Stopped = "stopped"

// FailuresFile counts the consecutive failed runs of the appliance command
// (docker-compose exited or timed out before the web service answered, or
// exited after it did). Reaching the ready state removes it; so does giving
// up, which writes the failed flag instead.
const FailuresFile = "/run/ecs-agent/appliance-failures.json"

// DefaultMaxFailures is RunOptions.MaxFailures' default.
const DefaultMaxFailures = 3

// failureCount is the content of FailuresFile.
type failureCount struct {
	Count   int       `json:"consecutive_failures"`
	Last    string    `json:"last_reason"`
	Updated time.Time `json:"updated"`
}

// runFailure marks an error of a failed run of the stack, which counts
// towards RunOptions.MaxFailures.
type runFailure struct{ error }

func (f runFailure) Unwrap() error { return f.error }

// Appliance runs the compose stack in the foreground (docker-compose up)
// until ctx ends or the stack exits. When the web service answers it
// removes the status page (nginx starts proxying), records the ready
// state, prints ECS-APPLIANCE-READY on the console and notifies systemd.
//
// A failed run (compose exits or the web service does not answer within
// ReadyTimeout, or compose exits after ready) returns an error, and systemd
// restarts the unit. The run that makes MaxFailures consecutive failures
// records the failure (failed flag, status page, ECS-APPLIANCE-FAILED on
// the console) and returns an error wrapping ErrBlocked: systemd's start
// limit alone never trips when each start takes minutes.
func (a *Agent) Appliance(ctx context.Context, o RunOptions) error {
	const step = "appliance"
	if err := a.checkBlocked(); err != nil {
		return err
	}
	if a.Host.Exists(status.StandbyFlag) {
		return ErrStandby
	}
	e, err := a.loadActive()
	if err != nil {
		return a.fail(step, err)
	}
	err = a.runStack(ctx, o, e)
	var rf runFailure
	if !errors.As(err, &rf) {
		return err
	}
	return a.countFailure(step, o.MaxFailures, rf.error, e)
}

// countFailure records one more consecutive failed run; at limit it marks the
// appliance failed.
func (a *Agent) countFailure(step string, limit int, cause error, e *Env) error {
	if limit <= 0 {
		limit = DefaultMaxFailures
	}
	var fc failureCount
	if data, err := a.Host.ReadFile(FailuresFile); err == nil {
		if err := json.Unmarshal(data, &fc); err != nil {
			a.logf("%s: %s: %v (counting from zero)", step, a.Host.Path(FailuresFile), err)
			fc = failureCount{}
		}
	}
	fc.Count++
	fc.Last = cause.Error()
	fc.Updated = time.Now().UTC().Truncate(time.Second)
	if fc.Count >= limit {
		reason := fmt.Errorf("%d consecutive failed runs, giving up; last: %w", fc.Count, cause)
		_ = a.fail(step, reason)
		if err := a.Host.Remove(FailuresFile); err != nil {
			a.logf("%s: %v", step, err)
		}
		return fmt.Errorf("%s: %w; %w", step, reason, ErrBlocked)
	}
	data, _ := json.MarshalIndent(fc, "", "  ")
	if _, err := a.Host.WriteFile(FailuresFile, append(data, '\n'), 0o644); err != nil {
		a.logf("%s: recording the failed run: %v", step, err)
	}
	msg := fmt.Sprintf("failed run %d in a row (gives up after %d), restarting: %v", fc.Count, limit, cause)
	_ = status.Update(a.Host, status.State{State: status.Starting, Step: step, Domain: e.Doc.Domain(), Reason: msg})
	return fmt.Errorf("%s: %s", step, msg)
}

// runStack runs docker-compose until ctx ends (nil) or the stack fails
// (runFailure).
func (a *Agent) runStack(ctx context.Context, o RunOptions, e *Env) error {
	const step = "appliance"
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 15 * time.Minute
	}
	if o.Interval <= 0 {
		o.Interval = 500 * time.Millisecond
	}
	// The rendered compose file says whether a web service is published
	// (re-reading the image tarballs here would be slow for .tar.gz).
	compose, _ := a.Host.ReadFile(ComposeFile)
	hasWeb := strings.Contains(string(compose), fmt.Sprintf("\"127.0.0.1:%d:", WebPort))
	st, err := a.ReadStack()
	if err != nil {
		return runFailure{err}
	}
	webPort, webService := WebPort, ""
	if st != nil {
		hasWeb, webPort, webService = true, st.Web.Port, st.Web.Service
	}
	if o.Probe == nil {
		if hasWeb {
			o.Probe = httpProbe(fmt.Sprintf("http://127.0.0.1:%d/", webPort))
		} else {
			o.Probe = func(context.Context) bool { return true }
		}
	}
	_ = status.Update(a.Host, status.State{State: status.Starting, Step: step, Domain: e.Doc.Domain()})

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	if a.Host.Exists(ComposeFile) {
		// The web service (and the services it links) first, then the
		// whole stack: ready waits for the web service alone, not for
		// the start of the stack's other containers (under emulation
		// 6–30 s after their creation when they start together); they
		// follow at once.
		if webService != "" {
			name, args := a.composeCommand("up", "--no-color", "--detach", webService)
			if _, err := a.Host.RunCmd(runCtx, host.Cmd{Name: name, Args: args, Stdout: os.Stderr, Stderr: os.Stderr}); err != nil {
				if ctx.Err() != nil {
					return a.stopped(e)
				}
				return runFailure{fmt.Errorf("starting %s: %w", webService, err)}
			}
		}
		go func() {
			name, args := a.composeCommand("up", "--no-color", "--remove-orphans")
			_, err := a.Host.RunCmd(runCtx, host.Cmd{Name: name, Args: args, Stdout: os.Stderr, Stderr: os.Stderr})
			done <- err
		}()
	} else {
		a.logf("%s: no %s: nothing to run", step, ComposeFile)
		go func() { <-runCtx.Done(); done <- nil }()
	}

	ready := false
	deadline := time.NewTimer(o.ReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	for !ready {
		if o.Probe(runCtx) {
			ready = true
			break
		}
		select {
		case err := <-done:
			if ctx.Err() != nil {
				return a.stopped(e)
			}
			if err == nil {
				err = errors.New("docker-compose exited")
			}
			return runFailure{fmt.Errorf("before ready: %w", err)}
		case <-deadline.C:
			cancel()
			<-done
			return runFailure{fmt.Errorf("the web service did not answer within %s", o.ReadyTimeout)}
		case <-ctx.Done():
			<-done
			return a.stopped(e)
		case <-tick.C:
		}
	}
	if err := a.Host.Remove(FailuresFile); err != nil {
		a.logf("%s: %v", step, err)
	}
	if err := status.Update(a.Host, status.State{State: status.Ready, Domain: e.Doc.Domain()}); err != nil {
		a.logf("%s: status: %v", step, err)
	}
	_, _ = a.Host.WriteFile(TagsDir+"/last_running_appliance", []byte(time.Now().UTC().Format(time.RFC3339)+" "+e.Doc.Domain()+"\n"), 0o644)
	status.Console(a.Host, status.ReadyMarker)
	a.logf("%s: ready; %s", step, a.cpuReport(14))
	if err := sdNotify("READY=1\nSTATUS=appliance ready"); err != nil {
		a.logf("%s: sd_notify: %v", step, err)
	}
	select {
	case err := <-done:
		if ctx.Err() != nil {
			return a.stopped(e)
		}
		if err == nil {
			err = errors.New("docker-compose exited")
		}
		return runFailure{fmt.Errorf("after ready: %w", err)}
	case <-ctx.Done():
		<-done
		return a.stopped(e)
	}
}

func (a *Agent) stopped(e *Env) error {
	_ = status.Update(a.Host, status.State{State: Stopped, Domain: e.Doc.Domain()})
	a.logf("appliance: stopped")
	return nil
}

func httpProbe(url string) func(ctx context.Context) bool {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{Proxy: nil}}
	return func(ctx context.Context) bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false
		}
		resp, err := c.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode < 500
	}
}

// sdNotify sends a state string to systemd ($NOTIFY_SOCKET); without the
// socket it does nothing.
func sdNotify(state string) error {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	if strings.HasPrefix(sock, "@") {
		sock = "\x00" + sock[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

// Cleanup runs after the appliance is up: it removes dangling images and
// upload spool files older than a day. Failures are logged, not fatal.
func (a *Agent) Cleanup(ctx context.Context) error {
	var errs []error
	if err := a.docker().PruneImages(ctx); err != nil {
		errs = append(errs, err)
	}
	// Uploads older than a day are leftovers of an interrupted deploy.
	entries, _ := os.ReadDir(a.Host.Path(SpoolDir))
	for _, en := range entries {
		fi, err := en.Info()
		if err != nil || time.Since(fi.ModTime()) < 24*time.Hour {
			continue
		}
		if err := os.RemoveAll(a.Host.Path(SpoolDir + "/" + en.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	for _, err := range errs {
		a.logf("cleanup: %v", err)
	}
	return errors.Join(errs...)
}

// SpoolDir holds push-deploy uploads in flight.
const SpoolDir = "/var/lib/ecs-agent/spool"
