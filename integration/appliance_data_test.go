//go:build integration

package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/testenv/backuptarget"
)

// Issue 16 in the appliance's first boot (checkDataLifecycle, called from
// TestAppliance): the backup's refusals, a backup to the default file://
// target and to S3 (versitygw on the build host), and a disaster recovery
// from S3 after the database and the storage vault were destroyed.

const (
	// guestHost is the build host as the guest sees it under QEMU's user
	// networking: slirp hands connections to it to the host's loopback.
	guestHost = "10.0.2.2"
	s3Access  = backuptarget.S3Access
	s3Secret  = backuptarget.S3Secret
	s3Bucket  = backuptarget.S3Bucket
	// defaultBackupURL is appliance.backup.url as `ecs-image env create`
	// writes it.
	defaultBackupURL = "    url: file:///volatile/ecs-backup-test/\n"
	guestVault       = "/data/ecs-storage-vault"
	// guestBackupMetrics is the backup's node-exporter textfile.
	guestBackupMetrics = "/var/lib/prometheus/node-exporter/appliance_backup.prom"
)

// guestS3 runs versitygw (package backuptarget) on the host's loopback,
// reachable from the guest at guestHost; it returns the port and the
// backend directory (bucket s3Bucket created).
func guestS3(t *testing.T) (int, string) {
	t.Helper()
	s3 := backuptarget.StartS3(t)
	return s3.Port, s3.Root
}

