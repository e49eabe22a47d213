package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBackupStatusAndRecoverCLI(t *testing.T) {
	root := t.TempDir()
	// No run yet.
	out, errOut, code := agent(t, nil, "--root", root, "backup", "status")
	if code != 0 || !strings.Contains(out, "last run:     never") || !strings.Contains(out, "last success: never") {
		t.Fatalf("no run: %d %q %q", code, out, errOut)
	}
	dir := filepath.Join(root, "var/lib/ecs-agent/backup")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "status.json"), []byte(`{"start":"2026-12-06T00:30:00Z","end":"2026-12-06T00:31:00Z","duration_seconds":60,
"result":"failed","error":"duplicity backup to s3://b: unreachable","target":"s3://b","last_success":"2026-12-05T00:31:00Z","last_success_bytes":4096}`), 0o600)
	out, _, code = agent(t, nil, "--root", root, "backup", "status")
	if code != 1 || !strings.Contains(out, "error:        duplicity backup to s3://b: unreachable") || !strings.Contains(out, "(4096 bytes of data)") || !strings.Contains(out, "target:       s3://b") {
		t.Errorf("failed run: %d %q", code, out)
	}
	out, _, _ = agent(t, nil, "--root", root, "backup", "status", "--json")
	if !strings.Contains(out, `"result": "failed"`) || !strings.Contains(out, `"last_success_bytes": 4096`) {
		t.Errorf("json: %q", out)
	}
	if log, _ := os.ReadFile(filepath.Join(root, "var/log/ecs-agent/commands.log")); !strings.Contains(string(log), "systemctl show appliance-backup.timer") {
		t.Errorf("status did not ask systemd for the next run: %q", log)
	}
	os.Remove(filepath.Join(root, "var/log/ecs-agent/commands.log"))
	// recover needs the confirmation: usage error, nothing done.
	_, errOut, code = agent(t, nil, "--root", root, "recover")
	if code != 2 || !strings.Contains(errOut, "--yes-i-am-sure") {
		t.Errorf("recover without confirmation: %d %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(root, "var/log/ecs-agent/commands.log")); err == nil {
		t.Error("recover without confirmation ran commands")
	}
}
