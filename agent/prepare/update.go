package prepare

import (
	"context"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
)

// Update paths and names (manual §4.2, §4.3, §4.5).
const (
	UpdateTimer = "appliance-update.timer"
	// UpdateTimerDropIn carries appliance.update.oncalendar.
	UpdateTimerDropIn = "/etc/systemd/system/appliance-update.timer.d/ecs-agent.conf"
	// UpdateTimerLink enables the timer (appliance.update.automatic).
	UpdateTimerLink = "/etc/systemd/system/timers.target.wants/appliance-update.timer"
	// UnattendedConf is the appliance's unattended-upgrades configuration.
	UnattendedConf = "/etc/apt/apt.conf.d/51ecs-appliance-upgrades"
	// UpdateDump is the dump taken before PostgreSQL is upgraded.
	UpdateDump = PGDumpDir + "/ecs-update.pgdump"
	// RebootRequired is written by Debian's packages (kernel, libc…).
	RebootRequired = "/run/reboot-required"
	UpdateMetrics  = MetricsDir + "/appliance_update.prom"
	// DefaultUpdateCalendar is the timer's schedule without
	// appliance.update.oncalendar: after the nightly backup (00:30).
	DefaultUpdateCalendar = "*-*-* 06:30:00"
)

// UpdateFlags are the /app/etc/flags/force.update.* flags of manual §4.3:
// each forces its part of the next update run and is removed by it.
var UpdateFlags = []string{"appliance", "ecs", "system", "docker", "postgres", "letsencrypt"}

func updateFlag(name string) string { return FlagsDir + "/force.update." + name }

// stepTimers is prepare-appliance's timers step: appliance.update.automatic
// (default true) enables appliance-update.timer, false disables it (a
// manual `systemctl start appliance-update` still works);
// appliance.update.oncalendar replaces its schedule (default daily 06:30).
func (a *Agent) stepTimers(ctx context.Context, e *Env) error {
	cal := e.Str("appliance.update.oncalendar")
	changed := false
	if cal != "" {
		if strings.ContainsAny(cal, "\n\r") {
			return fmt.Errorf("appliance.update.oncalendar: %q is not one calendar expression", cal)
		}
		c, err := a.Host.WriteFile(UpdateTimerDropIn, []byte("# appliance.update.oncalendar (ecs-agent)\n[Timer]\nOnCalendar=\nOnCalendar="+cal+"\n"), 0o644)
		if err != nil {
			return err
		}
		changed = c
	} else if a.Host.Exists(UpdateTimerDropIn) {
		if err := a.Host.Remove(UpdateTimerDropIn); err != nil {
			return err
		}
		changed = true
	}
	if changed {
		if err := a.systemctl(ctx, "daemon-reload"); err != nil {
			return err
		}
	}
	if !e.Bool("appliance.update.automatic", true) {
		if !a.Host.Exists(UpdateTimerLink) {
			return nil
		}
		a.logf("prepare-appliance/timers: appliance.update.automatic is false: %s disabled (manual updates: systemctl start appliance-update)", UpdateTimer)
		if err := a.Host.Remove(UpdateTimerLink); err != nil {
			return err
		}
		return a.systemctl(ctx, "stop", UpdateTimer)
	}
	linked, err := a.Host.Symlink("/etc/systemd/system/"+UpdateTimer, UpdateTimerLink)
	switch {
	case err != nil:
		return err
	case changed:
		return a.systemctl(ctx, "restart", UpdateTimer)
	case linked:
		return a.systemctl(ctx, "start", UpdateTimer)
	}
	return nil
}

// UpdateReport is what an update run did.
type UpdateReport struct {
	Upgradable   []string `json:"upgradable,omitempty"`
	Docker       bool     `json:"docker"`
	Postgres     bool     `json:"postgres"`
	Kernel       bool     `json:"kernel"`
	Flags        []string `json:"flags,omitempty"`
	Reboot       bool     `json:"reboot"`
	RestartStack bool     `json:"restart"`
	// Images are the registry lookups of the images with a ref.
	Images []PullResult `json:"images,omitempty"`
}

