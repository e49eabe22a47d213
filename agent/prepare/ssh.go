package prepare

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// sshdDropIn is the agent's sshd configuration (disable_root).
const sshdDropIn = "/etc/ssh/sshd_config.d/ecs-agent.conf"

// stepSSH applies the env's SSH access at every start of the appliance
// (manual §3.2), not only at cloud-init's first boot, whatever the env's
// source: every key of ssh_authorized_keys is allowed for root, every key
// of ssh_deprecated_keys is removed from root's and every user's
// authorized_keys (a key in both lists counts as deprecated), and
// disable_root decides whether sshd lets root log in. Other lines of the
// files (keys added by hand) are kept, as the original appliance did.
func (a *Agent) stepSSH(ctx context.Context, e *Env) error {
	var allowed, deprecated []string
	if err := e.Decode("ssh_authorized_keys", &allowed); err != nil {
		return err
	}
	if err := e.Decode("ssh_deprecated_keys", &deprecated); err != nil {
		return err
	}
	gone := map[string]bool{}
	for i, k := range deprecated {
		id, err := keyID(k)
		if err != nil {
			return fmt.Errorf("ssh_deprecated_keys[%d]: %w", i, err)
		}
		gone[id] = true
	}
	var add []string
	for i, k := range allowed {
		id, err := keyID(k)
		if err != nil {
			return fmt.Errorf("ssh_authorized_keys[%d]: %w", i, err)
		}
		if gone[id] {
			a.logf("ssh: ssh_authorized_keys[%d] is also in ssh_deprecated_keys: not allowed", i)
			continue
		}
		add = append(add, strings.TrimSpace(k))
	}
	files := []string{"/root/.ssh/authorized_keys"}
	homes, _ := filepath.Glob(a.Host.Path("/home/*/.ssh/authorized_keys"))
	for _, h := range homes {
		rel, err := filepath.Rel(a.Host.Path("/"), h)
		if err == nil {
			files = append(files, "/"+rel)
		}
	}
	for i, f := range files {
		var extra []string
		if i == 0 {
			extra = add
		}
		changed, removed, err := a.updateAuthorizedKeys(f, extra, gone)
		if err != nil {
			return err
		}
		if changed {
			a.logf("ssh: %s: %d deprecated key(s) removed, %d key(s) of env.yml present", f, removed, len(extra))
		}
	}
	permit := "prohibit-password"
	if e.Bool("disable_root", true) {
		permit = "no"
	}
	conf := "# Written by ecs-agent from env.yml's disable_root; do not edit.\nPermitRootLogin " + permit + "\n"
	changed, err := a.Host.WriteFile(sshdDropIn, []byte(conf), 0o644)
	if err != nil {
		return err
	}
	if changed && a.Host.Exists("/lib/systemd/system/ssh.service") {
		// reload, not restart: open sessions stay; try-reload: sshd may
		// not run yet this early in the boot.
		if err := a.systemctl(ctx, "try-reload-or-restart", "ssh.service"); err != nil {
			return err
		}
	}
	return nil
}

// updateAuthorizedKeys removes the keys whose keyID is in gone from the
// authorized_keys file p and appends each key of add it lacks. A missing
// file is created only when there is something to add.
func (a *Agent) updateAuthorizedKeys(p string, add []string, gone map[string]bool) (changed bool, removed int, err error) {
	old, err := a.Host.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		return false, 0, err
	}
	if old == nil && len(add) == 0 {
		return false, 0, nil
	}
	have := map[string]bool{}
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(old), "\n") {
		if line == "" {
			continue
		}
		if id, err := keyID(line); err == nil {
			if gone[id] {
				removed++
				continue
			}
			have[id] = true
		}
		out.WriteString(line)
		if !strings.HasSuffix(line, "\n") {
			out.WriteByte('\n')
		}
	}
	for _, k := range add {
		id, _ := keyID(k)
		if !have[id] {
			have[id] = true
			out.WriteString(k + "\n")
		}
	}
	if err := a.Host.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return false, 0, err
	}
	changed, err = a.Host.WriteFile(p, out.Bytes(), 0o600)
	return changed, removed, err
}

// keyID identifies an authorized_keys line by its key alone (type and
// blob), whatever its options and comment.
func keyID(line string) (string, error) {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return "", fmt.Errorf("not a key")
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return "", fmt.Errorf("not an SSH public key: %w", err)
	}
	return string(k.Marshal()), nil
}
