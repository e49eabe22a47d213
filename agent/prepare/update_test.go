package prepare

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
)

const aptSim = `NOTE: This is only a simulation!
Reading package lists...
Inst base-files [12.4+deb12u10] (12.4+deb12u11 Debian:12.11/stable [amd64])
Inst docker.io [20.10.24+dfsg1-1+b3] (20.10.24+dfsg1-1+deb12u1 Debian-Security:12/stable-security [amd64])
Inst postgresql-15 [15.12-0+deb12u2] (15.13-0+deb12u1 Debian:12.11/stable [amd64])
Inst linux-image-6.1.0-37-amd64 (6.1.140-1 Debian-Security:12/stable-security [amd64])
Conf base-files (12.4+deb12u11 Debian:12.11/stable [amd64])
`

func indexOf(t *testing.T, cmds []string, prefix string) int {
	t.Helper()
	for i, c := range cmds {
		if strings.HasPrefix(c, prefix) {
			return i
		}
	}
	t.Fatalf("no command %q in:\n%s", prefix, strings.Join(cmds, "\n"))
	return -1
}

// Docker, PostgreSQL and kernel upgrades: the appliance stops first, the
// database is dumped before PostgreSQL is upgraded, unattended-upgrade
// runs, and the machine reboots when a package asks for it.
func TestUpdatePrecautions(t *testing.T) {
	a, rec := testAgent(t)
	activate(t, a, siteEnv)
	fakeSystem(t, a)
	rec.Responses["apt-get -s"] = host.Response{Stdout: aptSim}
	rec.Responses["runuser -u postgres -- psql"] = host.Response{Stdout: "1\n"}
	put(t, a, RebootRequired, []byte("*** System restart required ***\n"), 0o644)
	put(t, a, updateFlag("system"), nil, 0o644)
	if err := a.Update(context.Background()); err != nil {
		t.Fatal(err)
	}
	cmds := rec.Recorded()
	upd := indexOf(t, cmds, "apt-get update")
	stop := indexOf(t, cmds, "systemctl stop appliance.service")
	dump := indexOf(t, cmds, "runuser -u postgres -- pg_dump --format=custom")
	uu := indexOf(t, cmds, "unattended-upgrade -v")
	reboot := indexOf(t, cmds, "systemctl reboot")
	if !(upd < stop && stop < dump && dump < uu && uu < reboot) {
		t.Errorf("order: %v", cmds)
	}
	if !a.Host.Exists(UpdateDump) || mode(t, a, UpdateDump) != 0o600 {
		t.Error("no dump before the PostgreSQL upgrade")
	}
	if conf := read(t, a, UnattendedConf); !strings.Contains(conf, `Automatic-Reboot "false"`) || !strings.Contains(conf, "--force-confold") {
		t.Errorf("unattended-upgrades config:\n%s", conf)
	}
	if a.Host.Exists(updateFlag("system")) {
		t.Error("force.update.system not removed")
	}
	prom := read(t, a, UpdateMetrics)
	for _, want := range []string{"appliance_update_last_success 1\n", "appliance_update_last_upgradable_packages 4\n", "appliance_update_last_reboot 1\n"} {
		if !strings.Contains(prom, want) {
			t.Errorf("metrics lack %q:\n%s", want, prom)
		}
	}
}