// Update is `ecs-agent update` (appliance-update.service, manual §4.5):
// apt-get update; the upgradable packages decide the precautions: docker
// or PostgreSQL packages stop the appliance first (PostgreSQL: after a
// dump of the database to /data/ecs-pgdump/ecs-update.pgdump); the system
// packages are upgraded by unattended-upgrades; the ACME certificate is
// renewed when due; then the appliance restarts (prepare-ecs reloads
// changed or pushed images and runs the migrations after a dump), or the
// machine reboots when a package asks for it (kernel). The
// force.update.* flags force their part. A failure marks the appliance
// failed with the reason.
func (a *Agent) Update(ctx context.Context) (err error) {
	const step = "appliance-update"
	if err := a.checkBlocked(); err != nil {
		return err
	}
	e, err := a.loadActive()
	if err != nil {
		return a.fail(step, err)
	}
	start := time.Now()
	var rep UpdateReport
	defer func() {
		a.writeUpdateMetrics(start, rep, err)
	}()
	flags := map[string]bool{}
	for _, f := range UpdateFlags {
		if a.Host.Exists(updateFlag(f)) {
			flags[f] = true
			rep.Flags = append(rep.Flags, f)
		}
	}
	if len(rep.Flags) > 0 {
		a.logf("%s: forced by %s", step, strings.Join(rep.Flags, ", "))
	}
	fail := func(what string, err error) error {
		return a.fail(step, fmt.Errorf("%s: %w", what, err))
	}
	apt := func(args ...string) host.Cmd {
		return host.Cmd{Name: "apt-get", Args: args, Env: []string{"DEBIAN_FRONTEND=noninteractive"}, Stdout: a.logWriter(), Stderr: a.logWriter()}
	}
	if _, err := a.Host.RunCmd(ctx, apt("update")); err != nil {
		return fail("apt-get update", err)
	}
	out, err := a.Host.RunCmd(ctx, host.Cmd{Name: "apt-get", Args: []string{"-s", "-o", "Debug::NoLocking=1", "dist-upgrade"}, Env: []string{"DEBIAN_FRONTEND=noninteractive", "LANG=C"}})
	if err != nil {
		return fail("apt-get -s dist-upgrade", err)
	}
	rep.Upgradable = upgradable(string(out))
	for _, p := range rep.Upgradable {
		switch {
		case p == "docker.io" || p == "containerd" || p == "runc" || p == "docker-compose" || strings.HasPrefix(p, "docker-"):
			rep.Docker = true
		case strings.HasPrefix(p, "postgresql"), strings.HasPrefix(p, "libpq"):
			rep.Postgres = true
		case strings.HasPrefix(p, "linux-image"):
			rep.Kernel = true
		}
	}
	rep.Docker = rep.Docker || flags["docker"]
	rep.Postgres = rep.Postgres || flags["postgres"]
	system := len(rep.Upgradable) > 0 || flags["system"]
	a.logf("%s: %d upgradable packages (docker: %v, postgresql: %v, kernel: %v)", step, len(rep.Upgradable), rep.Docker, rep.Postgres, rep.Kernel)
	_ = status.Update(a.Host, status.State{Step: step})
	stopped := false
	if rep.Docker || rep.Postgres {
		a.logf("%s: stopping the appliance for the docker/PostgreSQL upgrade", step)
		if err := a.systemctl(ctx, "stop", "appliance.service"); err != nil {
			return fail("stopping the appliance", err)
		}
		stopped = true
	}
	if rep.Postgres {
		db, err := dbName(e)
		if err != nil {
			return a.fail(step, err)
		}
		if ok, err := a.DatabaseExists(ctx, db); err == nil && ok {
			n, err := a.DumpDatabase(ctx, db, UpdateDump)
			if err != nil {
				return fail("dump before the PostgreSQL upgrade", err)
			}
			a.logf("%s: dumped database %s to %s (%d bytes)", step, db, UpdateDump, n)
		}
	}
	if system {
		if _, err := a.Host.WriteFile(UnattendedConf, []byte(unattendedConf), 0o644); err != nil {
			return a.fail(step, err)
		}
		a.logf("%s: unattended-upgrade", step)
		c := host.Cmd{Name: "unattended-upgrade", Args: []string{"-v"}, Env: []string{"DEBIAN_FRONTEND=noninteractive"}, Stdout: a.logWriter(), Stderr: a.logWriter()}
		if _, err := a.Host.RunCmd(ctx, c); err != nil {
			return fail("unattended-upgrade", err)
		}
	}
	if e.Bool("appliance.ssl.letsencrypt.enabled", false) {
		if err := a.RenewCertificate(ctx, ACMEOptions{Force: flags["letsencrypt"]}); err != nil {
			a.logf("%s: warning: certificate renewal: %v (the tls warning of the status page)", step, err)
		}
	}
	pulled, res, err := a.pullImages(ctx)
	rep.Images = res
	if err != nil {
		return fail("container images", err)
	}
	if flags["ecs"] || flags["appliance"] {
		// Reload every baked or pushed image on the restart.
		if _, err := a.Host.WriteFile(ForceLoadFlag, nil, 0o644); err != nil {
			return a.fail(step, err)
		}
	}
	for _, f := range rep.Flags {
		if err := a.Host.Remove(updateFlag(f)); err != nil {
			return a.fail(step, err)
		}
	}
	rep.Reboot = a.Host.Exists(RebootRequired)
	rep.RestartStack = stopped || rep.Docker || rep.Postgres || flags["ecs"] || flags["appliance"] || pulled || a.imagesChanged()
	if rep.Reboot {
		a.logf("%s: a package asks for a reboot (%s): rebooting", step, RebootRequired)
		a.writeUpdateMetrics(start, rep, nil)
		return a.systemctl(ctx, "reboot")
	}
	if rep.RestartStack {
		a.logf("%s: restarting the appliance (images, migrations after a dump)", step)
		if err := a.systemctl(ctx, "restart", "--no-block", "appliance.service"); err != nil {
			return fail("restarting the appliance", err)
		}
	}
	a.logf("%s: done", step)
	return nil
}

