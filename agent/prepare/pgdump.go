package prepare

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/atomicfile"
)

// Data layout of the database dumps and the document store (manual §4.6,
// §6.4): both are what the backup saves.
const (
	DataDir      = "/data"
	StorageVault = "/data/ecs-storage-vault"
	PGDumpDir    = "/data/ecs-pgdump"
	// BackupDump is the dump the nightly backup takes and saves.
	BackupDump = PGDumpDir + "/ecs.pgdump"
	// MigrateDump is the dump taken before a database migration.
	MigrateDump = PGDumpDir + "/ecs-migrate.pgdump"
)

// PGOptions override how the agent reaches the local PostgreSQL server
// (tests run a server of their own); zero values mean the appliance's
// cluster: the newest /etc/postgresql/<version>/main, its binaries and
// port, as the OS user postgres.
type PGOptions struct {
	BinDir string   // directory of psql, pg_dump, pg_restore (default: the cluster version's)
	Conn   []string // connection arguments (default: -p <cluster port>)
	User   string   // OS user the clients run as (default postgres, via runuser)
}

// pgCommand returns the command that runs the PostgreSQL client name as the
// server's OS user, with the connection arguments.
func (a *Agent) pgCommand(name string, args ...string) host.Cmd {
	bin, conn := name, []string(nil)
	if a.PG.BinDir != "" {
		bin = filepath.Join(a.PG.BinDir, name)
	} else if dir := a.pgConfDir(); dir != "" {
		bin, conn = a.pgTool(dir, name)
	}
	if a.PG.Conn != nil {
		conn = a.PG.Conn
	}
	user := a.PG.User
	if user == "" {
		user = "postgres"
	}
	full := append([]string{"-u", user, "--", bin}, conn...)
	return host.Cmd{Name: "runuser", Args: append(full, args...)}
}

