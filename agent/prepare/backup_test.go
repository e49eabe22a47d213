package prepare

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/discover"
	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/testenv"
)

// The backup tests run the real tools on the host: PostgreSQL (initdb and
// postgres as the postgres user in a temp dir), gpg, duplicity, and for the
// targets versitygw (S3) and OpenSSH's sshd (sftp). Only systemctl and
// mount are recorded. Without a tool a test skips, unless CI is set.

// pgBinDir finds the newest PostgreSQL server binaries.
func pgBinDir(t *testing.T) string {
	t.Helper()
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	testenv.Root(t, "PostgreSQL runs as user postgres")
	if len(m) == 0 {
		testenv.Missing(t, "PostgreSQL server not installed (make deps: postgresql)")
	}
	return filepath.Dir(m[len(m)-1])
}

// pgServer is a throwaway PostgreSQL cluster run as user postgres.
type pgServer struct {
	bin, dir string
	port     int
}

func startPG(t *testing.T) *pgServer {
	t.Helper()
	bin := pgBinDir(t)
	dir, err := os.MkdirTemp("", "ecs-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if out, err := exec.Command("chown", "postgres:postgres", dir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v: %s", err, out)
	}
	os.Chmod(dir, 0o700)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &pgServer{bin: bin, dir: dir, port: port}
	s.run(t, "initdb", "-D", dir+"/data", "-A", "peer", "-E", "UTF8", "--locale=C.UTF-8", "-U", "postgres")
	s.run(t, "pg_ctl", "-D", dir+"/data", "-w", "-l", dir+"/log", "-o", fmt.Sprintf("-k %s -p %d -c listen_addresses='' -c fsync=off", dir, port), "start")
	t.Cleanup(func() {
		exec.Command("runuser", "-u", "postgres", "--", bin+"/pg_ctl", "-D", dir+"/data", "-m", "immediate", "stop").Run()
	})
	return s
}

func (s *pgServer) run(t *testing.T, prog string, args ...string) string {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--", s.bin + "/" + prog}, args...)...)
	cmd.Dir = "/"
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v: %s", prog, args, err, errb.String())
	}
	return out.String()
}

func (s *pgServer) sql(t *testing.T, db, sql string) string {
	t.Helper()
	return strings.TrimSpace(s.run(t, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", s.dir, "-p", strconv.Itoa(s.port), "-d", db, "-c", sql))
}

func (s *pgServer) opts() PGOptions {
	return PGOptions{BinDir: s.bin, Conn: []string{"-h", s.dir, "-p", strconv.Itoa(s.port)}, User: "postgres"}
}

// hostRunner runs commands for real, except systemctl and mount/umount,
// which it records.
type hostRunner struct {
	exec host.ExecRunner
	rec  host.Recorder
}

func (r *hostRunner) Run(ctx context.Context, c host.Cmd) ([]byte, error) {
	switch c.Name {
	case "systemctl", "mount", "umount":
		return r.rec.Run(ctx, c)
	}
	return r.exec.Run(ctx, c)
}

// syncBuffer is a log safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// appliance is an agent on a temp root with its own PostgreSQL.
type appliance struct {
	*Agent
	pg  *pgServer
	run *hostRunner
	log *syncBuffer
}

// backupEnv is the compat default env.yml (its ecs_backup key) with the
// backup section replaced by extra (indented under appliance.backup).
func backupEnv(t *testing.T, extra string) string {
	t.Helper()
	data, err := os.ReadFile(defaultEnv)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	old := "    url: file:///volatile/ecs-backup-test/\n"
	if !strings.Contains(s, old) {
		t.Fatal("default env has no backup url")
	}
	return strings.Replace(s, old, extra, 1)
}

func newAppliance(t *testing.T, envText string) *appliance {
	t.Helper()
	testenv.Tools(t, "gpg", "gpgconf", "duplicity")
	pg := startPG(t)
	r := &hostRunner{}
	log := &syncBuffer{}
	a := &appliance{Agent: &Agent{
		Host: host.New(t.TempDir(), r), Discover: discover.Config{EC2URL: "-", GCEURL: "-"},
		Log: log, MemBytes: 4 << 30, Cores: 2, PG: pg.opts(),
	}, pg: pg, run: r, log: log}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", log.String())
		}
		exec.Command("gpgconf", "--homedir", a.Host.Path(BackupGnupgHome), "--kill", "gpg-agent").Run()
	})
	put(t, a.Agent, "/app/env.yml", []byte(envText), 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
	return a
}

