package prepare

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/testenv"
	"go.yaml.in/yaml/v3"
)

// gpgTool returns gpg's path; without it the test skips (in CI it fails).
func gpgTool(t *testing.T) string {
	t.Helper()
	return testenv.Tool(t, "gpg", "make deps")
}

// The vault keys of the compat env are imported into /data/ecs-gpg by the
// real gpg: both secret keys present, home 0700 owned by the containers'
// user, nothing imported again for the same env, the old keys gone when
// the env's keys change.
func TestVaultKeysRealGPG(t *testing.T) {
	gpgTool(t)
	a, _ := testAgent(t)
	a.Host.Runner = host.ExecRunner{}
	put(t, a, "/app/env.yml", defaultEnvData(t), 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
	e, err := a.loadActive()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.stepVaultKeys(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	home := a.Host.Path(GPGHome)
	t.Cleanup(func() { _ = exec.Command("gpgconf", "--homedir", home, "--kill", "gpg-agent").Run() })
	list := func() string {
		t.Helper()
		out, err := exec.Command("gpg", "--homedir", home, "--batch", "--with-colons", "--list-secret-keys").CombinedOutput()
		if err != nil {
			t.Fatalf("gpg --list-secret-keys: %v\n%s", err, out)
		}
		return string(out)
	}
	secrets := list()
	if n := strings.Count(secrets, "\nsec:") + map[bool]int{true: 1}[strings.HasPrefix(secrets, "sec:")]; n != 2 {
		t.Fatalf("%d secret keys in %s, want 2:\n%s", n, GPGHome, secrets)
	}
	for _, uid := range []string{"ecs_mediaserver", "ecs_authority"} {
		if !strings.Contains(secrets, uid) {
			t.Errorf("no key for %s:\n%s", uid, secrets)
		}
	}
	st, err := os.Stat(home)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("%s mode %o", GPGHome, st.Mode().Perm())
	}
	if os.Geteuid() == 0 && st.Sys().(*syscall.Stat_t).Uid != ContainerUID {
		t.Errorf("%s owned by %d", GPGHome, st.Sys().(*syscall.Stat_t).Uid)
	}
	if m := mode(t, a, VaultStamp); m != 0o600 {
		t.Errorf("stamp mode %o", m)
	}

	// Same keys: nothing runs.
	rec := &host.Recorder{}
	a.Host.Runner = rec
	if err := a.stepVaultKeys(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	if len(rec.Recorded()) != 0 {
		t.Errorf("unchanged keys ran %q", rec.Recorded())
	}

	// Only the sign key: the encryption key leaves the keyring.
	a.Host.Runner = host.ExecRunner{}
	e.Doc.Lookup("ecs").Content = dropKey(e.Doc.Lookup("ecs").Content, "vault_encrypt")
	if err := a.stepVaultKeys(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	if s := list(); strings.Contains(s, "ecs_mediaserver") || !strings.Contains(s, "ecs_authority") {
		t.Errorf("after the change:\n%s", s)
	}
}

func dropKey(content []*yaml.Node, key string) []*yaml.Node {
	var out []*yaml.Node
	for i := 0; i+1 < len(content); i += 2 {
		if content[i].Value != key {
			out = append(out, content[i], content[i+1])
		}
	}
	return out
}

// A vault key that is not a private key block fails the step by name, and
// the key text never appears on a command line.
func TestVaultKeysBadKeyAndNoArgv(t *testing.T) {
	a, rec := testAgent(t)
	activate(t, a, string(defaultEnvData(t)))
	e, err := a.loadActive()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.stepVaultKeys(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	for _, c := range rec.Recorded() {
		if strings.Contains(c, "PGP") {
			t.Errorf("key on a command line: %s", c)
		}
	}
	if got := strings.Join(rec.Recorded(), "\n"); strings.Count(got, "gpg --homedir") != 2 || strings.Count(got, "gpgconf --homedir") != 2 {
		t.Errorf("commands:\n%s", got)
	}
	e.Doc.Lookup("ecs.vault_sign").Value = "not a key"
	if err := a.stepVaultKeys(context.Background(), e); err == nil || !strings.Contains(err.Error(), "ecs.vault_sign: not an OpenPGP private key block") {
		t.Errorf("err %v", err)
	}
}
