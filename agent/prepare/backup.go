package prepare

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
)

// Backup state and outputs (manual §4.6).
const (
	BackupStateDir   = "/var/lib/ecs-agent/backup"
	BackupGnupgHome  = BackupStateDir + "/gnupg"       // the appliance.backup.encrypt key only
	BackupCacheDir   = BackupStateDir + "/cache"       // duplicity's --archive-dir (plaintext metadata)
	BackupStatusFile = BackupStateDir + "/status.json" // the last run, for `ecs-agent backup status`
	BackupKnownHosts = BackupStateDir + "/known_hosts" // appliance.backup.ssh_known_hosts
	BackupRestoreDir = DataDir + "/.ecs-restore"       // duplicity restores here first
	BackupLockFile   = "/run/ecs-agent/backup.lock"
	BackupTempDir    = "/var/tmp"
	// MetricsDir is node-exporter's textfile-collector directory.
	MetricsDir    = "/var/lib/prometheus/node-exporter"
	BackupMetrics = MetricsDir + "/appliance_backup.prom"
	// DefaultBackupURL is the backup target when appliance.backup.url is unset.
	DefaultBackupURL = "file:///volatile/ecs-backup-test/"
	// BackupFullEvery: a new full backup after this age (duplicity time format).
	BackupFullEvery = "2M"
	// BackupKeep: backups older than this are purged (as long as no newer
	// incremental depends on them).
	BackupKeep = "4M"
	// BackupTimer is the systemd timer of the nightly backup.
	BackupTimer = "appliance-backup.timer"
)

// ErrBackupBusy is returned when another backup or recover holds the lock.
var ErrBackupBusy = errors.New("another backup or recover is running (" + BackupLockFile + ")")

// BackupConfig is the backup configuration of the active env.
type BackupConfig struct {
	URL     string   // appliance.backup.url as written (may hold credentials)
	Target  string   // the URL given to duplicity (credentials moved to Env)
	Shown   string   // the URL for logs and status: no password
	Env     []string // credentials for duplicity's environment, never on a command line
	Options []string // appliance.backup.options, split like a shell
	Mount   *BackupMount
	// KnownHosts is appliance.backup.ssh_known_hosts: the sftp/scp
	// server's host key(s) in known_hosts format.
	KnownHosts string
	Key        string // appliance.backup.encrypt (armored key)
}

// BackupMount is appliance.backup.mount.
type BackupMount struct {
	Type    string `yaml:"type"`
	Source  string `yaml:"source"`
	Target  string `yaml:"target"`
	Options string `yaml:"options"`
}

// backupConfig reads appliance.backup.* from the active env.
func (a *Agent) backupConfig(e *Env) (*BackupConfig, error) {
	c := &BackupConfig{URL: e.Str("appliance.backup.url"), Key: e.Str("appliance.backup.encrypt"), KnownHosts: e.Str("appliance.backup.ssh_known_hosts")}
	if c.URL == "" {
		c.URL = DefaultBackupURL
	}
	if c.Key == "" {
		return nil, errors.New("appliance.backup.encrypt is not set: nothing leaves the appliance unencrypted, so there is no backup")
	}
	opts, err := splitShell(e.Str("appliance.backup.options"))
	if err != nil {
		return nil, fmt.Errorf("appliance.backup.options: %w", err)
	}
	c.Options = opts
	var m BackupMount
	if err := e.Decode("appliance.backup.mount", &m); err != nil {
		return nil, err
	}
	if m.Type != "" {
		m.Target = a.Host.Path(m.Target)
		c.Mount = &m
	}
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("appliance.backup.url %q is not a URL", c.URL)
	}
	if u.User != nil {
		user := u.User.Username()
		pass, hasPass := u.User.Password()
		switch {
		case strings.Contains(u.Scheme, "s3"):
			// boto reads the key pair from the environment.
			c.Env = append(c.Env, "AWS_ACCESS_KEY_ID="+user, "AWS_SECRET_ACCESS_KEY="+pass)
			u.User = nil
		case hasPass:
			// duplicity's backends read the password from FTP_PASSWORD.
			c.Env = append(c.Env, "FTP_PASSWORD="+pass)
			u.User = url.User(user)
		}
	}
	if u.Scheme == "file" && !a.Host.IsRealRoot() {
		u.Path = a.Host.Path(u.Path)
	}
	c.Target = u.String()
	c.Shown = u.Redacted()
	if c.KnownHosts != "" {
		c.Options = append(c.Options, "--ssh-options=-oUserKnownHostsFile="+a.Host.Path(BackupKnownHosts))
	}
	return c, nil
}

// splitShell splits s into words like a POSIX shell (quotes and
// backslashes; no expansion).
func splitShell(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated ' quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case ch == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New(`unterminated " quote`)
			}
			inWord = true
		case ch == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case ch == ' ' || ch == '\t' || ch == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// lockBackup takes the backup/recover lock without waiting.
