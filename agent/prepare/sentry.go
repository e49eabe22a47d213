package prepare

import (
	"context"
	"errors"
	"time"

	"github.com/ecs-image/ecs-image/agent/sentry"
	"github.com/ecs-image/ecs-image/env"
)

// Release names the agent in reports (set by cmd/ecs-agent).
var Release = "ecs-agent@dev"

// report sends a failure of the appliance (the chain, a unit, a backup,
// an update) to appliance.sentry.dsn of the active env, when set (manual
// §4.9). It never fails the caller: a report that cannot be sent is
// logged, without the DSN's key.
func (a *Agent) report(logger, msg string, tags map[string]string) {
	data, err := a.Host.ReadFile(ActiveEnv)
	if err != nil {
		return
	}
	doc, err := env.Parse(ActiveEnv, data)
	if err != nil {
		return
	}
	e := &Env{Doc: doc}
	raw := e.Str("appliance.sentry.dsn")
	if raw == "" {
		return
	}
	dsn, err := sentry.ParseDSN(raw)
	if err != nil {
		a.logf("sentry: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if tags == nil {
		tags = map[string]string{}
	}
	tags["domain"] = doc.Domain()
	c := &sentry.Client{DSN: dsn, Release: Release, ServerName: doc.Domain()}
	id, err := c.Capture(ctx, sentry.Event{Message: msg, Logger: logger, Tags: tags})
	if err != nil {
		a.logf("sentry: reporting %q: %v", msg, err)
		return
	}
	a.logf("sentry: reported %q as event %s", msg, id)
}

// SentryTest sends a test event (the original's `sentry_entry "test"`).
func (a *Agent) SentryTest(msg string) error {
	data, err := a.Host.ReadFile(ActiveEnv)
	if err != nil {
		return err
	}
	doc, err := env.Parse(ActiveEnv, data)
	if err != nil {
		return err
	}
	raw := (&Env{Doc: doc}).Str("appliance.sentry.dsn")
	if raw == "" {
		return errNoSentry
	}
	dsn, err := sentry.ParseDSN(raw)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	id, err := (&sentry.Client{DSN: dsn, Release: Release, ServerName: doc.Domain()}).Capture(ctx,
		sentry.Event{Message: msg, Level: "info", Logger: "ecs-agent.test"})
	if err != nil {
		return err
	}
	a.logf("sentry: test event %s sent to %s", id, dsn)
	return nil
}

var errNoSentry = errors.New("appliance.sentry.dsn is not set in the active env.yml")
