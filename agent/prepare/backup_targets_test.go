package prepare

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/testenv"
	"github.com/ecs-image/ecs-image/testenv/backuptarget"
)

// recoverFresh boots "appliance B" with envText (a new root and cluster),
// recovers and compares with want.
func recoverFresh(t *testing.T, envText string, want map[string]string, setup func(b *appliance)) *appliance {
	t.Helper()
	b := newAppliance(t, envText)
	if setup != nil {
		setup(b)
	}
	if err := b.Recover(context.Background(), RecoverOptions{NoStart: true}); err != nil {
		t.Fatal(err)
	}
	sameSnapshot(t, b.snapshot(t), want)
	return b
}

// startVersity runs versitygw (package backuptarget) and returns its
// endpoint and backend directory (bucket "backups" created).
func startVersity(t *testing.T) (string, string) {
	t.Helper()
	s3 := backuptarget.StartS3(t)
	// Only the env's URL carries credentials: no AWS configuration of the
	// test machine may stand in for them.
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(s3.Root, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(s3.Root, "none"))
	os.Unsetenv("AWS_ACCESS_KEY_ID")
	os.Unsetenv("AWS_SECRET_ACCESS_KEY")
	return s3.Endpoint(), s3.Root
}

func freeAddr(t *testing.T) string { return backuptarget.FreeAddr(t) }

