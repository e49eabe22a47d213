package prepare

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/ecs-image/ecs-image/agent/host"
)

// The storage vault's GnuPG home: the ecs containers mount it at
// /app/ecs-gpg and encrypt and sign the documents of the storage vault with
// the keys of ecs.vault_encrypt and ecs.vault_sign (manual §6.4, §6.5).
const (
	GPGHome = "/data/ecs-gpg"
	// VaultStamp records the SHA-256 of the imported keys, so that an
	// unchanged env imports nothing.
	VaultStamp = GPGHome + "/.ecs-agent-vault-keys"
	// ContainerUID owns the GnuPG home: the user the ecs containers run
	// as (the original appliance's chown 1000:1000).
	ContainerUID = 1000
)

// vaultKeys are the env keys imported into GPGHome, in order.
var vaultKeys = []string{"ecs.vault_encrypt", "ecs.vault_sign"}

// stepVaultKeys imports ecs.vault_encrypt and ecs.vault_sign into GPGHome
// with gpg. The keys are on gpg's standard input, never on a command line.
// When they change, the keyrings are emptied first (the old keys go; other
// files such as random_seed stay), as the original appliance did. Unchanged
// keys import nothing.
func (a *Agent) stepVaultKeys(ctx context.Context, e *Env) error {
	var keys []string
	sum := sha256.New()
	for _, k := range vaultKeys {
		text := e.Str(k)
		if text == "" {
			continue
		}
		if !strings.Contains(text, "-----BEGIN PGP PRIVATE KEY BLOCK-----") {
			return fmt.Errorf("%s: not an OpenPGP private key block", k)
		}
		keys = append(keys, k)
		fmt.Fprintf(sum, "%s\x00%s\x00", k, text)
	}
	if len(keys) == 0 {
		a.logf("prepare-appliance/vault-keys: no ecs.vault_encrypt or ecs.vault_sign; %s left alone", GPGHome)
		return nil
	}
	stamp := hex.EncodeToString(sum.Sum(nil)) + "\n"
	if old, err := a.Host.ReadFile(VaultStamp); err == nil && string(old) == stamp && a.hasKeyring() {
		return nil
	}
	home := a.Host.Path(GPGHome)
	if err := os.MkdirAll(home, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(home, 0o700); err != nil {
		return err
	}
	// An agent left running on this home (by an import that failed, or
	// by someone's gpg) would serve the old keys and sockets.
	a.killGPGAgent(ctx, home)
	if err := a.wipeKeyrings(); err != nil {
		return err
	}
	// gpg (and its agent, which holds the secret keys while they are
	// imported) refuse a home owned by another user: the agent's own while
	// it imports, the containers' after.
	if err := a.chownTree(GPGHome, os.Geteuid(), os.Getegid()); err != nil {
		return err
	}
	for _, k := range keys {
		_, err := a.Host.RunCmd(ctx, host.Cmd{Name: "gpg",
			Args:  []string{"--homedir", home, "--batch", "--yes", "--no-tty", "--quiet", "--import", "-"},
			Stdin: strings.NewReader(e.Str(k) + "\n")})
		if err != nil {
			return fmt.Errorf("importing %s into %s: %w", k, GPGHome, err)
		}
	}
	// gpg started an agent for the secret keys; it is not needed any more.
	a.killGPGAgent(ctx, home)
	if _, err := a.Host.WriteFile(VaultStamp, []byte(stamp), 0o600); err != nil {
		return err
	}
	if err := a.chownTree(GPGHome, ContainerUID, ContainerUID); err != nil {
		return err
	}
	a.logf("prepare-appliance/vault-keys: imported %s into %s", strings.Join(keys, ", "), GPGHome)
	return nil
}

// killGPGAgent stops the gpg-agent of the GnuPG home, if one runs.
func (a *Agent) killGPGAgent(ctx context.Context, home string) {
	if _, err := a.Host.Run(ctx, "gpgconf", "--homedir", home, "--kill", "gpg-agent"); err != nil {
		a.logf("prepare-appliance/vault-keys: stopping gpg-agent: %v", err)
	}
}

// hasKeyring reports whether GPGHome holds a public keyring.
func (a *Agent) hasKeyring() bool {
	return a.Host.Exists(GPGHome+"/pubring.kbx") || a.Host.Exists(GPGHome+"/pubring.gpg")
}

// wipeKeyrings removes the keyrings, trust database and secret keys of
// GPGHome, keeping the directory and its other files.
func (a *Agent) wipeKeyrings() error {
	entries, err := os.ReadDir(a.Host.Path(GPGHome))
	if err != nil {
		return err
	}
	for _, en := range entries {
		n := en.Name()
		if strings.Contains(n, ".gpg") || strings.HasPrefix(n, "pubring.kbx") ||
			n == "private-keys-v1.d" || n == "openpgp-revocs.d" || n == "public-keys.d" ||
			strings.HasPrefix(n, "S.gpg-agent") {
			if err := os.RemoveAll(a.Host.Path(GPGHome + "/" + n)); err != nil {
				return err
			}
		}
	}
	return nil
}

// chownTree gives the tree at p (not following links) to uid:gid. Outside
// the real root (tests), a permission error is only logged.
func (a *Agent) chownTree(p string, uid, gid int) error {
	err := filepath.WalkDir(a.Host.Path(p), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
	if err != nil && !a.Host.IsRealRoot() && os.IsPermission(err) {
		a.logf("chown %s: %v (ignored outside the real root)", p, err)
		return nil
	}
	return err
}
