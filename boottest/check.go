package boottest

import (
	"context"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/ecs-image/ecs-image/cidata"
)

// check waits for the console marker, the SSH banner and HTTPS 200,
// filling the report as they come.
func (v *VM) check(ctx context.Context) error {
	m, markers, domain, rep := v.Machine, v.markers, v.domain, v.Report
	expect, https := v.opts.Expect, v.opts.HTTPS
	since := func() float64 { return time.Since(m.Started).Round(100 * time.Millisecond).Seconds() }

	// The SSH banner, in the background (informational).
	sshCtx, stopSSH := context.WithCancel(ctx)
	var sshWG sync.WaitGroup
	sshWG.Add(1)
	go func() {
		defer sshWG.Done()
		if WaitSSH(sshCtx, m.HostPort(22)) == nil {
			rep.SSHSeconds = since()
			v.log.Infof("SSH is up after %.1fs", rep.SSHSeconds)
		}
	}()
	defer func() { stopSSH(); sshWG.Wait() }()

	// A bare base (no env.yml): its boot reaching the serial getty without
	// a line from cloud-init means cloud-init never ran — ds-identify saw
	// no seed — and its final line will never come.
	wait := markers.all
	if domain == "" {
		wait = regexp.MustCompile(markers.all.String() + "|" + cidata.ConsoleGettyRE().String())
	}
	var line string
	for {
		var err error
		line, err = m.WaitSerialMatch(ctx, wait)
		if err != nil {
			rep.State = "timeout"
			if m.Exited() {
				rep.State = "exited"
			}
			return err
		}
		if s, _ := markers.classify(line); s != "" || !cidata.ConsoleGettyRE().MatchString(line) {
			break
		}
		wait = markers.all
		if !consoleHas(m, cidata.ConsoleCloudInitRE()) {
			rep.State, rep.Line, rep.ReadySeconds = "no-seed", line, since()
			rep.Reason = "the guest reached its login prompt and cloud-init never ran: ds-identify found no seed (the guest's kernel has no driver for the seed on " + rep.SeedBus + ", or no cidata label)"
			return fmt.Errorf("the appliance reported no-seed, want %s: %s", expect, rep.Reason)
		}
	}
	state, reason := markers.classify(line)
	rep.State, rep.Reason, rep.Line = state, reason, line
	rep.ReadySeconds = since()
	v.log.Infof("console after %.1fs: %s", rep.ReadySeconds, line)
	addr := Loopback(m.HostPort(443))
	if https && (state == "failed" || state == "standby") {
		// The agent's status page shows the reason: report what it says.
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		status, body, err := WaitHTTPS(pctx, v.log, addr, domain, false, m.Done())
		cancel()
		if err == nil {
			rep.HTTPSStatus, rep.StatusPage = status, pageText(body, 500)
		}
	}
	if state != expect {
		if reason != "" {
			return fmt.Errorf("the appliance reported %s, want %s: %s", state, expect, reason)
		}
		return fmt.Errorf("the appliance reported %s, want %s (%s)", state, expect, line)
	}
	if !https || state != "ready" {
		return nil
	}
	status, _, err := WaitHTTPS(ctx, v.log, addr, domain, true, m.Done())
	rep.HTTPSStatus = status
	if err != nil {
		return err
	}
	rep.HTTPSSeconds = since()
	v.log.Infof("HTTPS answered %d after %.1fs", status, rep.HTTPSSeconds)
	return nil
}
