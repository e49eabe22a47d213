//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/prepare"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/integration/testimage"
)

// Issue 16's upgrade by image, in TestAppliance without a boot of its own:
// the first boot is appliance v1 on the ecs-data and ecs-volatile disks;
// at its end its state is recorded (recordUpgradeState) and it is powered
// off (ACPI). The second boot is appliance v2 — a later build of the same
// template (prepareTemplate with upgrade): the ECS stand-ins at
// upgradeVersion, whose migration adds a column and fills it from the rows
// there are, and one more Debian package — on the same disks, with the same
// env (plus metrics). checkUpgrade asserts the dump taken before the
// migration, the migration, and every document and row; checkDowngradeRefused,
// the last check of that boot, puts v1's ecs image back and restarts
// prepare-ecs.

const (
	// upgradeVersion is the stand-ins' version in appliance v2. The first
	// boot runs version 1 (baked) and then 2 (pushed by the deploy API), so
	// its data is at schema 2 when it is powered off.
	upgradeVersion = "3"
	// upgradeSchema is the schema version upgradeVersion migrates to.
	upgradeSchema = 3
	// upgradePackage is the Debian package appliance v2 adds (small, not
	// in v1).
	upgradePackage = "tree"
	// guestMigrateDump is prepare.MigrateDump.
	guestMigrateDump = prepare.MigrateDump
)

// upgradeStageYAML is the stage appliance v2's ci variant adds.
const upgradeStageYAML = `
name: ci-upgrade-package
mode: chroot
provisioners:
  - type: packages
    exclude_docs: true
    packages: [` + upgradePackage + `]
`

// upgradeState is what appliance v1 leaves on its disks.
type upgradeState struct {
	Snapshot string   // dataSnapshot
	Schema   string   // the stand-in's schema version in the database
	Image    string   // ecs/ecs:latest's image ID
	Migrated []string // prepare.MigratedHistory
	Dump     string   // mtime (s) of the pre-migration dump, or "none"
}

// pgRestore is the cluster's pg_restore in the guest.
const pgRestore = `$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_restore`

// guestState reads an upgradeState in the guest.
func guestState(t *testing.T, run func(*testing.T, string) string) upgradeState {
	t.Helper()
	st := upgradeState{Snapshot: run(t, dataSnapshot)}
	out := run(t, `cd / && runuser -u postgres -- psql -XAtq -d ecs -c 'SELECT max(version) FROM standin_schema'
docker image inspect --format '{{.Id}}' ecs/ecs:latest
stat -c %Y `+guestMigrateDump+` 2>/dev/null || echo none
cat `+prepare.MigratedHistory)
	l := strings.Split(strings.TrimSpace(out), "\n")
	if len(l) < 4 {
		t.Fatalf("state:\n%s", out)
	}
	st.Schema, st.Image, st.Dump, st.Migrated = l[0], l[1], l[2], l[3:]
	return st
}

// recordUpgradeState runs at the end of the first boot (appliance v1).
func recordUpgradeState(t *testing.T, run func(*testing.T, string) string) upgradeState {
	st := guestState(t, run)
	// Schema 2 by the image the deploy API pushed after the baked one;
	// schema 1 by the baked one when that check failed (reported there).
	if n := len(st.Migrated); n == 0 || st.Migrated[n-1] != st.Image || st.Schema != fmt.Sprint(n) {
		t.Errorf("appliance v1's data: schema %q, migrated images %v, ecs/ecs:latest %s; want one schema version per migrated image, the last ecs/ecs:latest", st.Schema, st.Migrated, st.Image)
	}
	t.Logf("appliance v1: schema %s, migrated by %v", st.Schema, st.Migrated)
	if !strings.Contains(st.Snapshot, "./e2e-doc.pdf\n") || !strings.Contains(st.Snapshot, "table public.standin_mail ecs ") {
		t.Errorf("appliance v1's snapshot lacks the upload or the mail table:\n%s", st.Snapshot)
	}
	if out := run(t, "dpkg-query -W "+upgradePackage+" 2>&1 || true"); !strings.Contains(out, "no packages found") {
		t.Errorf("appliance v1 has %s already: %s", upgradePackage, out)
	}
	return st
}

// buildUpgrade builds appliance v2 into work/v2 and returns its qcow2. The
// shared stages up to the stack come from the stage cache (the same
// definitions and files as v1's); the stack stage (other stand-ins), the
// agent stage and the ci variant's stages are built again.
func buildUpgrade(t *testing.T, work string, took *time.Duration) string {
	t.Helper()
	dir := filepath.Join(work, "v2")
	tmpl := prepareTemplate(t, dir, true)
	out := filepath.Join(dir, "out")
	start := time.Now()
	ecsImage(t, "build", tmpl, "-o", out, "--variant", ciVariant)
	*took = time.Since(start)
	t.Logf("built appliance v2 in %s", sec(*took))
	return filepath.Join(out, "ecs-appliance-"+ciVariant+".qcow2")
}

