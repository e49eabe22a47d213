// Package systemd holds the ecs-agent's systemd units and installs them
// into a root filesystem (a mounted image or the running system), enabling
// them the way `systemctl enable` does, without needing systemd.
package systemd

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

//go:embed *.service *.timer *.path
var units embed.FS

// UnitDir is where the units are installed.
const UnitDir = "/etc/systemd/system"

// AgentBinary is where the units expect the agent.
const AgentBinary = "/usr/local/bin/ecs-agent"

// Enabled lists the units to enable, with the target that wants them.
var Enabled = map[string]string{
	"appliance.service":        "multi-user.target",
	"ecs-agent-deploy.service": "multi-user.target",
	"appliance-backup.timer":   "timers.target",
	"appliance-update.timer":   "timers.target",
	"ecs-ca-crl.path":          "prepare-ecs.service",
}

// Names returns the unit file names, sorted.
func Names() []string {
	entries, _ := fs.ReadDir(units, ".")
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// Unit returns the content of one unit file.
func Unit(name string) ([]byte, error) { return units.ReadFile(name) }

// Install writes every unit to root/etc/systemd/system (mode 0644) and
// creates the .wants symlinks of the enabled ones. root "/" is the
// running system (run `systemctl daemon-reload` afterwards).
func Install(root string) ([]string, error) {
	dir := filepath.Join(root, UnitDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var written []string
	for _, n := range Names() {
		data, _ := units.ReadFile(n)
		p := filepath.Join(dir, n)
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			return written, err
		}
		if err := os.Rename(tmp, p); err != nil {
			os.Remove(tmp)
			return written, err
		}
		written = append(written, filepath.Join(UnitDir, n))
	}
	for unit, target := range Enabled {
		wants := filepath.Join(dir, target+".wants")
		if err := os.MkdirAll(wants, 0o755); err != nil {
			return written, err
		}
		link := filepath.Join(wants, unit)
		os.Remove(link)
		if err := os.Symlink(filepath.Join(UnitDir, unit), link); err != nil {
			return written, fmt.Errorf("enable %s: %w", unit, err)
		}
		written = append(written, filepath.Join(UnitDir, target+".wants", unit))
	}
	return written, nil
}