// guestSSHD runs OpenSSH's sshd (package backuptarget) on the host's
// loopback, reachable from the guest at guestHost. It returns the port, the
// known_hosts line of its host key as the guest names it, and the client's
// private key.
func guestSSHD(t *testing.T) (int, string, []byte) {
	t.Helper()
	s := backuptarget.StartSSHD(t)
	key, err := os.ReadFile(s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	return s.Port, s.KnownHosts(guestHost), key
}

// agentState is the part of `ecs-agent status` and /ecs-status.json the
// checks read.
type agentState struct {
	State    string            `json:"state"`
	Reason   string            `json:"reason"`
	Warnings map[string]string `json:"warnings"`
	Backup   *struct {
		Result      string    `json:"result"`
		Error       string    `json:"error"`
		LastSuccess time.Time `json:"last_success"`
		Type        string    `json:"type"`
		SizeBytes   int64     `json:"size_bytes"`
		Target      string    `json:"target"`
	} `json:"backup"`
}

// backupRun is `ecs-agent backup status --json`.
type backupRun struct {
	Result      string    `json:"result"`
	Error       string    `json:"error"`
	Target      string    `json:"target"`
	Type        string    `json:"type"`
	Duration    float64   `json:"duration_seconds"`
	SourceBytes int64     `json:"source_bytes"`
	Uploaded    int64     `json:"uploaded_bytes"`
	LastSuccess time.Time `json:"last_success"`
	NextRun     string    `json:"next_run"`
}

// checkDataLifecycle runs in the first boot, with the appliance ready on
// env A (appliance.backup.url the default file:// target) and leaves it
// ready on env A again. The appliance is stopped from the start until the
// loss (the rows the recovery must bring back do not move, and the
// database can be renamed); two starts in all. The data it adds stays (its
// own tables and a directory of the storage vault).
func checkDataLifecycle(t *testing.T, vm *applianceVM, run func(*testing.T, string) string, domain string) {
	sh := func(t *testing.T, cmd string) (string, error) { t.Helper(); return runErr(run, t, cmd) }
	state := func(t *testing.T, cmd string) agentState {
		t.Helper()
		var st agentState
		out := run(t, cmd)
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		return st
	}
	lastRun := func(t *testing.T) backupRun {
		t.Helper()
		var r backupRun
		out := run(t, "ecs-agent backup status --json")
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("ecs-agent backup status --json: %v\n%s", err, out)
		}
		return r
	}
	startAppliance := func(t *testing.T) {
		t.Helper()
		// The checks before restarted the appliance several times within
		// its start limit's interval (5 in 15 min): an operator's start,
		// not a crash loop.
		if out, err := sh(t, "systemctl reset-failed appliance.service; timeout 900 systemctl start appliance"); err != nil {
			t.Fatalf("systemctl start appliance: %v\n%s\n%s", err, out, run(t, "journalctl -b --no-pager -q -u prepare-env -u prepare-appliance -u prepare-ecs -u appliance | tail -40"))
		}
		if st := state(t, "ecs-agent status"); st.State != "ready" {
			t.Fatalf("state after the start: %q (%s)", st.State, st.Reason)
		}
	}
	// Whatever fails on the way, the next checks of TestAppliance find the
	// appliance on env A, started.
	defer func() {
		if !t.Failed() {
			return
		}
		sh(t, "runuser -u postgres -- psql -X -q -d postgres -c 'ALTER DATABASE ecs_e2e_aside RENAME TO ecs' 2>/dev/null; "+
			"rm -f /app/env.yml /run/appliance-failed; systemctl reset-failed; timeout 900 systemctl start appliance")
	}()

	m1, m2 := "m"+randomHex(t, 6), "m"+randomHex(t, 6)
	needles := []string{m1, m2, "ethics committee vote"}
	run(t, "systemctl stop appliance")

	// Safety first (manual §4.6): a backup without documents or without
	// the database is refused, visibly.
	refused := func(t *testing.T, want string) {
		t.Helper()
		out, err := sh(t, "systemctl start appliance-backup")
		if err == nil {
			t.Fatalf("systemctl start appliance-backup succeeded, want a refusal (%s)\n%s", want, out)
		}
		if s := strings.TrimSpace(run(t, "systemctl is-failed appliance-backup || true")); s != "failed" {
			t.Errorf("appliance-backup.service is %q, want failed", s)
		}
		if out, err := sh(t, "ecs-agent backup status"); err == nil || !strings.Contains(out, want) {
			t.Errorf("ecs-agent backup status: %v, want exit 1 naming %q:\n%s", err, want, out)
		}
		st := state(t, "curl -fsS http://127.0.0.1/ecs-status.json")
		if w := st.Warnings["backup"]; !strings.Contains(w, "backup failed") || !strings.Contains(w, want) {
			t.Errorf("/ecs-status.json: backup warning %q, want the failure naming %q", w, want)
		}
		if st.Backup == nil || st.Backup.Result != "failed" {
			t.Errorf("/ecs-status.json: backup %+v, want result failed", st.Backup)
		}
		if prom := run(t, "cat "+guestBackupMetrics); !strings.Contains(prom, "\nappliance_backup_last_success 0\n") {
			t.Errorf("%s:\n%s\nwant appliance_backup_last_success 0", guestBackupMetrics, prom)
		}
		if j := run(t, "journalctl -b --no-pager -q -u appliance-backup"); !strings.Contains(j, "backup: FAILED: backup refused: ") || !strings.Contains(j, want) {
			t.Errorf("the journal of appliance-backup does not name the refusal %q:\n%s", want, tail([]byte(j), 10))
		}
	}
	if !t.Run("backup-refused-empty-vault", func(t *testing.T) {
		// The vault is set aside (other checks may have stored documents).
		run(t, "v="+guestVault+"; mv $v $v.e2e-aside && install -d -m $(stat -c %a $v.e2e-aside) -o $(stat -c %u $v.e2e-aside) -g $(stat -c %g $v.e2e-aside) $v")
		refused(t, guestVault+" holds no file")
		run(t, "v="+guestVault+"; rmdir $v && mv $v.e2e-aside $v")
	}) {
		return
	}

	// Documents (a known text, then random bytes) and rows holding the
	// markers: the needles no backup object may contain.
	seed := func(t *testing.T, m string, docs, size int) {
		t.Helper()
		run(t, fmt.Sprintf(`set -e
d=%[1]s/e2e-backup/%[2]s
for i in $(seq 1 %[3]d); do
  mkdir -p $d/$((i %% 4))
  { printf '%%%%PDF-1.4 ethics committee vote %[2]s document %%d\n' $i; head -c $((%[4]d * i)) /dev/urandom; } > $d/$((i %% 4))/doc-$i.pdf
done
cd /
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d ecs <<'EOF'
SET ROLE ecs;
CREATE TABLE IF NOT EXISTS e2e_submission (id serial PRIMARY KEY, title text, body text);
CREATE TABLE IF NOT EXISTS e2e_document (id serial PRIMARY KEY, path text);
INSERT INTO e2e_submission (title, body) SELECT 'Study %[2]s ' || g, repeat('x', g) FROM generate_series(1, 400) g;
INSERT INTO e2e_document (path) SELECT 'e2e-backup/%[2]s/doc-' || g || '.pdf' FROM generate_series(1, %[3]d) g;
EOF`, guestVault, m, docs, size))
	}
	seed(t, m1, 12, 64<<10)

	if !t.Run("backup-refused-no-database", func(t *testing.T) {
		run(t, `cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'ecs'" -c 'ALTER DATABASE ecs RENAME TO ecs_e2e_aside'`)
		refused(t, "database ecs does not exist")
		run(t, `cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres -c 'ALTER DATABASE ecs_e2e_aside RENAME TO ecs'`)
	}) {
		return
	}

	// The default target (file:///volatile/ecs-backup-test/) by the
	// nightly unit: a full backup, encrypted.
	backedUp := func(t *testing.T, r backupRun, typ, target string) {
		t.Helper()
		if r.Result != "success" || r.Type != typ || r.Target != target || r.LastSuccess.IsZero() || r.SourceBytes == 0 {
			t.Errorf("ecs-agent backup status: %+v, want a successful %s backup to %s", r, typ, target)
		}
		if r.NextRun == "" {
			t.Errorf("ecs-agent backup status: no next run (appliance-backup.timer)")
		}
		st := state(t, "curl -fsS http://127.0.0.1/ecs-status.json")
		if w, ok := st.Warnings["backup"]; ok {
			t.Errorf("/ecs-status.json: backup warning %q after a successful backup", w)
		}
		if st.Backup == nil || st.Backup.Result != "success" || st.Backup.Type != typ || st.Backup.SizeBytes != r.SourceBytes {
			t.Errorf("/ecs-status.json: backup %+v, want this %s backup (%d bytes)", st.Backup, typ, r.SourceBytes)
		}
		prom := run(t, "cat "+guestBackupMetrics)
		full := map[string]string{"full": "1", "incremental": "0"}[typ]
		if !strings.Contains(prom, "\nappliance_backup_last_success 1\n") || !strings.Contains(prom, "\nappliance_backup_last_full "+full+"\n") {
			t.Errorf("%s:\n%s\nwant appliance_backup_last_success 1, appliance_backup_last_full %s", guestBackupMetrics, prom, full)
		}
		t.Logf("%s backup to %s: %d bytes of data (%d uploaded) in %.1fs (%.2f MiB/s)", typ, target, r.SourceBytes, r.Uploaded, r.Duration, float64(r.SourceBytes)/(1<<20)/max(r.Duration, 0.001))
	}
	if !t.Run("backup-file-target", func(t *testing.T) {
		if out, err := sh(t, "systemctl start appliance-backup"); err != nil {
			t.Fatalf("systemctl start appliance-backup: %v\n%s\n%s", err, out, run(t, "journalctl -b --no-pager -q -u appliance-backup | tail -30"))
		}
		if s := strings.TrimSpace(run(t, "systemctl is-failed appliance-backup || true")); s == "failed" {
			t.Errorf("appliance-backup.service is failed after a successful run")
		}
		backedUp(t, lastRun(t), "full", "file:///volatile/ecs-backup-test/")
		// The needles are in the plaintext (the dump holds the rows) and in
		// none of the target's files.
		if out := run(t, "grep -c "+m1+" /data/ecs-pgdump/ecs.pgdump || true"); strings.TrimSpace(out) == "0" {
			t.Fatalf("the dump does not hold the rows' marker: the plaintext check would prove nothing")
		}
		if files := run(t, "ls /volatile/ecs-backup-test"); !strings.Contains(files, "duplicity-full.") || !strings.Contains(files, ".difftar.gpg") {
			t.Errorf("/volatile/ecs-backup-test holds no encrypted full backup:\n%s", files)
		}
		grep := "grep -rlF"
		for _, n := range needles {
			grep += " -e '" + n + "'"
		}
		if out := run(t, grep+" /volatile/ecs-backup-test || true"); strings.TrimSpace(out) != "" {
			t.Errorf("plaintext in the backup target:\n%s", out)
		}
	}) {
		return
	}

	// Another target: /app/env.yml with the backup section replaced;
	// prepare-env alone activates it (what the next start does first), as
	// the backup reads nothing else of the running appliance.
	seedEnv := run(t, "cat /run/active-env.yml")
	if strings.Count(seedEnv, defaultBackupURL) != 1 {
		t.Fatalf("the active env has no single %q line", strings.TrimSpace(defaultBackupURL))
	}
	useTarget := func(t *testing.T, section string) {
		t.Helper()
		changed := strings.Replace(seedEnv, defaultBackupURL, section, 1)
		p := filepath.Join(t.TempDir(), "env.yml")
		if err := os.WriteFile(p, []byte(changed), 0o600); err != nil {
			t.Fatal(err)
		}
		ecsImage(t, "env", "validate", p)
		run(t, "echo "+base64.StdEncoding.EncodeToString([]byte(changed))+" | base64 -d > /app/env.yml && chmod 600 /app/env.yml && ecs-agent prepare-env")
	}
	// What the needles may not be found in: every file under dir.
	noPlaintext := func(t *testing.T, dir string) []string {
		t.Helper()
		var names []string
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				names = append(names, filepath.Base(p))
				data, _ := os.ReadFile(p)
				for _, n := range needles {
					if bytes.Contains(data, []byte(n)) {
						t.Errorf("%s holds the plaintext %q", p, n)
					}
				}
			}
			return nil
		})
		return names
	}

	// sftp: OpenSSH on the build host, its host key given by
	// appliance.backup.ssh_known_hosts, the client key put on the
	// appliance and named in the options.
	if !t.Run("backup-sftp-target", func(t *testing.T) {
		port, known, key := guestSSHD(t)
		dir := t.TempDir()
		run(t, "umask 077; echo "+base64.StdEncoding.EncodeToString(key)+" | base64 -d > /root/.ssh/ecs-backup-e2e")
		useTarget(t, fmt.Sprintf("    url: sftp://root@%s:%d/%s\n    options: \"--ssh-options=-oIdentityFile=/root/.ssh/ecs-backup-e2e --num-retries 2\"\n    ssh_known_hosts: |\n      %s\n", guestHost, port, dir, known))
		if out, err := sh(t, "ecs-agent backup run"); err != nil {
			t.Fatalf("ecs-agent backup run: %v\n%s", err, out)
		}
		backedUp(t, lastRun(t), "full", fmt.Sprintf("sftp://root@%s:%d/%s", guestHost, port, dir))
		if names := strings.Join(noPlaintext(t, dir), " "); !strings.Contains(names, "duplicity-full.") || !strings.Contains(names, ".difftar.gpg") {
			t.Errorf("files on the sftp server: %s, want an encrypted full backup", names)
		}
	}) {
		return
	}

	// S3: versitygw on the build host, the key pair only in the env's URL.
	port, store := guestS3(t)
	s3URL := fmt.Sprintf("boto3+s3://%s:%s@%s/%s", s3Access, s3Secret, s3Bucket, domain)
	s3Shown := fmt.Sprintf("boto3+s3://%s/%s", s3Bucket, domain)
	if !t.Run("backup-s3-target", func(t *testing.T) {
		useTarget(t, fmt.Sprintf("    url: %s\n    options: \"--s3-endpoint-url http://%s:%d --s3-region-name us-east-1 --num-retries 2\"\n", s3URL, guestHost, port))
		// By hand (the CLI).
		out, err := sh(t, "ecs-agent backup run")
		if err != nil {
			t.Fatalf("ecs-agent backup run: %v\n%s", err, out)
		}
		if strings.Contains(out, s3Secret) || strings.Contains(run(t, "ecs-agent backup status --json"), s3Secret) {
			t.Errorf("the S3 secret is in the backup's output or status")
		}
		backedUp(t, lastRun(t), "full", s3Shown)
		// An incremental.
		seed(t, m2, 3, 32<<10)
		if out, err := sh(t, "ecs-agent backup run"); err != nil {
			t.Fatalf("ecs-agent backup run: %v\n%s", err, out)
		}
		backedUp(t, lastRun(t), "incremental", s3Shown)
		objs := noPlaintext(t, filepath.Join(store, s3Bucket))
		joined := strings.Join(objs, " ")
		if !strings.Contains(joined, "duplicity-full.") || !strings.Contains(joined, "duplicity-inc.") || !strings.Contains(joined, ".difftar.gpg") {
			t.Errorf("objects in the bucket: %v, want a full and an incremental backup, encrypted", objs)
		}
	}) {
		return
	}

	// Disaster recovery (manual §4.4): the data disk's contents are lost;
	// the appliance, started with the same env, stops for the empty
	// database; `ecs-agent recover` brings back every document and row.
	before := run(t, dataSnapshot)
	if !strings.Contains(before, "e2e-backup/"+m2+"/") || !strings.Contains(before, "table public.e2e_submission ecs 800\n") {
		t.Fatalf("snapshot before the loss lacks the seeded data:\n%s", before)
	}
	if !t.Run("empty-database-stops", func(t *testing.T) {
		run(t, `set -e; cd /; runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres -c 'DROP DATABASE ecs WITH (FORCE)'
find `+guestVault+` -mindepth 1 -delete; rm -rf /data/ecs-pgdump/* /var/lib/ecs-agent/backup`)
		if out, err := sh(t, "timeout 900 systemctl start appliance"); err == nil {
			t.Fatalf("the appliance started on an empty database while the target holds a backup:\n%s", out)
		}
		const want = "empty database: restore with `ecs-agent recover --yes-i-am-sure`"
		if st := state(t, "ecs-agent status"); st.State != "failed" || !strings.Contains(st.Reason, want) {
			t.Errorf("ecs-agent status: %q %q, want failed with %q", st.State, st.Reason, want)
		}
		var status int
		var body string
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(3 * time.Second) {
			status, body, _ = httpsGet(vm.m.HostPort(443), domain, "/")
			if status == 503 && strings.Contains(body, "ecs-agent recover") {
				break
			}
		}
		if status != 503 || !strings.Contains(body, "empty database") {
			t.Errorf("https://%s/: %d, want the 503 status page naming the empty database:\n%.400s", domain, status, body)
		}
	}) {
		return
	}
	if !t.Run("recover-from-s3", func(t *testing.T) {
		// The override goes first: the recover reads the active env (S3)
		// and the start it ends with activates env A from the seed again.
		run(t, "rm /app/env.yml")
		start := time.Now()
		out, err := sh(t, "ecs-agent recover --yes-i-am-sure")
		took := time.Since(start)
		if err != nil {
			t.Fatalf("ecs-agent recover --yes-i-am-sure: %v\n%s", err, out)
		}
		// Before the application runs again (the recover starts it without
		// waiting).
		after := run(t, dataSnapshot)
		if after != before {
			t.Errorf("after the recovery:\n%s\nwant (before the loss):\n%s", after, before)
		}
		t.Logf("recover from %s in %s: %s", s3Shown, sec(took), lineWith(out, "recover: restored"))
		startAppliance(t)
		if status, body, err := httpsGet(vm.m.HostPort(443), domain, "/"); err != nil || status != 200 {
			t.Errorf("https://%s/ after the recovery: %d %v %.200q", domain, status, err, body)
		}
	}) {
		return
	}
	t.Run("recover-refuses-data", func(t *testing.T) {
		out, err := sh(t, "ecs-agent recover --yes-i-am-sure")
		if err == nil || !strings.Contains(out, "would be overwritten") || !strings.Contains(out, "database ecs") || !strings.Contains(out, "--force") {
			t.Errorf("ecs-agent recover on an appliance with data: %v, want a refusal naming the database and --force:\n%s", err, out)
		}
		if st := state(t, "ecs-agent status"); st.State != "ready" {
			t.Errorf("state after the refused recover: %q (%s)", st.State, st.Reason)
		}
	})
}

// dataSnapshot prints what an appliance must not lose: every document of
// the storage vault with its sha256, every table of the database with its
// owner and row count, and the database's collation and owner.
const dataSnapshot = `cd ` + guestVault + ` && find . -type f -print0 | sort -z | xargs -0r sha256sum
cd / && runuser -u postgres -- psql -XAtq -d ecs -c "SELECT 'table ' || schemaname || '.' || tablename || ' ' || tableowner || ' ' || (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', schemaname, tablename), false, true, '')))[1]::text FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1" -c "SELECT 'database ' || datcollate || ' ' || pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'ecs'"`

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// lineWith returns the first line of out containing s.
func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