// upgradeEnv is env A with metrics on (the second boot's other checks),
// written beside it.
func upgradeEnv(t *testing.T, work, envA string) string {
	t.Helper()
	data, err := os.ReadFile(envA)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(work, "a-v2-env.yml")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	enableMetrics(t, p)
	ecsImage(t, "env", "validate", p)
	return p
}

// checkUpgrade: appliance v2, booted on v1's disks, took a dump before
// migrating (of the schema before), migrated, and has every document and
// row of v1; it runs its own image and has its new package.
func checkUpgrade(t *testing.T, vm *applianceVM, run func(*testing.T, string) string, before upgradeState, doc []byte, domain string) {
	port := vm.m.HostPort(443)
	if h := waitHealth(t, port, domain); h["version"] != upgradeVersion || h["schema"] != float64(upgradeSchema) {
		t.Errorf("/health of appliance v2: %v, want version %s at schema %d", h, upgradeVersion, upgradeSchema)
	}
	after := guestState(t, run)
	// Its own baked image, loaded over v1's stamp on the data volume.
	if want := testImageID(t, testimage.Standins(upgradeVersion)[0].Options); after.Image != want {
		t.Errorf("ecs/ecs:latest is %s, want appliance v2's baked image %s", after.Image, want)
	}
	if want := append(slices.Clone(before.Migrated), after.Image); !slices.Equal(after.Migrated, want) {
		t.Errorf("%s: %v, want %v", prepare.MigratedHistory, after.Migrated, want)
	}
	if out := run(t, "dpkg-query -W -f '${Status}' "+upgradePackage+" 2>&1 || true"); out != "install ok installed" {
		t.Errorf("appliance v2's package %s: %q", upgradePackage, out)
	}
	// The dump before the migration: taken in this boot, before the
	// migration ran (the journal's order), of the schema before it.
	if after.Dump == "none" || after.Dump == before.Dump {
		t.Errorf("%s: mtime %s (appliance v1's: %s): no dump taken in this boot", guestMigrateDump, after.Dump, before.Dump)
	}
	dump := run(t, pgRestore+" -f - -a -t standin_schema "+guestMigrateDump+" | grep -xE '[0-9]+'; echo subject=$("+pgRestore+" -f - -s "+guestMigrateDump+" | grep -c subject)")
	if dump != before.Schema+"\nsubject=0\n" {
		t.Errorf("the pre-migration dump: %q, want schema %s without the new column", dump, before.Schema)
	}
	j := run(t, "journalctl -b --no-pager -o cat -u prepare-ecs | grep -E 'dumped database|running ecs.web migrate|migrate: schema' || true")
	d, m := strings.Index(j, "dumped database ecs to "+guestMigrateDump), strings.Index(j, "running "+prepare.MigrateService+" migrate")
	if d < 0 || m < 0 || d > m {
		t.Errorf("prepare-ecs's journal: want the dump, then the migration:\n%s", j)
	}
	t.Logf("prepare-ecs: %s", strings.Join(strings.Fields(j), " "))
	// The migration, on the rows there were.
	if after.Schema != fmt.Sprint(upgradeSchema) {
		t.Errorf("schema %s after the migration, want %d", after.Schema, upgradeSchema)
	}
	if out := run(t, `cd / && runuser -u postgres -- psql -XAtq -d ecs -c "SELECT count(*) FROM standin_mail WHERE subject = 'e2e smtps'"`); out != "1\n" {
		t.Errorf("the migration did not fill the new column from v1's mail: %q", out)
	}
	// Nothing lost: every document (sha256) and every table's row count.
	if after.Snapshot != before.Snapshot {
		t.Errorf("appliance v2's data:\n%s\nwant appliance v1's:\n%s", after.Snapshot, before.Snapshot)
	}
	if status, got, err := httpsDo(port, domain, "GET", "/vault/e2e-doc.pdf", nil); err != nil || status != 200 || got != string(doc) {
		t.Errorf("appliance v1's upload through appliance v2: %d %v %q", status, err, got)
	}
}