// psqlQuery runs sql in database db and returns psql's unaligned,
// tuples-only output.
func (a *Agent) psqlQuery(ctx context.Context, db, sql string) (string, error) {
	c := a.pgCommand("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db)
	c.Stdin = strings.NewReader(sql)
	out, err := a.Host.RunCmd(ctx, c)
	return strings.TrimSpace(string(out)), err
}

// DatabaseExists reports whether database name exists on the local server.
func (a *Agent) DatabaseExists(ctx context.Context, name string) (bool, error) {
	out, err := a.psqlQuery(ctx, "postgres", fmt.Sprintf("SELECT count(*) FROM pg_database WHERE datname = '%s';\n", name))
	if err != nil {
		return false, fmt.Errorf("querying PostgreSQL for database %s: %w", name, err)
	}
	n, err := strconv.Atoi(out)
	if err != nil {
		return false, fmt.Errorf("querying PostgreSQL for database %s: unexpected answer %q", name, out)
	}
	return n > 0, nil
}

// TableStats are the user tables of a database.
type TableStats struct {
	Tables int
	Rows   int64 // estimated (pg_class.reltuples; 0 for never analysed tables)
}

// DatabaseTables counts the tables outside PostgreSQL's own schemas.
func (a *Agent) DatabaseTables(ctx context.Context, db string) (TableStats, error) {
	out, err := a.psqlQuery(ctx, db, `SELECT count(*) || '|' || coalesce(sum(greatest(c.reltuples, 0))::bigint, 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%';
`)
	if err != nil {
		return TableStats{}, fmt.Errorf("counting the tables of database %s: %w", db, err)
	}
	var st TableStats
	if _, err := fmt.Sscanf(out, "%d|%d", &st.Tables, &st.Rows); err != nil {
		return st, fmt.Errorf("counting the tables of database %s: unexpected answer %q", db, out)
	}
	return st, nil
}

// DumpDatabase writes `pg_dump --format=custom` of database db to dest (an
// in-appliance path, e.g. BackupDump or MigrateDump): into a temp file in
// the same directory, fsynced, then renamed, so dest is always a complete
// dump (or the previous one). Uncompressed (-Z0): the backup encrypts and
// compresses it anyway, and librsync's deltas of an uncompressed dump keep
// the nightly incrementals small (the original piped it through
// gzip --rsyncable for the same reason). The file is 0600, owned by root.
// It is the one dump helper: the backup and the pre-migration dump use it.
func (a *Agent) DumpDatabase(ctx context.Context, db, dest string) (int64, error) {
	f, err := atomicfile.Create(a.Host.Path(dest), 0o600, atomicfile.MkdirAll(0o700))
	if err != nil {
		return 0, err
	}
	c := a.pgCommand("pg_dump", "--format=custom", "-Z0", "--encoding=UTF8", "-d", db)
	c.Stdout = f
	if _, err := a.Host.RunCmd(ctx, c); err != nil {
		f.Abort()
		return 0, fmt.Errorf("pg_dump of database %s: %w", db, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Abort()
		return 0, err
	}
	// duplicity takes a file whose mode and mtime (in whole seconds) are
	// those of its last backup for unchanged, without reading it: a dump
	// replacing one written in the same second (two backups in a row) gets
	// the next second, or the next backup would keep the old dump.
	if old, err := os.Stat(a.Host.Path(dest)); err == nil && st.ModTime().Unix() <= old.ModTime().Unix() {
		next := time.Unix(old.ModTime().Unix()+1, 0)
		if err := os.Chtimes(f.Name(), next, next); err != nil {
			f.Abort()
			return 0, err
		}
	}
	return st.Size(), f.Commit()
}

// RestoreDatabase replaces database db with the dump at src (an
// in-appliance path): the database is dropped (connections terminated) and
// created again, owned by role ecs with the locale prepare-appliance gives
// it (DBLocale when the image generates it), and pg_restore loads the dump
// in one transaction as role ecs (so the application owns every object),
// stopping at the first error.
func (a *Agent) RestoreDatabase(ctx context.Context, db, src string) error {
	f, err := os.Open(a.Host.Path(src))
	if err != nil {
		return err
	}
	defer f.Close()
	sql := fmt.Sprintf(`SELECT 'CREATE ROLE %[1]s LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%[1]s')\gexec
DROP DATABASE IF EXISTS %[2]s WITH (FORCE);
CREATE DATABASE %[2]s OWNER %[1]s TEMPLATE template0 ENCODING 'UTF8'%[3]s;
`, DBRole, db, strings.ReplaceAll(a.dbLocaleSQL(), "''", "'"))
	if _, err := a.psqlQuery(ctx, "postgres", sql); err != nil {
		return fmt.Errorf("creating an empty database %s: %w", db, err)
	}
	c := a.pgCommand("pg_restore", "--no-owner", "--role="+DBRole, "--single-transaction", "--exit-on-error", "-d", db)
	c.Stdin = f
	if _, err := a.Host.RunCmd(ctx, c); err != nil {
		return fmt.Errorf("pg_restore of %s into database %s: %w", src, db, err)
	}
	return nil
}

// dumpBeforeMigration takes MigrateDump before the migrations run, when
// database ecs has tables (the original's "dump before migrating"); a
// failed dump stops the migration.
func (a *Agent) dumpBeforeMigration(ctx context.Context, e *Env) error {
	if a.PG.BinDir == "" && a.pgConfDir() == "" {
		return nil
	}
	db, err := dbName(e)
	if err != nil {
		return err
	}
	st, err := a.DatabaseTables(ctx, db)
	if err != nil || st.Tables == 0 {
		return nil // no database yet, or nothing in it to lose
	}
	n, err := a.DumpDatabase(ctx, db, MigrateDump)
	if err != nil {
		return fmt.Errorf("dump before the migration: %w", err)
	}
	a.logf("prepare-ecs/migrate: dumped database %s to %s (%d bytes) before migrating", db, MigrateDump, n)
	return nil
}