func (a *Agent) lockBackup() (unlock func(), err error) {
	p := a.Host.Path(BackupLockFile)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, ErrBackupBusy
	}
	return func() { f.Close() }, nil
}

// backupKey imports the appliance.backup.encrypt key into the backup's own
// GnuPG home (0700; nothing else is in it) and returns its fingerprint. A
// home holding another key (the env's key changed) is emptied first.
func (a *Agent) backupKey(ctx context.Context, c *BackupConfig) (string, error) {
	home := a.Host.Path(BackupGnupgHome)
	if err := os.MkdirAll(home, 0o700); err != nil {
		return "", err
	}
	// show-only imports nothing; the home keeps gpg from creating ~/.gnupg.
	out, err := a.Host.RunCmd(ctx, host.Cmd{Name: "gpg", Args: []string{"--homedir", home, "--batch", "--with-colons", "--import-options", "show-only", "--import"}, Stdin: strings.NewReader(c.Key)})
	if err != nil {
		return "", fmt.Errorf("appliance.backup.encrypt: reading the key: %w", err)
	}
	fpr := firstFingerprint(string(out))
	if fpr == "" {
		if _, rec := a.Host.Runner.(*host.Recorder); rec {
			return "RECORDED", nil // --root tests: nothing ran
		}
		return "", errors.New("appliance.backup.encrypt: no OpenPGP key found in it")
	}
	gpg := func(args ...string) host.Cmd {
		return host.Cmd{Name: "gpg", Args: append([]string{"--homedir", home, "--batch"}, args...)}
	}
	have, err := a.Host.RunCmd(ctx, gpg("--with-colons", "--list-secret-keys"))
	if err == nil && firstFingerprint(string(have)) == fpr && strings.Count(string(have), "\nsec:")+boolInt(strings.HasPrefix(string(have), "sec:")) == 1 {
		return fpr, nil
	}
	// Another key, or none: start from an empty home.
	_, _ = a.Host.RunCmd(ctx, host.Cmd{Name: "gpgconf", Args: []string{"--homedir", home, "--kill", "gpg-agent"}})
	if err := os.RemoveAll(home); err != nil {
		return "", err
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return "", err
	}
	c2 := gpg("--import")
	c2.Stdin = strings.NewReader(c.Key)
	if _, err := a.Host.RunCmd(ctx, c2); err != nil {
		return "", fmt.Errorf("appliance.backup.encrypt: importing the key: %w", err)
	}
	c3 := gpg("--import-ownertrust")
	c3.Stdin = strings.NewReader(fpr + ":6:\n")
	if _, err := a.Host.RunCmd(ctx, c3); err != nil {
		return "", fmt.Errorf("appliance.backup.encrypt: trusting the key: %w", err)
	}
	return fpr, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// firstFingerprint returns the fingerprint of the first primary key in gpg
// --with-colons output.
func firstFingerprint(colons string) string {
	primary := false
	for _, l := range strings.Split(colons, "\n") {
		f := strings.Split(l, ":")
		switch {
		case f[0] == "pub" || f[0] == "sec":
			primary = true
		case f[0] == "fpr" && primary && len(f) > 9:
			return f[9]
		case f[0] == "sub" || f[0] == "ssb":
			primary = false
		}
	}
	return ""
}

// duplicity runs duplicity with the backup's GnuPG home, cache and
// options; its output goes to the journal and is returned.
func (a *Agent) duplicity(ctx context.Context, c *BackupConfig, fpr string, args ...string) (string, error) {
	name := "appliance-" + shortHash(c.Target+"\x00"+fpr)
	full := []string{args[0],
		"--archive-dir", a.Host.Path(BackupCacheDir), "--name", name,
		"--tempdir", a.Host.Path(BackupTempDir),
		"--gpg-options=--trust-model=always",
	}
	full = append(full, c.Options...)
	full = append(full, args[1:]...)
	envv := append([]string{"GNUPGHOME=" + a.Host.Path(BackupGnupgHome), "PASSPHRASE=", "LANG=C.UTF-8"}, c.Env...)
	var out bytes.Buffer
	w := io.MultiWriter(&out, a.logWriter())
	_, err := a.Host.RunCmd(ctx, host.Cmd{Name: "duplicity", Args: full, Env: envv, Stdout: w, Stderr: w})
	return out.String(), err
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:6])
}

func (a *Agent) logWriter() io.Writer { return &lockedWriter{a: a} }

// lockedWriter writes to the agent's log under its lock.
type lockedWriter struct{ a *Agent }

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.a.logMu.Lock()
	defer l.a.logMu.Unlock()
	w := l.a.Log
	if w == nil {
		w = os.Stderr
	}
	return w.Write(p)
}