// checkDowngradeRefused: going back to v1 on the migrated data is refused.
// Not by booting appliance v1 again (another ~5 min of CI): v1's baked ecs
// image (the same image ID) is loaded into appliance v2's Docker and
// prepare-ecs restarted, which is what v1's prepare-ecs would find — its
// image among the migrated ones, before the last. It leaves the appliance
// failed: the last check of its boot.
func checkDowngradeRefused(t *testing.T, c *communicator.Client, run func(*testing.T, string) string, v1Tarball string, before upgradeState) {
	// The checks before restarted the appliance: wait until it is ready.
	if out, err := runErr(run, t, `(for i in $(seq 450); do ecs-agent status | jq -e '.state == "ready"' >/dev/null && exit 0; sleep 2; done; ecs-agent status; exit 1)`); err != nil {
		t.Fatalf("the appliance is not ready: %v\n%s", err, out)
	}
	up := guestState(t, run)
	f, err := os.Open(v1Tarball)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var loaded []string
	if _, err := c.Run(context.Background(), "docker load", communicator.RunOptions{Stdin: f,
		Stdout: func(l string) { loaded = append(loaded, l) }, Stderr: func(l string) { loaded = append(loaded, l) }}); err != nil {
		t.Fatalf("docker load of v1's %s: %v\n%s", filepath.Base(v1Tarball), err, strings.Join(loaded, "\n"))
	}
	if id := strings.TrimSpace(run(t, "docker image inspect --format '{{.Id}}' ecs/ecs:latest")); len(before.Migrated) == 0 || id != before.Migrated[0] {
		t.Fatalf("ecs/ecs:latest is %s after loading v1's tarball, want v1's image %v", id, before.Migrated)
	}
	// prepare-ecs again (and the appliance, which requires it): the step a
	// boot of v1 would fail in, without prepare-env and prepare-appliance.
	out, err := runErr(run, t, "timeout 900 systemctl restart prepare-ecs")
	if err == nil {
		t.Fatalf("the appliance started with v1's image on data appliance v2 migrated:\n%s", out)
	}
	var st agentState
	if err := json.Unmarshal([]byte(run(t, "ecs-agent status")), &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "failed" || !strings.Contains(st.Reason, prepare.ErrOlderImage.Error()) || !strings.Contains(st.Reason, "going back to an older image") {
		t.Errorf("ecs-agent status: %q %q, want failed: %s", st.State, st.Reason, prepare.ErrOlderImage)
	}
	t.Logf("refused: %s", st.Reason)
	// Nothing touched: no migration, no dump, the history as it was.
	after := guestState(t, run)
	if after.Schema != up.Schema || after.Dump != up.Dump || !slices.Equal(after.Migrated, up.Migrated) {
		t.Errorf("after the refusal: schema %s, dump %s, migrated %v; before: %s, %s, %v", after.Schema, after.Dump, after.Migrated, up.Schema, up.Dump, up.Migrated)
	}
}

// checkInPlaceUpdate runs an in-place update (manual §4.2, §4.5) in the
// appliance: appliance-update.timer is enabled on its default schedule,
// and `systemctl start appliance-update` runs unattended-upgrades against
// the mirror, the certificate and image checks, and ends successful with
// its textfile metrics written, the appliance still serving.
func checkInPlaceUpdate(t *testing.T, run func(*testing.T, string) string) {
	out := run(t, "systemctl is-enabled appliance-update.timer; systemctl show -P TimersCalendar appliance-update.timer")
	if !strings.HasPrefix(out, "enabled") || !strings.Contains(out, "06:30:00") {
		t.Errorf("appliance-update.timer: %q, want enabled on the default 06:30", out)
	}
	// force.update.system (manual §4.3) makes the run call
	// unattended-upgrade even when nothing is upgradable.
	run(t, "touch "+prepare.FlagsDir+"/force.update.system && systemctl start appliance-update.service")
	out = run(t, "systemctl show -P Result appliance-update.service; cat "+prepare.UpdateMetrics+"; "+
		"ls "+prepare.FlagsDir+"; "+
		"journalctl -u appliance-update --no-pager -o cat | tail -n 40; "+
		// The run restarts the stack when it changed something: wait.
		"for i in $(seq 90); do c=$(curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1/); "+
		"case $c in [234]*) break;; esac; sleep 2; done; echo web $c")
	if !strings.HasPrefix(out, "success") {
		t.Errorf("appliance-update.service did not end successfully:\n%s", out)
	}
	for _, want := range []string{"appliance_update_last_success 1", "appliance-update: forced by system", "upgradable packages", "appliance-update: unattended-upgrade", "appliance-update: done"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q after the update run:\n%s", want, out)
		}
	}
	if strings.Contains(out, "force.update.system") {
		t.Errorf("the force.update.system flag was not removed by the run:\n%s", out)
	}
	if strings.Contains(out, "web 5") || !strings.Contains(out, "web ") {
		t.Errorf("the appliance does not serve after the update:\n%s", out)
	}
}
