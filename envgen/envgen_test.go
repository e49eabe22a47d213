package envgen

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/ecs-image/ecs-image/env"
)

// One env with production key sizes, shared by the read-only tests.
var (
	prodOnce sync.Once
	prodEnv  []byte
	prodErr  error
)

func prod(t *testing.T) []byte {
	t.Helper()
	prodOnce.Do(func() {
		prodEnv, prodErr = Generate(context.Background(), Options{Domain: "ecs.example.org"})
	})
	if prodErr != nil {
		t.Fatal(prodErr)
	}
	return prodEnv
}

// quick generates with small keys, for tests about the template and merge.
func quick(t *testing.T, opts Options) ([]byte, error) {
	t.Helper()
	opts.pgpBits, opts.dkimBits = 1024, 1024
	return Generate(context.Background(), opts)
}

func parse(t *testing.T, data []byte) *env.Doc {
	t.Helper()
	d, err := env.Parse("env.yml", data)
	if err != nil {
		t.Fatalf("env.Parse: %v", err)
	}
	return d
}

func TestGenerateStructure(t *testing.T) {
	data := prod(t)
	if !bytes.HasPrefix(data, []byte("#cloud-config\n")) {
		t.Fatalf("first line is not #cloud-config: %q", data[:40])
	}
	d := parse(t, data)
	if d.Domain() != "ecs.example.org" {
		t.Errorf("domain = %q", d.Domain())
	}
	for _, p := range []string{
		"ssh_authorized_keys", "ssh_deprecated_keys", "disable_root",
		"appliance.domain", "appliance.allowed_hosts", "appliance.ssl.letsencrypt.enabled",
		"appliance.ssl.client_certs_mandatory", "appliance.dkim.key", "appliance.backup.url",
		"appliance.backup.encrypt", "ecs.userswitcher.enabled", "ecs.settings",
		"ecs.vault_encrypt", "ecs.vault_sign",
	} {
		if d.Lookup(p) == nil {
			t.Errorf("missing key %s", p)
		}
	}
	// The manual's documentation of the optional sections survives as comments.
	for _, c := range []string{
		"# XXX keep the \"#cloud-config\" line first and unchanged",
		"# # standby: default false, if set appliance will not activate",
		"#   dsn: 'https://url'",
		"#   pghero: false",
		"#   oncalendar: Sun *-*-* 06:30:00",
		"#   source: //1.2.3.4/datavolume",
		"# SENTRY_DSN = 'https://url' # set to sentry url if available",
		"ALLOWED_HOSTS = [DOMAIN, ]",
		"DOMAIN = 'ecs.example.org'",
	} {
		if !strings.Contains(string(data), strings.ReplaceAll(c, "//1.2.3.4", "\"//1.2.3.4")) && !strings.Contains(string(data), c) {
			t.Errorf("missing %q", c)
		}
	}
	if bytes.ContainsAny(data, "\t\r") {
		t.Error("tab or CR in output")
	}
	for i, b := range data {
		if b >= 0x80 {
			t.Fatalf("non-ASCII byte at %d", i)
		}
	}
}

var secretRe = regexp.MustCompile(`(?m)^      (SECRET_KEY|REGISTRATION_SECRET|PASSWORD_RESET_SECRET) = '([^']*)'$`)

func secrets(t *testing.T, data []byte) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, s := range secretRe.FindAllStringSubmatch(string(data), -1) {
		m[s[1]] = s[2]
	}
	if len(m) != 3 {
		t.Fatalf("found %d secrets in settings, want 3", len(m))
	}
	return m
}

