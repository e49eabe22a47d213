package prepare

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/agent/status"
)

// RecoverMarker exists while a recover runs; an interrupted recover leaves
// it, and the next one then does not count the half-restored data as data
// to protect.
const RecoverMarker = DataDir + "/.ecs-recover-in-progress"

// ErrNotEmpty is returned by Recover when the appliance holds data and
// --force was not given.
var ErrNotEmpty = errors.New("the appliance is not empty")

// RecoverOptions tune Recover.
type RecoverOptions struct {
	// Force overwrites a non-empty database and storage vault (the old
	// vault and dumps are kept beside, renamed).
	Force bool
	// Time restores the backup as of this time (duplicity's --time
	// format, e.g. 3D or 2026-11-30); "" is the latest.
	Time string
	// NoStart leaves the appliance stopped after the restore.
	NoStart bool
}

// Recover is `ecs-agent recover --yes-i-am-sure` (manual §4.4): it fetches
// the latest backup from appliance.backup.url, decrypts it with the env's
// key, puts the storage vault and the dumps in place, loads the database
// dump into a new database ecs and starts the appliance. A database with
// tables or a vault with files is refused without Force, naming what would
// be overwritten.
func (a *Agent) Recover(ctx context.Context, o RecoverOptions) error {
	unlock, err := a.lockBackup()
	if err != nil {
		return err
	}
	defer unlock()
	e, err := a.loadActive()
	if err != nil {
		return err
	}
	c, err := a.backupConfig(e)
	if err != nil {
		return err
	}
	db, err := dbName(e)
	if err != nil {
		return err
	}
	resumed := a.Host.Exists(RecoverMarker)
	what, err := a.localData(ctx, db)
	if err != nil {
		return err
	}
	if len(what) > 0 && !o.Force && !resumed {
		return fmt.Errorf("%w: %s would be overwritten; run again with --force to replace them (the old storage vault and dumps are kept as *.before-recover-<time> in %s)", ErrNotEmpty, strings.Join(what, " and "), DataDir)
	}
	if resumed {
		a.logf("recover: resuming an interrupted recover (%s exists)", RecoverMarker)
	}
	if _, err := a.Host.WriteFile(RecoverMarker, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return err
	}
	a.logf("recover: stopping the appliance")
	if err := a.systemctl(ctx, "stop", "appliance.service"); err != nil {
		return err
	}
	fpr, unmount, err := a.openBackupTarget(ctx, c)
	if err != nil {
		return err
	}
	defer unmount()
	restore := a.Host.Path(BackupRestoreDir)
	if err := os.RemoveAll(restore); err != nil {
		return err
	}
	args := []string{"restore"}
	if o.Time != "" {
		args = append(args, "--time", o.Time)
	}
	args = append(args, c.Target, restore)
	a.logf("recover: restoring the backup from %s", c.Shown)
	start := time.Now()
	if _, err := a.duplicity(ctx, c, fpr, args...); err != nil {
		return fmt.Errorf("duplicity restore from %s: %w", c.Shown, err)
	}
	vaultNew := filepath.Join(restore, filepath.Base(StorageVault))
	dumpNew := filepath.Join(restore, filepath.Base(PGDumpDir), filepath.Base(BackupDump))
	for _, p := range []string{vaultNew, dumpNew} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("the backup at %s does not hold %s: %w", c.Shown, strings.TrimPrefix(p, restore), err)
		}
	}
	if err := a.checkpoint(ctx, "recover:restored"); err != nil {
		return err
	}
	files, size, _ := countFiles(vaultNew, 0)
	a.logf("recover: restored %d documents (%d bytes) in %.1fs", files, size, time.Since(start).Seconds())
	// Swap in the restored trees; the old ones stay beside (renamed) when
	// they hold anything.
	stamp := time.Now().UTC().Format("20060102T150405Z")
	for _, dir := range []string{StorageVault, PGDumpDir} {
		if err := a.swapDir(dir, filepath.Join(restore, filepath.Base(dir)), stamp); err != nil {
			return err
		}
	}
	if err := os.Remove(restore); err != nil {
		a.logf("recover: %v", err)
	}
	if err := a.checkpoint(ctx, "recover:swapped"); err != nil {
		return err
	}
	a.logf("recover: loading %s into database %s", BackupDump, db)
	if err := a.RestoreDatabase(ctx, db, BackupDump); err != nil {
		return err
	}
	st, err := a.DatabaseTables(ctx, db)
	if err != nil {
		return err
	}
	a.logf("recover: database %s has %d tables", db, st.Tables)
	if err := a.Host.Remove(RecoverMarker); err != nil {
		return err
	}
	if o.NoStart {
		a.logf("recover: done; the appliance stays stopped (--no-start)")
		return nil
	}
	// The empty-database stop left the failed flag: the recover is the fix.
	if reason, ok := status.FailedReason(a.Host); ok {
		a.logf("recover: removing %s (%s)", status.FailedFlag, reason)
		if err := a.Host.Remove(status.FailedFlag); err != nil {
			return err
		}
		_ = a.systemctl(ctx, "reset-failed")
	}
	a.logf("recover: done; starting the appliance")
	return a.systemctl(ctx, "start", "--no-block", "appliance.service")
}

