package prepare

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/agent/status"
)

// The record of a backup run: status file, status page, metrics.

// BackupRecord is the outcome of the last backup run (BackupStatusFile).
type BackupRecord struct {
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	Duration    float64   `json:"duration_seconds"`
	Result      string    `json:"result"` // success, failed
	Error       string    `json:"error,omitempty"`
	Target      string    `json:"target,omitempty"`
	Type        string    `json:"type,omitempty"` // full, incremental
	SourceFiles int64     `json:"source_files,omitempty"`
	SourceBytes int64     `json:"source_bytes,omitempty"`
	Uploaded    int64     `json:"uploaded_bytes,omitempty"` // duplicity's TotalDestinationSizeChange
	DumpBytes   int64     `json:"dump_bytes,omitempty"`
	Warnings    []string  `json:"warnings,omitempty"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	// LastSuccessBytes is SourceBytes of the last successful run.
	LastSuccessBytes int64 `json:"last_success_bytes,omitempty"`
}

// BackupStatus is `ecs-agent backup status`: the last run and the next.
type BackupStatus struct {
	BackupRecord
	NextRun string `json:"next_run,omitempty"`
	Timer   string `json:"timer,omitempty"` // the timer's state (active, inactive, …)
}

// ReadBackupRecord returns the last recorded run (zero when none).
func (a *Agent) ReadBackupRecord() (BackupRecord, error) {
	var r BackupRecord
	data, err := a.Host.ReadFile(BackupStatusFile)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("%s: %w", a.Host.Path(BackupStatusFile), err)
	}
	return r, nil
}

// BackupStatus reports the last run and the next run of the timer.
func (a *Agent) BackupStatus(ctx context.Context) (BackupStatus, error) {
	r, err := a.ReadBackupRecord()
	st := BackupStatus{BackupRecord: r}
	st.NextRun, st.Timer = a.timerInfo(ctx, BackupTimer)
	return st, err
}

// timerInfo returns a timer's next elapse time and active state, as systemd
// reports them ("" when unknown).
func (a *Agent) timerInfo(ctx context.Context, timer string) (next, state string) {
	out, err := a.Host.Run(ctx, "systemctl", "show", timer, "--property=NextElapseUSecRealtime,ActiveState")
	if err != nil {
		return "", ""
	}
	for _, l := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(l), "=")
		switch k {
		case "NextElapseUSecRealtime":
			next = v
		case "ActiveState":
			state = v
		}
	}
	return next, state
}

// parseBackupStats reads duplicity's backup statistics.
func parseBackupStats(out string, rec *BackupRecord) {
	rec.Type = "incremental"
	if strings.Contains(out, "switching to full backup") || strings.Contains(out, "forcing full backup") || strings.Contains(out, "Full backup") {
		rec.Type = "full"
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "SourceFiles":
			rec.SourceFiles = n
		case "SourceFileSize":
			rec.SourceBytes = n
		case "TotalDestinationSizeChange":
			rec.Uploaded = n
		}
	}
}

// recordBackup writes the status file, the state summary (status page,
// warning on failure) and the metrics file. Errors are logged: the run's
// own outcome is what the unit reports.
func (a *Agent) recordBackup(ctx context.Context, rec BackupRecord) {
	if rec.Result == "failed" {
		a.logf("backup: FAILED: %s", rec.Error)
		a.report("ecs-agent.backup", "backup failed: "+rec.Error, map[string]string{"target": rec.Target})
	}
	data, _ := json.MarshalIndent(rec, "", "  ")
	if err := os.MkdirAll(a.Host.Path(BackupStateDir), 0o700); err != nil {
		a.logf("backup: %v", err)
	}
	if _, err := a.Host.WriteFile(BackupStatusFile, append(data, '\n'), 0o600); err != nil {
		a.logf("backup: recording the run: %v", err)
	}
	next, _ := a.timerInfo(ctx, BackupTimer)
	sum := status.Backup{LastRun: rec.Start.Truncate(time.Second), Result: rec.Result, Error: rec.Error,
		LastSuccess: rec.LastSuccess.Truncate(time.Second), Type: rec.Type, SizeBytes: rec.LastSuccessBytes,
		NextRun: next, Target: rec.Target}
	if err := status.SetBackup(a.Host, sum); err != nil {
		a.logf("backup: status: %v", err)
	}
	warn := ""
	if rec.Result == "failed" {
		warn = "backup failed at " + rec.Start.Format(time.RFC3339) + ": " + rec.Error
	}
	if err := status.Warn(a.Host, "backup", warn); err != nil {
		a.logf("backup: status: %v", err)
	}
	if _, err := a.Host.WriteFile(BackupMetrics, renderBackupMetrics(rec), 0o644); err != nil {
		a.logf("backup: metrics: %v", err)
	}
}

// renderBackupMetrics renders the node-exporter textfile of the last run.
func renderBackupMetrics(rec BackupRecord) []byte {
	var b strings.Builder
	metric := func(name, typ, help string, v float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, typ, name, strconv.FormatFloat(v, 'f', -1, 64))
	}
	ok := 0.0
	if rec.Result == "success" {
		ok = 1
	}
	unix := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.Unix())
	}
	metric("appliance_backup_last_start_time_seconds", "gauge", "Start of the last backup run (Unix time).", unix(rec.Start))
	metric("appliance_backup_last_duration_seconds", "gauge", "Duration of the last backup run.", rec.Duration)
	metric("appliance_backup_last_success", "gauge", "1 if the last backup run succeeded, else 0.", ok)
	metric("appliance_backup_last_success_time_seconds", "gauge", "End of the last successful backup run (Unix time; 0: never).", unix(rec.LastSuccess))
	metric("appliance_backup_last_data_size_bytes", "gauge", "Bytes of data (storage vault and database dump) in the last successful backup.", float64(rec.LastSuccessBytes))
	metric("appliance_backup_last_upload_bytes", "gauge", "Bytes the last backup run added to the target.", float64(rec.Uploaded))
	metric("appliance_backup_last_full", "gauge", "1 if the last backup run was a full backup.", map[bool]float64{true: 1}[rec.Type == "full"])
	return []byte(b.String())
}