// TestBackupS3: boto3+s3 against versitygw, credentials only in the env's
// URL; the objects hold no plaintext; a fresh appliance recovers it.
func TestBackupS3(t *testing.T) {
	endpoint, store := startVersity(t)
	envText := backupEnv(t, fmt.Sprintf("    url: boto3+s3://ecsbackupkey:ecsbackupsecret@backups/ecs.example.org\n    options: \"--s3-endpoint-url %s --s3-region-name us-east-1 --num-retries 2\"\n", endpoint))
	a := newAppliance(t, envText)
	m := marker()
	a.seed(t, m, 8)
	if err := a.Backup(context.Background(), BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	r := backupRecord(t, a)
	if r.Result != "success" || r.Type != "full" || strings.Contains(r.Target, "ecsbackupsecret") {
		t.Fatalf("record: %+v", r)
	}
	if strings.Contains(a.log.String(), "ecsbackupsecret") {
		t.Error("the S3 secret is in the log")
	}
	objs, _ := filepath.Glob(filepath.Join(store, "backups", "ecs.example.org", "duplicity-*"))
	if len(objs) < 3 {
		t.Fatalf("objects in the bucket: %v", objs)
	}
	noPlaintext(t, filepath.Join(store, "backups"), m, "ethics committee vote", "Study "+m)
	// A new appliance with the same env finds the backup through duplicity
	// collection-status (no local cache) and stops for its empty database.
	recoverFresh(t, envText, a.snapshot(t), func(b *appliance) {
		b.pg.sql(t, "postgres", "CREATE ROLE ecs LOGIN")
		b.pg.sql(t, "postgres", "CREATE DATABASE ecs OWNER ecs")
		err := b.checkEmptyDatabase(context.Background(), mustEnv(t, b.Agent))
		if err == nil || !strings.Contains(err.Error(), "empty database: restore with `ecs-agent recover --yes-i-am-sure` (the backup target boto3+s3://backups/ecs.example.org holds a backup of ") {
			t.Fatalf("empty-database check against S3: %v", err)
		}
	})

	// Unreachable target: a clear failure, recorded; the target keeps the
	// chain (the same appliance backs up fine afterwards).
	down := backupEnv(t, "    url: boto3+s3://ecsbackupkey:ecsbackupsecret@backups/ecs.example.org\n    options: \"--s3-endpoint-url http://"+freeAddr(t)+" --s3-region-name us-east-1 --num-retries 1\"\n")
	put(t, a.Agent, "/app/env.yml", []byte(down), 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
	err := a.Backup(context.Background(), BackupOptions{})
	if err == nil || !strings.Contains(err.Error(), "duplicity backup to boto3+s3://backups/ecs.example.org") {
		t.Fatalf("unreachable target: %v", err)
	}
	if r := backupRecord(t, a); r.Result != "failed" || r.LastSuccess.IsZero() {
		t.Errorf("record after failure: %+v", r)
	}
	if st, _ := status.Read(a.Host); !strings.Contains(st.Warnings["backup"], "backup failed") {
		t.Errorf("no warning: %+v", st.Warnings)
	}
	if prom := read(t, a.Agent, BackupMetrics); !strings.Contains(prom, "appliance_backup_last_success 0\n") || strings.Contains(prom, "appliance_backup_last_success_time_seconds 0\n") {
		t.Errorf("metrics after failure:\n%s", prom)
	}
	if after, _ := filepath.Glob(filepath.Join(store, "backups", "ecs.example.org", "duplicity-*")); len(after) != len(objs)+0 && len(after) < len(objs) {
		t.Errorf("objects lost: %d → %d", len(objs), len(after))
	}
}

// startSSHD runs OpenSSH's sshd (package backuptarget). It returns the
// port, the host key's known_hosts line and the client key path.
func startSSHD(t *testing.T) (port, knownHosts, clientKey string) {
	t.Helper()
	s := backuptarget.StartSSHD(t)
	return fmt.Sprint(s.Port), s.KnownHosts("127.0.0.1"), s.ClientKey
}

// TestBackupSFTP: sftp to OpenSSH with the host key from
// appliance.backup.ssh_known_hosts; without it (or with another key) the
// backup fails; the backup restores on a fresh appliance.
func TestBackupSFTP(t *testing.T) {
	port, known, key := startSSHD(t)
	target := t.TempDir()
	section := func(knownHosts string) string {
		s := fmt.Sprintf("    url: sftp://root@127.0.0.1:%s/%s\n    options: \"--ssh-options=-oIdentityFile=%s --num-retries 1\"\n", port, target, key)
		if knownHosts != "" {
			s += "    ssh_known_hosts: |\n      " + knownHosts + "\n"
		}
		return s
	}
	// No host key in the env: refused, nothing sent.
	a := newAppliance(t, backupEnv(t, section("")))
	m := marker()
	a.seed(t, m, 6)
	err := a.Backup(context.Background(), BackupOptions{})
	if err == nil {
		t.Fatal("backup to an unknown sftp host key succeeded")
	}
	if !strings.Contains(a.log.String(), "can't be established") {
		t.Errorf("unknown host key: not the reason: %v", err)
	}
	if entries, _ := os.ReadDir(target); len(entries) != 0 {
		t.Fatalf("written without a known host key: %v", entries)
	}
	// A wrong host key: refused too.
	wrong := strings.Replace(known, strings.Fields(known)[2], "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", 1)
	put(t, a.Agent, "/app/env.yml", []byte(backupEnv(t, section(wrong))), 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := a.Backup(context.Background(), BackupOptions{}); err == nil {
		t.Fatal("backup to a changed sftp host key succeeded")
	} else if !strings.Contains(a.log.String(), "does not match") {
		t.Errorf("changed host key: not the reason: %v", err)
	}
	// The right one.
	envText := backupEnv(t, section(known))
	put(t, a.Agent, "/app/env.yml", []byte(envText), 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := a.Backup(context.Background(), BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	if kh := read(t, a.Agent, BackupKnownHosts); kh != known+"\n" {
		t.Errorf("known_hosts: %q", kh)
	}
	if mode(t, a.Agent, BackupKnownHosts) != 0o600 {
		t.Error("known_hosts mode")
	}
	noPlaintext(t, target, m, "ethics committee vote")
	recoverFresh(t, envText, a.snapshot(t), nil)
}

// interruptOnFile cancels the returned context once a file matching
// pattern appears in dir.
func interruptOnFile(dir, pattern string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for ctx.Err() == nil {
			if m, _ := filepath.Glob(filepath.Join(dir, pattern)); len(m) > 0 {
				cancel()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return ctx, cancel
}

// bigDoc adds a document of n random bytes.
func bigDoc(t *testing.T, a *appliance, name string, n int) {
	t.Helper()
	f, err := os.Create(a.Host.Path(StorageVault + "/" + name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if out, err := exec.Command("head", "-c", fmt.Sprint(n), "/dev/urandom").Output(); err != nil {
		t.Fatal(err)
	} else {
		f.Write(out)
	}
}

// TestBackupBadCases: a full target disk, an interrupted backup, a wrong
// key and an interrupted restore, each with a clear error and nothing lost.
func TestBackupBadCases(t *testing.T) {
	testenv.Tools(t, "mount", "umount")
	envText := backupEnv(t, "    url: file:///volatile/ecs-backup-test/\n    options: --volsize 1\n")
	a := newAppliance(t, envText)
	ctx := context.Background()
	target := a.Host.Path("/volatile/ecs-backup-test")
	os.MkdirAll(target, 0o755)
	// A target filesystem of 256 KiB: too small for the first full backup.
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "ecs-backup-full", target).CombinedOutput(); err != nil {
		testenv.Missing(t, "cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", target).Run() })
	m := marker()
	a.seed(t, m, 12)
	bigDoc(t, a, "scan.pdf", 600<<10)
	before := a.snapshot(t)
	err := a.Backup(ctx, BackupOptions{})
	if err == nil || !strings.Contains(err.Error(), "duplicity backup to file://") {
		t.Fatalf("full target: %v", err)
	}
	if !strings.Contains(a.log.String(), "No space left on device") {
		t.Errorf("the log does not say the target is full")
	}
	sameSnapshot(t, a.snapshot(t), before)
	// Room again: the next run makes the backup.
	if out, err := exec.Command("mount", "-o", "remount,size=64m", target).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v: %s", err, out)
	}
	if err := a.Backup(ctx, BackupOptions{}); err != nil {
		t.Fatalf("after the target has room: %v", err)
	}
	snap1 := a.snapshot(t)
	copy1 := t.TempDir()
	exec.Command("cp", "-a", target+"/.", copy1).Run()

	// Interrupted backup (SIGTERM to duplicity mid-upload of a large
	// document): the previous chain still restores, the next run succeeds.
	bigDoc(t, a, "large-scan.pdf", 12<<20)
	a.seed(t, marker(), 2)
	// With 1 MB volumes, duplicity is stopped once the first volume of
	// the incremental is on the target, long before the last.
	ictx, cancel := interruptOnFile(target, "duplicity-inc.*.vol1.difftar*")
	err = a.Backup(ictx, BackupOptions{})
	cancel()
	if err == nil {
		t.Fatal("interrupted backup succeeded")
	}
	t.Logf("interrupted backup: %v", err)
	interrupted := t.TempDir()
	exec.Command("cp", "-a", target+"/.", interrupted).Run()
	recoverFresh(t, envText, snap1, func(b *appliance) {
		os.MkdirAll(b.Host.Path("/volatile/ecs-backup-test"), 0o755)
		exec.Command("cp", "-a", interrupted+"/.", b.Host.Path("/volatile/ecs-backup-test")).Run()
	})
	if err := a.Backup(ctx, BackupOptions{}); err != nil {
		t.Fatalf("backup after an interrupted one: %v", err)
	}
	snap2 := a.snapshot(t)

	// Wrong key: appliance B's env has another backup key; the restore
	// fails saying so, and B's own data is untouched.
	other, err := os.ReadFile("../../env/testdata/pgp-ed25519-secret.asc")
	if err != nil {
		t.Fatal(err)
	}
	wrongEnv := replaceBackupKey(t, envText, string(other))
	b := newAppliance(t, wrongEnv)
	os.MkdirAll(b.Host.Path("/volatile/ecs-backup-test"), 0o755)
	exec.Command("cp", "-a", target+"/.", b.Host.Path("/volatile/ecs-backup-test")).Run()
	err = b.Recover(ctx, RecoverOptions{NoStart: true})
	if err == nil || !strings.Contains(err.Error(), "duplicity restore") {
		t.Fatalf("recover with the wrong key: %v", err)
	}
	if !strings.Contains(b.log.String(), "decrypt") && !strings.Contains(b.log.String(), "secret key") {
		t.Errorf("the log does not say decryption failed")
	}
	if b.Host.Exists(StorageVault+"/scan.pdf") || b.Host.Exists(BackupDump) {
		t.Error("a failed restore put data in place")
	}

	// Interrupted restores: after duplicity restored the files, and after
	// they were swapped in but before the database was loaded; each re-run
	// succeeds without --force.
	c := newAppliance(t, envText)
	os.MkdirAll(c.Host.Path("/volatile/ecs-backup-test"), 0o755)
	exec.Command("cp", "-a", target+"/.", c.Host.Path("/volatile/ecs-backup-test")).Run()
	for _, at := range []string{"recover:restored", "recover:swapped"} {
		rctx, rcancel := context.WithCancel(ctx)
		c.hook = func(cp string) {
			if cp == at {
				rcancel()
			}
		}
		err = c.Recover(rctx, RecoverOptions{NoStart: true})
		rcancel()
		c.hook = nil
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("recover interrupted at %s: %v", at, err)
		}
		if !c.Host.Exists(RecoverMarker) {
			t.Fatalf("no recover marker after the interruption at %s", at)
		}
		if err := c.checkEmptyDatabase(ctx, mustEnv(t, c.Agent)); err == nil || !strings.Contains(err.Error(), "a recover was interrupted") {
			t.Errorf("restore-check after an interrupted recover: %v", err)
		}
	}
	if err := c.Recover(ctx, RecoverOptions{NoStart: true}); err != nil {
		t.Fatalf("re-run of the recover: %v", err)
	}
	sameSnapshot(t, c.snapshot(t), snap2)
}

// replaceBackupKey swaps the appliance.backup.encrypt block of envText.
func replaceBackupKey(t *testing.T, envText, key string) string {
	t.Helper()
	i := strings.Index(envText, "    encrypt: |\n")
	if i < 0 {
		t.Fatal("no backup.encrypt")
	}
	j := strings.Index(envText[i:], "-----END PGP PRIVATE KEY BLOCK-----")
	if j < 0 {
		t.Fatal("no end of the backup key")
	}
	end := i + j + len("-----END PGP PRIVATE KEY BLOCK-----") + 1
	var b strings.Builder
	b.WriteString("    encrypt: |\n")
	for _, l := range strings.Split(strings.TrimSpace(key), "\n") {
		b.WriteString("        " + l + "\n")
	}
	return envText[:i] + b.String() + envText[end:]
}

// TestBackupThroughput measures a full backup, an unchanged incremental and
// a recover of a 1 GiB vault (ECS_BACKUP_BENCH=1; set ECS_BACKUP_BENCH_MIB
// for another size). Documents are random (incompressible, like PDFs),
// 1 MiB each; file:// target on the same disk.
func TestBackupThroughput(t *testing.T) {
	if os.Getenv("ECS_BACKUP_BENCH") == "" {
		t.Skip("set ECS_BACKUP_BENCH=1 to measure (minutes)")
	}
	mib := 1024
	if v := os.Getenv("ECS_BACKUP_BENCH_MIB"); v != "" {
		fmt.Sscan(v, &mib)
	}
	envText := backupEnv(t, "    url: file:///volatile/ecs-backup-test/\n")
	a := newAppliance(t, envText)
	a.seed(t, marker(), 3)
	for i := 0; i < mib; i++ {
		bigDoc(t, a, fmt.Sprintf("bench-%04d.pdf", i), 1<<20)
	}
	ctx := context.Background()
	size := float64(mib) * (1 << 20)
	for _, run := range []string{"full", "incremental (unchanged)"} {
		start := time.Now()
		if err := a.Backup(ctx, BackupOptions{}); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		r := backupRecord(t, a)
		t.Logf("backup %s: %d MiB in %.1fs = %.1f MiB/s; %d bytes to the target", run, mib, d.Seconds(), size/(1<<20)/d.Seconds(), r.Uploaded)
	}
	want := a.snapshot(t)
	target := a.Host.Path("/volatile/ecs-backup-test")
	b := newAppliance(t, envText)
	os.MkdirAll(b.Host.Path("/volatile/ecs-backup-test"), 0o755)
	exec.Command("cp", "-a", target+"/.", b.Host.Path("/volatile/ecs-backup-test")).Run()
	start := time.Now()
	if err := b.Recover(ctx, RecoverOptions{NoStart: true}); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	t.Logf("recover: %d MiB in %.1fs = %.1f MiB/s", mib, d.Seconds(), size/(1<<20)/d.Seconds())
	sameSnapshot(t, b.snapshot(t), want)
}