// seed creates role and database ecs with tables and rows holding marker,
// and documents in the vault holding marker.
func (a *appliance) seed(t *testing.T, marker string, docs int) {
	t.Helper()
	if a.pg.sql(t, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname='ecs'") == "0" {
		a.pg.sql(t, "postgres", "CREATE ROLE ecs LOGIN")
		a.pg.sql(t, "postgres", "CREATE DATABASE ecs OWNER ecs TEMPLATE template0 ENCODING 'UTF8'")
		a.pg.sql(t, "ecs", "SET ROLE ecs; CREATE TABLE submission (id serial PRIMARY KEY, title text, body text); CREATE TABLE document (id serial PRIMARY KEY, path text, sha256 text)")
	}
	a.pg.sql(t, "ecs", fmt.Sprintf("INSERT INTO submission (title, body) SELECT 'Study %s ' || g, repeat('x', g) FROM generate_series(1, 300) g", marker))
	for i := 0; i < docs; i++ {
		rnd := make([]byte, 1000+i*3000)
		rand.Read(rnd)
		data := append([]byte(fmt.Sprintf("%%PDF-1.4 ethics committee vote %s document %d\n", marker, i)), rnd...)
		p := fmt.Sprintf("%s/%s/%02d/doc-%d.pdf", StorageVault, marker, i%7, i)
		put(t, a.Agent, p, data, 0o640)
		a.pg.sql(t, "ecs", fmt.Sprintf("INSERT INTO document (path, sha256) VALUES ('%s', 'x')", p))
	}
}

// snapshot is every document's sha256 and every table's row count.
func (a *appliance) snapshot(t *testing.T) map[string]string {
	t.Helper()
	snap := map[string]string{}
	root := a.Host.Path(StorageVault)
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if d.Type().IsRegular() {
			data, _ := os.ReadFile(p)
			h := sha256.Sum256(data)
			rel, _ := filepath.Rel(root, p)
			snap["file "+rel] = hex.EncodeToString(h[:])
		}
		return nil
	})
	for _, tbl := range strings.Fields(a.pg.sql(t, "ecs", "SELECT tablename FROM pg_tables WHERE schemaname='public' ORDER BY 1")) {
		snap["table "+tbl] = a.pg.sql(t, "ecs", "SELECT count(*) FROM "+tbl)
		snap["owner "+tbl] = a.pg.sql(t, "ecs", "SELECT tableowner FROM pg_tables WHERE tablename='"+tbl+"'")
	}
	return snap
}

func sameSnapshot(t *testing.T, got, want map[string]string) {
	t.Helper()
	if len(want) == 0 {
		t.Fatal("empty snapshot")
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: not in the original", k)
		}
	}
}

// noPlaintext fails when a file under dir contains one of the needles.
func noPlaintext(t *testing.T, dir string, needles ...string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		n++
		data, _ := os.ReadFile(p)
		for _, s := range needles {
			if bytes.Contains(data, []byte(s)) {
				t.Errorf("%s contains the plaintext %q", p, s)
			}
		}
		return nil
	})
	if n == 0 {
		t.Errorf("no file in the backup target %s", dir)
	}
	return n
}

func marker() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "M" + hex.EncodeToString(b)
}