// imagesChanged reports whether a baked or pushed image tarball differs
// from the one loaded (its stamp), so prepare-ecs must load it.
func (a *Agent) imagesChanged() bool {
	list, err := a.ReadImageIndex()
	if err != nil {
		return false
	}
	for _, im := range list {
		fi, err := os.Stat(a.Host.Path(path.Join(ImagesDir, im.File)))
		if err != nil {
			continue
		}
		stamp, err := a.Host.ReadFile(path.Join(TagsDir, "images", unsafeName().ReplaceAllString(im.File, "_")+".loaded"))
		if err != nil || string(stamp) != imageStamp(fi, im.ID) {
			return true
		}
	}
	return false
}

// upgradable lists the packages an `apt-get -s dist-upgrade` would install
// or upgrade ("Inst NAME [old] (new …)").
func upgradable(sim string) []string {
	var pkgs []string
	for _, l := range strings.Split(sim, "\n") {
		if rest, ok := strings.CutPrefix(l, "Inst "); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				pkgs = append(pkgs, f[0])
			}
		}
	}
	sort.Strings(pkgs)
	return pkgs
}

// unattendedConf: the distribution's release, updates and security
// archives, no automatic reboot (the update decides), keep changed
// configuration files (as the original's 50unattended-upgrades).
const unattendedConf = `// Written by ecs-agent update (appliance-update.service); see docs/agent.md.
Unattended-Upgrade::Origins-Pattern {
        "origin=${distro_id},codename=${distro_codename}";
        "origin=${distro_id},codename=${distro_codename}-updates";
        "origin=${distro_id},codename=${distro_codename}-security,label=${distro_id}-Security";
        "origin=${distro_id},codename=${distro_codename},label=${distro_id}-Security";
};
Unattended-Upgrade::Automatic-Reboot "false";
Unattended-Upgrade::Remove-Unused-Dependencies "true";
Dpkg::Options {
   "--force-confdef";
   "--force-confold";
};
`

// writeUpdateMetrics writes the node-exporter textfile of the run.
func (a *Agent) writeUpdateMetrics(start time.Time, rep UpdateReport, err error) {
	var b strings.Builder
	metric := func(name, help string, v float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n%s %s\n", name, help, name, name, strconv.FormatFloat(v, 'f', -1, 64))
	}
	ok := 0.0
	if err == nil {
		ok = 1
	}
	metric("appliance_update_last_start_time_seconds", "Start of the last update run (Unix time).", float64(start.Unix()))
	metric("appliance_update_last_duration_seconds", "Duration of the last update run.", time.Since(start).Seconds())
	metric("appliance_update_last_success", "1 if the last update run succeeded, else 0.", ok)
	metric("appliance_update_last_upgradable_packages", "Packages the last update run found upgradable.", float64(len(rep.Upgradable)))
	metric("appliance_update_last_reboot", "1 if the last update run rebooted the machine.", map[bool]float64{true: 1}[rep.Reboot])
	updated := 0
	for _, r := range rep.Images {
		if r.Result == "updated" {
			updated++
		}
	}
	metric("appliance_update_last_images_updated", "Container images the last update run pulled in a newer version of.", float64(updated))
	if _, werr := a.Host.WriteFile(UpdateMetrics, []byte(b.String()), 0o644); werr != nil {
		a.logf("appliance-update: metrics: %v", werr)
	}
}