// Nothing to upgrade and no flag: no stop, no upgrade, no restart.
func TestUpdateNothingToDo(t *testing.T) {
	a, rec := testAgent(t)
	activate(t, a, siteEnv)
	rec.Responses["apt-get -s"] = host.Response{Stdout: "Reading package lists...\n0 upgraded, 0 newly installed.\n"}
	if err := a.Update(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, c := range rec.Recorded() {
		if strings.HasPrefix(c, "systemctl") || strings.HasPrefix(c, "unattended-upgrade") {
			t.Errorf("unexpected %q", c)
		}
	}
	// force.update.ecs: images reloaded by a restart of the appliance.
	put(t, a, updateFlag("ecs"), nil, 0o644)
	if err := a.Update(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rec.Recorded(), "systemctl restart --no-block appliance.service") || !a.Host.Exists(ForceLoadFlag) || a.Host.Exists(updateFlag("ecs")) {
		t.Errorf("force.update.ecs: %v", rec.Recorded())
	}
}

// A failing upgrade marks the appliance failed with the reason; the next
// run is blocked until the flag is removed (manual §4.3).
func TestUpdateFailureMarksFailed(t *testing.T) {
	a, rec := testAgent(t)
	activate(t, a, siteEnv)
	rec.Responses["apt-get -s"] = host.Response{Stdout: aptSim}
	rec.Responses["unattended-upgrade"] = host.Response{Err: errors.New("dpkg: error processing package docker.io (--configure)")}
	err := a.Update(context.Background())
	if err == nil {
		t.Fatal("no error")
	}
	reason, ok := status.FailedReason(a.Host)
	if !ok || !strings.Contains(reason, "appliance-update: unattended-upgrade: dpkg: error processing package docker.io") {
		t.Fatalf("failed flag: %q %v", reason, ok)
	}
	if !strings.Contains(read(t, a, UpdateMetrics), "appliance_update_last_success 0\n") {
		t.Error("metrics do not show the failure")
	}
	if err := a.Update(context.Background()); !errors.Is(err, ErrBlocked) {
		t.Fatalf("second run: %v", err)
	}
}

// appliance.update.automatic and .oncalendar drive the timer.
func TestUpdateTimer(t *testing.T) {
	a, rec := testAgent(t)
	ctx := context.Background()
	activate(t, a, siteEnv)
	if err := a.stepTimers(ctx, mustEnv(t, a)); err != nil {
		t.Fatal(err)
	}
	if !a.Host.Exists(UpdateTimerLink) || a.Host.Exists(UpdateTimerDropIn) || !slices.Contains(rec.Recorded(), "systemctl start appliance-update.timer") {
		t.Fatalf("default: %v", rec.Recorded())
	}
	n := len(rec.Recorded())
	if err := a.stepTimers(ctx, mustEnv(t, a)); err != nil || len(rec.Recorded()) != n {
		t.Fatalf("second run not idempotent: %v %v", err, rec.Recorded()[n:])
	}
	activate(t, a, strings.Replace(siteEnv, "appliance:\n", "appliance:\n  update:\n    oncalendar: Sun *-*-* 06:30:00\n", 1))
	if err := a.stepTimers(ctx, mustEnv(t, a)); err != nil {
		t.Fatal(err)
	}
	if got := read(t, a, UpdateTimerDropIn); !strings.Contains(got, "OnCalendar=\nOnCalendar=Sun *-*-* 06:30:00\n") {
		t.Errorf("drop-in:\n%s", got)
	}
	if r := rec.Recorded()[n:]; !slices.Contains(r, "systemctl daemon-reload") || !slices.Contains(r, "systemctl restart appliance-update.timer") {
		t.Errorf("calendar change: %v", r)
	}
	activate(t, a, strings.Replace(siteEnv, "appliance:\n", "appliance:\n  update:\n    automatic: false\n", 1))
	if err := a.stepTimers(ctx, mustEnv(t, a)); err != nil {
		t.Fatal(err)
	}
	if a.Host.Exists(UpdateTimerLink) || a.Host.Exists(UpdateTimerDropIn) || !slices.Contains(rec.Recorded(), "systemctl stop appliance-update.timer") {
		t.Errorf("automatic false: %v", rec.Recorded())
	}
}

// appliance.backup.mount: mounted before duplicity runs, unmounted after,
// the options (a password) never in the log. Recorded: the host has no
// cifs (see docs/agent.md).
func TestBackupMountsTarget(t *testing.T) {
	a, rec := testAgent(t)
	env := strings.Replace(siteEnv, "appliance:\n", `appliance:
  backup:
    url: file:///mnt/appliance-backup-mount/ecs
    mount:
      type: cifs
      source: //192.0.2.7/datavolume
      target: /mnt/appliance-backup-mount
      options: user=backup,pass=s3cr3t-pw
    encrypt: |
`+indentKey(t)+"\n", 1)
	activate(t, a, env)
	rec.Responses["runuser -u postgres -- psql"] = host.Response{Stdout: "1\n"}
	put(t, a, StorageVault+"/a/doc.pdf", []byte("%PDF"), 0o640)
	if err := a.Backup(context.Background(), BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	cmds := rec.Recorded()
	mount := indexOf(t, cmds, "mount -t cifs -o user=backup,pass=s3cr3t-pw //192.0.2.7/datavolume "+a.Host.Path("/mnt/appliance-backup-mount"))
	dup := indexOf(t, cmds, "duplicity incremental")
	umount := indexOf(t, cmds, "umount "+a.Host.Path("/mnt/appliance-backup-mount"))
	if !(mount < dup && dup < umount) {
		t.Errorf("order: %v", cmds)
	}
	if log := a.Log.(interface{ String() string }).String(); strings.Contains(log, "s3cr3t-pw") {
		t.Errorf("the mount password is in the log:\n%s", log)
	}
}

func indentKey(t *testing.T) string {
	t.Helper()
	data := read(t, &Agent{Host: host.New("/", nil)}, "/"+mustAbs(t, "../../env/testdata/pgp-ed25519-secret.asc"))
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(data), "\n") {
		b.WriteString("      " + l + "\n")
	}
	return strings.TrimRight(b.String(), "\n")
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// The force.update.* flags of manual §4.3 with nothing upgradable: each
// forces its part and is removed by the run.
func TestUpdateFlags(t *testing.T) {
	for _, c := range []struct {
		flag           string
		stop, dump     bool
		system, reload bool
		restart        bool
	}{
		{flag: "docker", stop: true, restart: true},
		{flag: "postgres", stop: true, dump: true, restart: true},
		{flag: "system", system: true},
		{flag: "ecs", reload: true, restart: true},
		{flag: "appliance", reload: true, restart: true},
	} {
		t.Run(c.flag, func(t *testing.T) {
			a, rec := testAgent(t)
			activate(t, a, siteEnv)
			fakeSystem(t, a)
			rec.Responses["apt-get -s"] = host.Response{Stdout: "Reading package lists...\n0 upgraded, 0 newly installed.\n"}
			rec.Responses["runuser -u postgres -- psql"] = host.Response{Stdout: "1\n"}
			put(t, a, updateFlag(c.flag), nil, 0o644)
			if err := a.Update(context.Background()); err != nil {
				t.Fatal(err)
			}
			cmds := rec.Recorded()
			has := func(prefix string) bool {
				return slices.ContainsFunc(cmds, func(s string) bool { return strings.HasPrefix(s, prefix) })
			}
			for _, w := range []struct {
				what string
				got  bool
				want bool
			}{
				{"stop the appliance", has("systemctl stop appliance.service"), c.stop},
				{"dump the database", has("runuser -u postgres -- pg_dump") && a.Host.Exists(UpdateDump), c.dump},
				{"unattended-upgrade", has("unattended-upgrade"), c.system},
				{"reload every image (" + ForceLoadFlag + ")", a.Host.Exists(ForceLoadFlag), c.reload},
				{"restart the appliance", has("systemctl restart --no-block appliance.service"), c.restart},
			} {
				if w.got != w.want {
					t.Errorf("force.update.%s: %s: %v, want %v\n%s", c.flag, w.what, w.got, w.want, strings.Join(cmds, "\n"))
				}
			}
			if a.Host.Exists(updateFlag(c.flag)) {
				t.Errorf("force.update.%s not removed", c.flag)
			}
			if prom := read(t, a, UpdateMetrics); !strings.Contains(prom, "appliance_update_last_success 1\n") {
				t.Errorf("metrics:\n%s", prom)
			}
		})
	}
}
