package prepare

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/ecs-image/ecs-image/env"
)

func newSSHKey(t *testing.T, comment string) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " " + comment
}

func sshEnv(t *testing.T, allowed, deprecated []string, disableRoot string) *Env {
	t.Helper()
	var b strings.Builder
	b.WriteString("#cloud-config\nssh_authorized_keys:\n")
	for _, k := range allowed {
		b.WriteString("  - \"" + k + "\"\n")
	}
	b.WriteString("ssh_deprecated_keys:\n")
	for _, k := range deprecated {
		b.WriteString("  - \"" + k + "\"\n")
	}
	if disableRoot != "" {
		b.WriteString("disable_root: " + disableRoot + "\n")
	}
	// The rest of the compat env (appliance, ecs).
	rest := string(defaultEnvData(t))
	rest = rest[strings.Index(rest, "\nappliance:")+1:]
	doc, err := env.Parse("env.yml", []byte(b.String()+rest))
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Doc: doc}
}

// Rotation: the new key is allowed for root, the deprecated one removed
// from root's and every user's file, hand-added keys kept; a second run
// changes nothing; disable_root decides PermitRootLogin.
func TestSSHKeysRotate(t *testing.T) {
	a, rec := testAgent(t)
	put(t, a, "/lib/systemd/system/ssh.service", nil, 0o644)
	oldKey, newKey, hand := newSSHKey(t, "old@ops"), newSSHKey(t, "new@ops"), newSSHKey(t, "hand@ops")
	// cloud-init wrote the first env's key at the first boot; an operator
	// added one by hand; the default user has the old key too (with
	// options and another comment).
	put(t, a, "/root/.ssh/authorized_keys", []byte(oldKey+"\n"+hand+"\n"), 0o600)
	optOld := `no-pty,from="10.0.0.0/8" ` + strings.TrimSuffix(oldKey, " old@ops") + " other-comment"
	put(t, a, "/home/debian/.ssh/authorized_keys", []byte(optOld+"\n"), 0o600)

	if err := a.stepSSH(context.Background(), sshEnv(t, []string{newKey}, []string{oldKey}, "false")); err != nil {
		t.Fatal(err)
	}
	root := read(t, a, "/root/.ssh/authorized_keys")
	if strings.Contains(root, "old@ops") || !strings.Contains(root, newKey) || !strings.Contains(root, hand) {
		t.Errorf("root's authorized_keys:\n%s", root)
	}
	if m := mode(t, a, "/root/.ssh/authorized_keys"); m.Perm() != 0o600 {
		t.Errorf("mode %v", m)
	}
	if u := read(t, a, "/home/debian/.ssh/authorized_keys"); strings.TrimSpace(u) != "" {
		t.Errorf("the deprecated key (with options) stayed in the user's file:\n%s", u)
	}
	if c := read(t, a, sshdDropIn); !strings.Contains(c, "PermitRootLogin prohibit-password") {
		t.Errorf("sshd drop-in for disable_root false:\n%s", c)
	}
	if got := strings.Join(rec.Recorded(), "\n"); !strings.Contains(got, "try-reload-or-restart ssh.service") {
		t.Errorf("sshd not reloaded: %s", got)
	}

	// Idempotent: nothing changes, sshd is not reloaded again.
	n := len(rec.Recorded())
	if err := a.stepSSH(context.Background(), sshEnv(t, []string{newKey}, []string{oldKey}, "false")); err != nil {
		t.Fatal(err)
	}
	if read(t, a, "/root/.ssh/authorized_keys") != root || len(rec.Recorded()) != n {
		t.Error("a second run changed something")
	}

	// disable_root: true (cloud-init's default when unset) closes root.
	if err := a.stepSSH(context.Background(), sshEnv(t, []string{newKey}, nil, "")); err != nil {
		t.Fatal(err)
	}
	if c := read(t, a, sshdDropIn); !strings.Contains(c, "PermitRootLogin no") {
		t.Errorf("sshd drop-in for disable_root unset:\n%s", c)
	}
}

func TestSSHKeyInBothListsIsDeprecated(t *testing.T) {
	a, _ := testAgent(t)
	k := newSSHKey(t, "both@ops")
	if err := a.stepSSH(context.Background(), sshEnv(t, []string{k}, []string{k}, "false")); err != nil {
		t.Fatal(err)
	}
	if a.Host.Exists("/root/.ssh/authorized_keys") {
		t.Errorf("a key that is also deprecated was written:\n%s", read(t, a, "/root/.ssh/authorized_keys"))
	}
}

func TestKeyID(t *testing.T) {
	k := newSSHKey(t, "a@b")
	plain, _ := keyID(k)
	withOpts, err := keyID(`command="echo hi",no-pty ` + strings.TrimSuffix(k, " a@b") + " other")
	if err != nil || plain == "" || plain != withOpts {
		t.Errorf("options and comment must not change the key's identity: %v", err)
	}
	for _, bad := range []string{"", "# comment", "ssh-rsa AAAAnot-base64"} {
		if _, err := keyID(bad); err == nil {
			t.Errorf("keyID(%q) accepted", bad)
		}
	}
}