// BackupOptions tune Backup.
type BackupOptions struct {
	// Full forces a full backup.
	Full bool
}

// Backup is `ecs-agent backup run` (appliance-backup.service): refuse
// without database or documents, dump the database, then duplicity to
// appliance.backup.url, encrypted to appliance.backup.encrypt: cleanup,
// backup (full when none or the last full is older than 2 months, else
// incremental), remove what is older than 4 months. The outcome goes to
// the status file, the state/status page and the metrics file; a failure
// is returned (the unit fails) and never hidden.
func (a *Agent) Backup(ctx context.Context, o BackupOptions) (err error) {
	unlock, err := a.lockBackup()
	if err != nil {
		return err
	}
	defer unlock()
	rec := BackupRecord{Start: time.Now().UTC()}
	if prev, perr := a.ReadBackupRecord(); perr == nil {
		rec.LastSuccess, rec.LastSuccessBytes = prev.LastSuccess, prev.LastSuccessBytes
	}
	defer func() {
		rec.End = time.Now().UTC()
		rec.Duration = rec.End.Sub(rec.Start).Seconds()
		rec.Result = "success"
		if err != nil {
			rec.Result, rec.Error = "failed", err.Error()
		} else {
			rec.LastSuccess, rec.LastSuccessBytes = rec.End, rec.SourceBytes
		}
		a.recordBackup(ctx, rec)
	}()
	e, err := a.loadActive()
	if err != nil {
		return err
	}
	c, err := a.backupConfig(e)
	if err != nil {
		return err
	}
	rec.Target = c.Shown
	db, err := dbName(e)
	if err != nil {
		return err
	}
	// Safety first (manual §4.6): a database and at least one document.
	ok, err := a.DatabaseExists(ctx, db)
	if err != nil {
		return fmt.Errorf("backup refused: %w", err)
	}
	if !ok {
		return fmt.Errorf("backup refused: database %s does not exist", db)
	}
	files, _, err := countFiles(a.Host.Path(StorageVault), 1)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("backup refused: reading %s: %w", StorageVault, err)
	}
	if files == 0 {
		return fmt.Errorf("backup refused: %s holds no file", StorageVault)
	}
	fpr, unmount, err := a.openBackupTarget(ctx, c)
	if err != nil {
		return err
	}
	defer unmount()
	a.logf("backup: dumping database %s to %s", db, BackupDump)
	if rec.DumpBytes, err = a.DumpDatabase(ctx, db, BackupDump); err != nil {
		return err
	}
	if _, err := a.duplicity(ctx, c, fpr, "cleanup", "--force", c.Target); err != nil {
		a.logf("backup: warning: duplicity cleanup: %v", err)
		rec.Warnings = append(rec.Warnings, "cleanup: "+err.Error())
	}
	data := a.Host.Path(DataDir)
	args := []string{"incremental"}
	if o.Full {
		args = []string{"full"}
	}
	args = append(args, "--encrypt-key", fpr, "--full-if-older-than", BackupFullEvery,
		"--exclude-other-filesystems",
		"--include", a.Host.Path(StorageVault), "--include", a.Host.Path(PGDumpDir), "--exclude", "**",
		data, c.Target)
	if o.Full {
		args = slicesDelete(args, "--full-if-older-than", BackupFullEvery)
	}
	a.logf("backup: duplicity %s of %s and %s to %s", args[0], StorageVault, PGDumpDir, c.Shown)
	out, err := a.duplicity(ctx, c, fpr, args...)
	parseBackupStats(out, &rec)
	if err != nil {
		return fmt.Errorf("duplicity backup to %s: %w", c.Shown, err)
	}
	if _, err := a.duplicity(ctx, c, fpr, "remove-older-than", BackupKeep, "--force", c.Target); err != nil {
		a.logf("backup: warning: duplicity remove-older-than %s: %v", BackupKeep, err)
		rec.Warnings = append(rec.Warnings, "remove-older-than: "+err.Error())
	}
	a.logf("backup: done: %s backup, %d files, %d bytes, %d bytes uploaded", rec.Type, rec.SourceFiles, rec.SourceBytes, rec.Uploaded)
	return nil
}

func slicesDelete(s []string, drop ...string) []string {
	out := s[:0]
	for _, v := range s {
		if !contains(drop, v) {
			out = append(out, v)
		}
	}
	return out
}

// countFiles counts the regular files under dir and their bytes; it stops
// after limit files (0: no limit).
func countFiles(dir string, limit int) (int, int64, error) {
	n, size := 0, int64(0)
	stop := errors.New("stop")
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			n++
			if fi, err := d.Info(); err == nil {
				size += fi.Size()
			}
			if limit > 0 && n >= limit {
				return stop
			}
		}
		return nil
	})
	if errors.Is(err, stop) {
		err = nil
	}
	return n, size, err
}