// swapDir replaces dir with the restored tree: an empty dir is removed, a
// non-empty one renamed to dir.before-recover-<stamp>.
func (a *Agent) swapDir(dir, restored, stamp string) error {
	real := a.Host.Path(dir)
	n, _, err := countFiles(real, 1)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case n > 0:
		old := real + ".before-recover-" + stamp
		a.logf("recover: keeping the old %s as %s", dir, old)
		if err := os.Rename(real, old); err != nil {
			return err
		}
	default:
		if err := os.RemoveAll(real); err != nil {
			return err
		}
	}
	return os.Rename(restored, real)
}

// localData describes the data a recover would overwrite (nothing: empty).
func (a *Agent) localData(ctx context.Context, db string) ([]string, error) {
	var what []string
	ok, err := a.DatabaseExists(ctx, db)
	if err != nil {
		return nil, err
	}
	if ok {
		st, err := a.DatabaseTables(ctx, db)
		if err != nil {
			return nil, err
		}
		if st.Tables > 0 {
			what = append(what, fmt.Sprintf("database %s (%d tables, about %d rows)", db, st.Tables, st.Rows))
		}
	}
	n, size, err := countFiles(a.Host.Path(StorageVault), 0)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if n > 0 {
		what = append(what, fmt.Sprintf("%s (%d files, %d bytes)", StorageVault, n, size))
	}
	return what, nil
}

// checkEmptyDatabase is prepare-ecs's restore-check step (manual §4.4): a
// new appliance booted with an old env.yml finds its database without
// tables and its storage vault without files while the backup target holds
// a backup; it stops there (failed, with the reason) instead of migrating
// an empty database, until `ecs-agent recover` restores the backup. A new
// site (no backup at the target) starts normally; a target that cannot be
// read is a warning in the journal, not a stop.
func (a *Agent) checkEmptyDatabase(ctx context.Context, e *Env) error {
	if a.PG.BinDir == "" && a.pgConfDir() == "" {
		return nil // no PostgreSQL on this machine
	}
	if a.Host.Exists(RecoverMarker) {
		return fmt.Errorf("a recover was interrupted (%s exists): run `ecs-agent recover --yes-i-am-sure` again", RecoverMarker)
	}
	if e.Str("appliance.backup.encrypt") == "" {
		return nil
	}
	db, err := dbName(e)
	if err != nil {
		return err
	}
	what, err := a.localData(ctx, db)
	if err != nil {
		a.logf("prepare-ecs/restore-check: %v; skipped", err)
		return nil
	}
	if len(what) > 0 {
		return nil
	}
	c, err := a.backupConfig(e)
	if err != nil {
		a.logf("prepare-ecs/restore-check: warning: %v", err)
		return nil
	}
	last, err := a.lastBackup(ctx, c)
	if err != nil {
		a.logf("prepare-ecs/restore-check: warning: could not look for a backup at %s: %v; starting with the empty database", c.Shown, err)
		return nil
	}
	if last == "" {
		return nil
	}
	return fmt.Errorf("empty database: restore with `ecs-agent recover --yes-i-am-sure` (the backup target %s holds a backup of %s)", c.Shown, last)
}

// lastBackup returns the time of the newest backup at the target ("" when
// there is none). A file:// target is read directly; others through
// duplicity collection-status.
func (a *Agent) lastBackup(ctx context.Context, c *BackupConfig) (string, error) {
	unmount, err := a.prepareBackupTarget(ctx, c)
	if err != nil {
		return "", err
	}
	defer unmount()
	if dir, ok := strings.CutPrefix(c.Target, "file://"); ok {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		last := ""
		for _, en := range entries {
			n := en.Name()
			if strings.HasPrefix(n, "duplicity-") && strings.Contains(n, ".manifest") {
				f := strings.Split(strings.TrimSuffix(n[:strings.Index(n, ".manifest")], ".manifest"), ".")
				if t := f[len(f)-1]; t > last {
					last = t
				}
			}
		}
		return last, nil
	}
	fpr, err := a.backupKey(ctx, c)
	if err != nil {
		return "", err
	}
	out, err := a.duplicity(ctx, c, fpr, "collection-status", c.Target)
	if err != nil {
		return "", err
	}
	last := ""
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Chain end time:"); ok {
			last = strings.TrimSpace(v)
		}
	}
	return last, nil
}

// checkpoint calls the test hook (tests interrupt a run there) and returns
// the context's error.
func (a *Agent) checkpoint(ctx context.Context, name string) error {
	if a.hook != nil {
		a.hook(name)
	}
	return ctx.Err()
}
