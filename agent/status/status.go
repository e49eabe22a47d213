// Package status records the appliance's state: a JSON state file for
// `ecs-agent status`, the HTML status page nginx serves (HTTP 503) while the
// appliance is not up, the failed flag, and the console markers that
// `ecs-image test` waits for.
package status

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
)

// In-appliance paths.
const (
	StateFile   = "/run/ecs-agent/state.json"
	FailedFlag  = "/run/appliance-failed"
	StandbyFlag = "/run/appliance-standby"
	// StatusPage is served by nginx with HTTP 503 for every request while it
	// exists; removing it lets nginx proxy to the application.
	StatusPage = "/var/www/html/503.html"
)

// States.
const (
	Unconfigured = "unconfigured"
	Preparing    = "preparing"
	Starting     = "starting"
	Ready        = "ready"
	Standby      = "standby"
	Failed       = "failed"
)

// Console markers printed for `ecs-image test` and operators.
const (
	ReadyMarker   = "ECS-APPLIANCE-READY"
	FailedMarker  = "ECS-APPLIANCE-FAILED"
	StandbyMarker = "ECS-APPLIANCE-STANDBY"
)

// State is the agent's view of the appliance, as printed by `ecs-agent status`.
type State struct {
	State      string    `json:"state"`
	Step       string    `json:"step,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Domain     string    `json:"domain,omitempty"`
	EnvSource  string    `json:"env_source,omitempty"`
	FailedFlag bool      `json:"failed_flag"`
	Updated    time.Time `json:"updated,omitzero"`
	// Warnings are problems that do not stop the appliance, by topic
	// (e.g. "tls": the ACME certificate was not issued).
	Warnings map[string]string `json:"warnings,omitempty"`
	// Backup is the outcome of the last backup run (ecs-agent backup).
	Backup *Backup `json:"backup,omitempty"`
}

// Backup summarises the backup for the state file and the status page.
type Backup struct {
	LastRun     time.Time `json:"last_run,omitzero"`
	Result      string    `json:"result,omitempty"` // "success" or "failed"
	Error       string    `json:"error,omitempty"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	Type        string    `json:"type,omitempty"`       // "full" or "incremental"
	SizeBytes   int64     `json:"size_bytes,omitempty"` // data backed up (vault + dump)
	NextRun     string    `json:"next_run,omitempty"`
	Target      string    `json:"target,omitempty"` // credentials removed
}

// SetBackup records the backup summary, leaving the rest of the state alone.
func SetBackup(h *host.Host, b Backup) error {
	defer lock(h)()
	return update(h, State{Backup: &b})
}

// Read returns the recorded state; with no state file it reports
// "unconfigured". The failed flag wins over the recorded state.
func Read(h *host.Host) (State, error) {
	var st State
	data, err := h.ReadFile(StateFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		st.State = Unconfigured
	case err != nil:
		return st, err
	default:
		if err := json.Unmarshal(data, &st); err != nil {
			return st, fmt.Errorf("%s: %w", h.Path(StateFile), err)
		}
	}
	if reason, ok := FailedReason(h); ok {
		st.FailedFlag = true
		st.State = Failed
		if st.Reason == "" {
			st.Reason = reason
		}
	}
	return st, nil
}

// Update merges fields into the recorded state (non-empty fields of u win;
// a warning with an empty text is removed), rewrites the state file and the
// status page. When the new state is Ready the status page is removed so
// nginx proxies to the application.
func Update(h *host.Host, u State) error {
	defer lock(h)()
	return update(h, u)
}

// Warn sets (text != "") or clears the warning of topic, leaving the rest
// of the state alone; nothing is rewritten when it is unchanged.
func Warn(h *host.Host, topic, text string) error {
	defer lock(h)()
	if st, err := Read(h); err == nil && st.Warnings[topic] == oneLine(text) {
		return nil
	}
	return update(h, State{Warnings: map[string]string{topic: text}})
}

// lock serialises read-modify-write of the state file between processes
// (the chain and `ecs-agent acme` may update it at the same time); best
// effort: without the lock file the update still happens.
func lock(h *host.Host) (unlock func()) {
	p := h.Path(StateFile + ".lock")
	_ = os.MkdirAll(filepath.Dir(p), 0o755)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return func() {}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return func() {}
	}
	return func() { f.Close() }
}

func update(h *host.Host, u State) error {
	st, err := Read(h)
	if err != nil {
		st = State{}
	}
	if u.State != "" {
		st.State = u.State
		if u.State != Failed {
			st.Reason = ""
		}
	}
	if u.Step != "" || u.State == Ready || u.State == Standby {
		st.Step = u.Step
	}
	if u.Reason != "" {
		st.Reason = u.Reason
	}
	if u.Domain != "" {
		st.Domain = u.Domain
	}
	if u.EnvSource != "" {
		st.EnvSource = u.EnvSource
	}
	for topic, text := range u.Warnings {
		if text = oneLine(text); text == "" {
			delete(st.Warnings, topic)
			continue
		}
		if st.Warnings == nil {
			st.Warnings = map[string]string{}
		}
		st.Warnings[topic] = text
	}
	if u.Backup != nil {
		st.Backup = u.Backup
	}
	st.Updated = time.Now().UTC().Truncate(time.Second)
	_, st.FailedFlag = FailedReason(h)
	data, _ := json.MarshalIndent(st, "", "  ")
	if _, err := h.WriteFile(StateFile, append(data, '\n'), 0o644); err != nil {
		return err
	}
	if st.State == Ready {
		return h.Remove(StatusPage)
	}
	page, err := RenderPage(st)
	if err != nil {
		return err
	}
	_, err = h.WriteFile(StatusPage, page, 0o644)
	return err
}

// FailedReason returns the reason recorded in the failed flag and whether
// the flag exists.
func FailedReason(h *host.Host) (string, bool) {
	data, err := h.ReadFile(FailedFlag)
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(data)), true
}

// Fail marks the appliance failed: the failed flag (kept if it already
// exists, so the first reason wins), the state, the status page and the
// console marker. The flag blocks restarts until an operator removes it.
func Fail(h *host.Host, step, reason string) error {
	reason = oneLine(reason)
	if prev, ok := FailedReason(h); ok && prev != "" {
		reason = prev
	} else if _, err := h.WriteFile(FailedFlag, []byte(reason+"\n"), 0o644); err != nil {
		return err
	}
	err := Update(h, State{State: Failed, Step: step, Reason: reason})
	Console(h, FailedMarker+": "+reason)
	return err
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "\r", "")
	return strings.ReplaceAll(s, "\n", "; ")
}

//go:embed page.html.tmpl
var pageTmpl string

var page = template.Must(template.New("page").Parse(pageTmpl))

// RenderPage renders the HTML status page for st.
func RenderPage(st State) ([]byte, error) {
	var b bytes.Buffer
	title := map[string]string{
		Unconfigured: "Appliance not configured",
		Preparing:    "Appliance is starting",
		Starting:     "Appliance is starting",
		Standby:      "Appliance in standby",
		Failed:       "Appliance failed",
		Ready:        "Appliance is up",
	}[st.State]
	if title == "" {
		title = "Appliance status: " + st.State
	}
	err := page.Execute(&b, struct {
		State
		Title   string
		Refresh bool
	}{st, title, st.State == Preparing || st.State == Starting || st.State == Unconfigured})
	return b.Bytes(), err
}