func TestSecrets(t *testing.T) {
	a := secrets(t, prod(t))
	other, err := quick(t, Options{Domain: "ecs.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	b := secrets(t, other)
	urlSafe := regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	seen := map[string]bool{}
	for _, m := range []map[string]string{a, b} {
		for name, v := range m {
			if len(v)*6/8 < 39 {
				t.Errorf("%s has %d chars, fewer than 39 random bytes", name, len(v))
			}
			if !urlSafe.MatchString(v) {
				t.Errorf("%s is not URL-safe base64: %q", name, v)
			}
			if seen[v] {
				t.Errorf("%s repeats a secret", name)
			}
			seen[v] = true
		}
	}
	// The keys differ between runs too.
	d1, d2 := parse(t, prod(t)), parse(t, other)
	for _, p := range []string{"appliance.dkim.key", "appliance.backup.encrypt", "ecs.vault_encrypt", "ecs.vault_sign"} {
		if d1.Lookup(p).Value == d2.Lookup(p).Value {
			t.Errorf("%s identical in two runs", p)
		}
	}
}

var txtRe = regexp.MustCompile(`(?m)^#     "([^"]*)"`)

func TestDKIMRecordMatchesKey(t *testing.T) {
	data := prod(t)
	d := parse(t, data)
	blk, _ := pem.Decode([]byte(d.Lookup("appliance.dkim.key").Value))
	if blk == nil || blk.Type != "RSA PRIVATE KEY" {
		t.Fatal("appliance.dkim.key is not an RSA PEM key")
	}
	k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if k.N.BitLen() != 2048 {
		t.Errorf("DKIM key has %d bits", k.N.BitLen())
	}
	if !strings.Contains(string(data), "# default._domainkey.ecs.example.org.  IN  TXT  (") {
		t.Error("no DKIM TXT record for default._domainkey.ecs.example.org")
	}
	var joined string
	parts := txtRe.FindAllStringSubmatch(string(data), -1)
	if len(parts) < 2 {
		t.Fatalf("DKIM TXT has %d strings, want a 2048-bit key split in >= 2", len(parts))
	}
	for _, p := range parts {
		if len(p[1]) > 250 {
			t.Errorf("TXT string of %d chars", len(p[1]))
		}
		joined += p[1]
	}
	if want := DKIMRecord(&k.PublicKey); joined != want {
		t.Errorf("DKIM TXT record does not match the private key:\n got %s\nwant %s", joined, want)
	}
	for _, rr := range []string{
		"# ecs.example.org.  IN  A    1.2.3.4",
		"# ecs.example.org.  IN  MX   10 ecs.example.org.",
		`# ecs.example.org.  IN  TXT  "v=spf1 a mx ptr ~all"`,
		"# 4.3.2.1.in-addr.arpa.  IN  PTR  ecs.example.org.",
	} {
		if !strings.Contains(string(data), rr) {
			t.Errorf("missing DNS record %q", rr)
		}
	}
}

func TestSplitTXT(t *testing.T) {
	s := strings.Repeat("x", 501)
	p := SplitTXT(s)
	if len(p) != 3 || len(p[0]) != 250 || len(p[2]) != 1 || strings.Join(p, "") != s {
		t.Errorf("SplitTXT: %d parts", len(p))
	}
}

// TestGPGImport imports the three keys into a throwaway GnuPG home with the
// real gpg and checks their user ids, that they are secret RSA-3072 keys
// with an encryption subkey, and that gpg can encrypt to and decrypt with them.
func TestGPGImport(t *testing.T) {
	gpg, err := exec.LookPath("gpg")
	if err != nil {
		t.Fatal("gpg not installed (make deps)")
	}
	d := parse(t, prod(t))
	home := gnupgHome(t)
	for path, uid := range map[string]string{
		"appliance.backup.encrypt": "ecs_backup",
		"ecs.vault_encrypt":        "ecs_mediaserver",
		"ecs.vault_sign":           "ecs_authority",
	} {
		run := func(stdin string, args ...string) string {
			cmd := exec.Command(gpg, append([]string{"--homedir", home, "--batch", "--no-tty"}, args...)...)
			cmd.Stdin = strings.NewReader(stdin)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("gpg %v: %v\n%s", args, err, out)
			}
			return string(out)
		}
		run(d.Lookup(path).Value, "--import")
		list := run("", "--with-colons", "--list-secret-keys", "="+uid)
		if !strings.Contains(list, "sec:-:3072:1:") || !strings.Contains(list, "ssb:-:3072:1:") {
			t.Errorf("%s: not an RSA-3072 secret key with subkey:\n%s", path, list)
		}
		if !regexp.MustCompile(`(?m)^uid:.*::` + uid + `:`).MatchString(list) {
			t.Errorf("%s: uid %s not found:\n%s", path, uid, list)
		}
		enc := run("backup data", "--trust-model", "always", "--armor", "--encrypt", "--recipient", uid)
		if got := run(enc, "--decrypt"); !strings.Contains(got, "backup data") {
			t.Errorf("%s: decrypt round trip failed: %s", path, got)
		}
		signed := run("vault document", "--armor", "--local-user", uid, "--sign")
		if got := run(signed, "--trust-model", "always", "--verify"); !strings.Contains(got, `Good signature from "`+uid+`"`) {
			t.Errorf("%s: sign/verify failed: %s", path, got)
		}
	}
}

// TestDuplicityBackupRestore makes a real duplicity backup encrypted to the
// generated ecs_backup key and restores it, as the appliance's backup does.
func TestDuplicityBackupRestore(t *testing.T) {
	dup, err := exec.LookPath("duplicity")
	if err != nil {
		t.Fatal("duplicity not installed (make deps)")
	}
	d := parse(t, prod(t))
	tmp := t.TempDir()
	home := gnupgHome(t)
	src, dst, restored := filepath.Join(tmp, "src"), filepath.Join(tmp, "dst"), filepath.Join(tmp, "restored")
	os.MkdirAll(filepath.Join(src, "sub"), 0o700)
	os.WriteFile(filepath.Join(src, "a.txt"), []byte("appliance data\n"), 0o600)
	os.WriteFile(filepath.Join(src, "sub", "b.txt"), bytes.Repeat([]byte("0123456789"), 10000), 0o600)
	runIn := func(name string, stdin string, args ...string) string {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home, "PASSPHRASE=", "HOME="+tmp)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	runIn("gpg", d.Lookup("appliance.backup.encrypt").Value, "--batch", "--import")
	var fpr string
	for _, l := range strings.Split(runIn("gpg", "", "--batch", "--with-colons", "--list-keys", "ecs_backup"), "\n") {
		if f := strings.Split(l, ":"); f[0] == "fpr" && fpr == "" {
			fpr = f[9]
		}
	}
	opts := []string{"--gpg-options=--trust-model=always", "--archive-dir", filepath.Join(tmp, "cache"), "--name", "ecs"}
	runIn(dup, "", append([]string{"full", "--encrypt-key", fpr, src, "file://" + dst}, opts...)...)
	vols, _ := filepath.Glob(filepath.Join(dst, "*.difftar.gpg"))
	if len(vols) == 0 {
		t.Fatal("duplicity wrote no encrypted volume")
	}
	if info := runIn("gpg", "", "--batch", "--list-packets", vols[0]); !strings.Contains(info, "ecs_backup") {
		t.Errorf("volume not encrypted to ecs_backup:\n%s", info)
	}
	os.RemoveAll(filepath.Join(tmp, "cache"))
	runIn(dup, "", append([]string{"restore", "file://" + dst, restored}, opts...)...)
	for _, f := range []string{"a.txt", "sub/b.txt"} {
		a, _ := os.ReadFile(filepath.Join(src, f))
		b, err := os.ReadFile(filepath.Join(restored, f))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s not restored: %v", f, err)
		}
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "env.yml")
	if err := WriteFile(path, []byte("one\n"), false); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	if st, _ := os.Stat(filepath.Dir(path)); st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", st.Mode().Perm())
	}
	err = WriteFile(path, []byte("two\n"), false)
	if !errors.Is(err, ErrExists) {
		t.Fatalf("overwrite without force: err = %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "one\n" {
		t.Errorf("file changed without force: %q", b)
	}
	if err := WriteFile(path, []byte("two\n"), true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "two\n" {
		t.Errorf("force did not overwrite: %q", b)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode after force %v", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("temp files left: %v", ents)
	}
}

func TestBadDomain(t *testing.T) {
	for _, d := range []string{"", "Ecs.Example.org", "ecs..org", "ecs.org.", "-ecs.org", "ecs_1.org", "ecs.org/x", "é.org", "192.168.1.1", "x.123", "1.2.3", "123"} {
		_, err := Generate(context.Background(), Options{Domain: d})
		var de *DomainError
		if !errors.As(err, &de) {
			t.Errorf("domain %q: err = %v, want *DomainError", d, err)
		}
	}
}

func TestGenerateCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Generate(ctx, Options{Domain: "ecs.example.org"}); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

// gnupgHome returns a throwaway GnuPG home whose gpg-agent is stopped at the
// end of the test.
func gnupgHome(t *testing.T) string {
	t.Helper()
	home, err := os.MkdirTemp("", "gnupg-") // short path: gpg-agent's socket
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "gpg-agent").Run()
		os.RemoveAll(home)
	})
	return home
}
