package prepare

import (
	"context"
	"fmt"
	"os"
	"strings"
)

// The backup target: key import, known hosts, the optional mount.

// openBackupTarget imports the backup key and prepares the target (see
// prepareBackupTarget): what a backup and a recover both do first. It
// returns the key's fingerprint and the target's unmount.
func (a *Agent) openBackupTarget(ctx context.Context, c *BackupConfig) (string, func(), error) {
	fpr, err := a.backupKey(ctx, c)
	if err != nil {
		return "", nil, err
	}
	unmount, err := a.prepareBackupTarget(ctx, c)
	if err != nil {
		return "", nil, err
	}
	return fpr, unmount, nil
}

// prepareBackupTarget writes the known_hosts file and mounts the target
// when configured; the returned function unmounts it.
func (a *Agent) prepareBackupTarget(ctx context.Context, c *BackupConfig) (func(), error) {
	if err := os.MkdirAll(a.Host.Path(BackupStateDir), 0o700); err != nil {
		return nil, err
	}
	if c.KnownHosts != "" {
		if _, err := a.Host.WriteFile(BackupKnownHosts, []byte(strings.TrimSpace(c.KnownHosts)+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(a.Host.Path(BackupCacheDir), 0o700); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(a.Host.Path(BackupTempDir), 0o1777); err != nil {
		return nil, err
	}
	if c.Mount == nil {
		return func() {}, nil
	}
	m := c.Mount
	if err := os.MkdirAll(m.Target, 0o700); err != nil {
		return nil, fmt.Errorf("appliance.backup.mount: creating %s: %w", m.Target, err)
	}
	args := []string{"-t", m.Type}
	if m.Options != "" {
		args = append(args, "-o", m.Options)
	}
	args = append(args, m.Source, m.Target)
	// The options may hold a password: not logged (Cmd.String is only
	// used by the recorder in tests).
	if _, err := a.Host.Run(ctx, "mount", args...); err != nil {
		return nil, fmt.Errorf("appliance.backup.mount: mounting %s on %s: %v", m.Source, m.Target, redactMountErr(err, m.Options))
	}
	a.logf("backup: mounted %s (%s) on %s", m.Source, m.Type, m.Target)
	return func() {
		if _, err := a.Host.Run(context.WithoutCancel(ctx), "umount", m.Target); err != nil {
			a.logf("backup: warning: unmounting %s: %v; trying a lazy unmount", m.Target, err)
			_, _ = a.Host.Run(context.WithoutCancel(ctx), "umount", "--lazy", m.Target)
		}
	}, nil
}

func redactMountErr(err error, opts string) string {
	s := err.Error()
	if opts != "" {
		s = strings.ReplaceAll(s, opts, "<options>")
	}
	return s
}
