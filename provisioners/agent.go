package provisioners

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Agent installs the in-VM agent: the static ecs-agent binary and its
// systemd units, enabled the way `systemctl enable` does (symlinks in
// /etc/systemd/system/*.wants), so it also works offline.
type Agent struct {
	// Binary is the local ecs-agent binary (default ../bin/ecs-agent,
	// relative to the template, as built by `make build`).
	Binary string `yaml:"binary"`
	// Units is a local directory of systemd unit files (default
	// systemd/, relative to the template). A missing default directory
	// installs no units.
	Units string `yaml:"units"`
	// Enable lists the units to enable (default: every unit with an
	// [Install] section).
	Enable []string `yaml:"enable"`
	// Destination of the binary (default /usr/local/bin/ecs-agent).
	Destination string `yaml:"destination"`

	units []string // unit file paths
}

var unitSuffixes = []string{".service", ".timer", ".socket", ".path", ".target", ".mount"}

// Type implements Provisioner.
func (*Agent) Type() string { return "agent" }

// Check implements Provisioner.
func (g *Agent) Check(dir string) []FieldError {
	var errs []FieldError
	if g.Binary == "" {
		g.Binary = "../bin/ecs-agent"
	}
	g.Binary = absPath(dir, g.Binary)
	if fi, err := os.Stat(g.Binary); err != nil {
		errs = append(errs, fieldErr("binary", "%v (run `make build` first)", cleanErr(err)))
	} else if !fi.Mode().IsRegular() {
		errs = append(errs, fieldErr("binary", "%s is not a regular file", g.Binary))
	}
	if g.Destination == "" {
		g.Destination = "/usr/local/bin/ecs-agent"
	}
	if m := validGuestPath(g.Destination); m != "" {
		errs = append(errs, fieldErr("destination", "%s", m))
	}
	explicit := g.Units != ""
	if !explicit {
		g.Units = "systemd"
	}
	g.Units = absPath(dir, g.Units)
	ents, err := os.ReadDir(g.Units)
	switch {
	case err != nil && explicit:
		errs = append(errs, fieldErr("units", "%v", cleanErr(err)))
	case err == nil:
		for _, e := range ents {
			for _, s := range unitSuffixes {
				if strings.HasSuffix(e.Name(), s) && e.Type().IsRegular() {
					g.units = append(g.units, filepath.Join(g.Units, e.Name()))
				}
			}
		}
		sort.Strings(g.units)
	}
	have := map[string]bool{}
	for _, u := range g.units {
		have[filepath.Base(u)] = true
	}
	for i, u := range g.Enable {
		if !have[u] {
			errs = append(errs, fieldErr(fmt.Sprintf("enable[%d]", i), "no unit %q in %s", u, g.Units))
		}
	}
	return errs
}

// CheckProduction implements Provisioner: nothing a production variant refuses.
func (*Agent) CheckProduction() []FieldError { return nil }

// Requires implements Provisioner: it only places files.
func (*Agent) Requires() Requirement { return Requirement{Need: NeedFiles} }

// Inputs implements Provisioner.
func (g *Agent) Inputs() []string { return append([]string{g.Binary}, g.units...) }

// Place implements Placer.
func (g *Agent) Place(ctx context.Context, a *Archive) error {
	root := Owner{"root", "root"}
	if err := a.LocalFile(g.Binary, g.Destination, 0o755, root); err != nil {
		return err
	}
	enable := map[string]bool{}
	for _, u := range g.Enable {
		enable[u] = true
	}
	const sys = "/etc/systemd/system"
	for _, u := range g.units {
		base := filepath.Base(u)
		if err := a.LocalFile(u, path.Join(sys, base), 0o644, root); err != nil {
			return err
		}
		data, err := os.ReadFile(u)
		if err != nil {
			return err
		}
		targets, instance := installTargets(data)
		if len(g.Enable) > 0 && !enable[base] || len(targets) == 0 {
			continue
		}
		link := base
		if strings.Contains(base, "@.") {
			if instance == "" {
				continue // a template unit is enabled per instance, at run time
			}
			link = strings.Replace(base, "@.", "@"+instance+".", 1)
		}
		for _, t := range targets {
			if err := a.Symlink(path.Join(sys, t, link), path.Join(sys, base), root); err != nil {
				return err
			}
		}
	}
	return nil
}

// installTargets returns the ".wants"/".requires" directories a unit's
// [Install] section asks for, and its DefaultInstance.
func installTargets(unit []byte) (out []string, instance string) {
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "[") {
			section = l
			continue
		}
		if section != "[Install]" {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		if strings.TrimSpace(k) == "DefaultInstance" {
			instance = strings.TrimSpace(v)
		}
		suffix := map[string]string{"WantedBy": ".wants", "RequiredBy": ".requires", "UpheldBy": ".upholds"}[strings.TrimSpace(k)]
		if suffix == "" {
			continue
		}
		for _, t := range strings.Fields(v) {
			out = append(out, t+suffix)
		}
	}
	return out, instance
}