func backupRecord(t *testing.T, a *appliance) BackupRecord {
	t.Helper()
	r, err := a.ReadBackupRecord()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestBackupRefusesWithoutDatabaseOrDocuments(t *testing.T) {
	a := newAppliance(t, backupEnv(t, "    url: file:///volatile/ecs-backup-test/\n"))
	ctx := context.Background()
	err := a.Backup(ctx, BackupOptions{})
	if err == nil || !strings.Contains(err.Error(), "backup refused: database ecs does not exist") {
		t.Fatalf("no database: %v", err)
	}
	a.pg.sql(t, "postgres", "CREATE DATABASE ecs")
	err = a.Backup(ctx, BackupOptions{})
	if err == nil || !strings.Contains(err.Error(), "backup refused: /data/ecs-storage-vault holds no file") {
		t.Fatalf("no documents: %v", err)
	}
	r := backupRecord(t, a)
	if r.Result != "failed" || !r.LastSuccess.IsZero() {
		t.Errorf("record: %+v", r)
	}
	prom := read(t, a.Agent, BackupMetrics)
	for _, want := range []string{"appliance_backup_last_success 0\n", "appliance_backup_last_success_time_seconds 0\n", "# TYPE appliance_backup_last_duration_seconds gauge\n"} {
		if !strings.Contains(prom, want) {
			t.Errorf("metrics lack %q:\n%s", want, prom)
		}
	}
	st, _ := status.Read(a.Host)
	if !strings.Contains(st.Warnings["backup"], "holds no file") || st.Backup == nil || st.Backup.Result != "failed" {
		t.Errorf("state: %+v", st)
	}
	page := read(t, a.Agent, status.StatusPage)
	if !strings.Contains(page, "holds no file") || !strings.Contains(page, `id="backup"`) {
		t.Errorf("status page lacks the backup failure:\n%s", page)
	}
	if entries, _ := os.ReadDir(a.Host.Path("/volatile/ecs-backup-test")); len(entries) != 0 {
		t.Errorf("a refused backup wrote to the target: %v", entries)
	}
}

// TestBackupRecoverFile: full then incremental backup to file:// (the
// default target), no plaintext on the target, a second appliance with the
// same env stops for the empty database and recovers every document and
// row; a second recover is refused without --force.
func TestBackupRecoverFile(t *testing.T) {
	envText := backupEnv(t, "    url: file:///volatile/ecs-backup-test/\n")
	a := newAppliance(t, envText)
	ctx := context.Background()
	m1, m2 := marker(), marker()
	a.seed(t, m1, 12)
	if err := a.Backup(ctx, BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	r1 := backupRecord(t, a)
	if r1.Result != "success" || r1.Type != "full" || r1.SourceFiles < 12 || r1.DumpBytes == 0 || r1.Uploaded == 0 {
		t.Fatalf("first run: %+v", r1)
	}
	a.seed(t, m2, 5)
	if err := a.Backup(ctx, BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	r2 := backupRecord(t, a)
	if r2.Type != "incremental" || r2.LastSuccess.Before(r1.LastSuccess) {
		t.Fatalf("second run: %+v", r2)
	}
	prom := read(t, a.Agent, BackupMetrics)
	if !strings.Contains(prom, "appliance_backup_last_success 1\n") || strings.Contains(prom, "appliance_backup_last_success_time_seconds 0\n") {
		t.Errorf("metrics:\n%s", prom)
	}
	if st, _ := status.Read(a.Host); st.Warnings["backup"] != "" || st.Backup == nil || st.Backup.Result != "success" || st.Backup.SizeBytes == 0 {
		t.Errorf("state: %+v", st)
	}
	target := a.Host.Path("/volatile/ecs-backup-test")
	noPlaintext(t, target, m1, m2, "ethics committee vote", "Study "+m1)
	for _, sub := range []string{"gnupg", "cache"} {
		if fi, err := os.Stat(a.Host.Path(BackupStateDir + "/" + sub)); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: %v %v", sub, fi.Mode(), err)
		}
	}
	want := a.snapshot(t)

	// Appliance B: same env, same target (copied: another machine).
	b := newAppliance(t, envText)
	os.MkdirAll(b.Host.Path("/volatile"), 0o755)
	if out, err := exec.Command("cp", "-a", target, b.Host.Path("/volatile/")).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	b.pg.sql(t, "postgres", "CREATE ROLE ecs LOGIN")
	b.pg.sql(t, "postgres", "CREATE DATABASE ecs OWNER ecs")
	err := b.checkEmptyDatabase(ctx, mustEnv(t, b.Agent))
	if err == nil || !strings.Contains(err.Error(), "empty database: restore with `ecs-agent recover --yes-i-am-sure`") {
		t.Fatalf("empty-database check: %v", err)
	}
	start := time.Now()
	if err := b.Recover(ctx, RecoverOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("recover took %s", time.Since(start))
	sameSnapshot(t, b.snapshot(t), want)
	if !strings.Contains(strings.Join(b.run.rec.Recorded(), "\n"), "systemctl start --no-block appliance.service") {
		t.Errorf("appliance not started: %v", b.run.rec.Recorded())
	}
	if b.Host.Exists(RecoverMarker) || b.Host.Exists(BackupRestoreDir) {
		t.Error("recover left its marker or restore dir")
	}
	if err := b.checkEmptyDatabase(ctx, mustEnv(t, b.Agent)); err != nil {
		t.Errorf("recovered database counted as empty: %v", err)
	}
	// A second recover would overwrite: refused, naming what.
	err = b.Recover(ctx, RecoverOptions{})
	if !errors.Is(err, ErrNotEmpty) || !strings.Contains(err.Error(), "database ecs (2 tables") || !strings.Contains(err.Error(), "/data/ecs-storage-vault (17 files") {
		t.Fatalf("second recover: %v", err)
	}
	// With --force: the old vault is kept beside.
	if err := b.Recover(ctx, RecoverOptions{Force: true, NoStart: true}); err != nil {
		t.Fatal(err)
	}
	sameSnapshot(t, b.snapshot(t), want)
	kept, _ := filepath.Glob(b.Host.Path(StorageVault + ".before-recover-*"))
	if len(kept) != 1 {
		t.Errorf("old vault kept: %v", kept)
	}
}

// TestDumpsInOneSecond: a dump replacing one of the same second gets a later
// mtime (whole seconds), so duplicity, which compares mode and mtime only,
// saves it (two backups in a row kept the first dump: a restore gave the
// older database).
func TestDumpsInOneSecond(t *testing.T) {
	a := newAppliance(t, backupEnv(t, "    url: file:///volatile/ecs-backup-test/\n"))
	a.seed(t, marker(), 1)
	ctx := context.Background()
	var last int64
	for i := 0; i < 3; i++ {
		if _, err := a.DumpDatabase(ctx, "ecs", BackupDump); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(a.Host.Path(BackupDump))
		if err != nil {
			t.Fatal(err)
		}
		if s := fi.ModTime().Unix(); s <= last {
			t.Fatalf("dump %d: mtime %d s, the one before %d s", i+1, s, last)
		} else {
			last = s
		}
	}
}
