package release

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/builder"
)

func run(t testing.TB, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// gpgKey makes a key with the real gpg and returns the armored secret key
// file and a GNUPGHOME holding only the public key (for gpg --verify).
func gpgKey(t *testing.T, algo, passphrase string) (secret string, verifyHome string) {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Fatal("gpg not installed (apt-get install gnupg)")
	}
	home := t.TempDir()
	env := []string{"GNUPGHOME=" + home}
	t.Cleanup(func() { exec.Command("gpgconf", "--homedir", home, "--kill", "gpg-agent").Run() })
	pass := []string{"--batch", "--pinentry-mode", "loopback", "--passphrase", passphrase}
	run(t, home, env, "gpg", append(pass, "--quick-gen-key", "ECS Release Test <release@example.org>", algo, "sign", "0")...)
	secret = filepath.Join(t.TempDir(), "release-key.asc")
	out := run(t, home, env, "gpg", append(pass, "--armor", "--export-secret-keys")...)
	os.WriteFile(secret, []byte(out), 0o600)
	pub := run(t, home, env, "gpg", "--armor", "--export")
	verifyHome = t.TempDir()
	t.Cleanup(func() { exec.Command("gpgconf", "--homedir", verifyHome, "--kill", "gpg-agent").Run() })
	cmd := exec.Command("gpg", "--batch", "--import")
	cmd.Env = append(os.Environ(), "GNUPGHOME="+verifyHome)
	cmd.Stdin = strings.NewReader(pub)
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gpg --import: %v %s", err, o)
	}
	os.WriteFile(filepath.Join(filepath.Dir(secret), "release-key.pub.asc"), []byte(pub), 0o644)
	return secret, verifyHome
}

func gpgVerify(dir, home string) error {
	cmd := exec.Command("gpg", "--batch", "--verify", SignatureFile, SumsFile)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return &Error{Path: dir, Msg: string(out)}
	}
	return nil
}

// disk makes a real disk image (release inspects disk artifacts).
func disk(t testing.TB, path, format, size string, opts ...string) {
	t.Helper()
	args := append([]string{"create", "-q", "-f", format}, opts...)
	if out, err := exec.Command("qemu-img", append(args, path, size)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
}

// releaseDir writes a few artifacts and a build manifest.
func releaseDir(t *testing.T, bigMiB int) string {
	t.Helper()
	dir := t.TempDir()
	disk(t, filepath.Join(dir, "ecs-1.0.qcow2"), "qcow2", "1M")
	os.WriteFile(filepath.Join(dir, "ecs-1.0.libvirt.box"), []byte("box bytes\n"), 0o644)
	os.WriteFile(filepath.Join(dir, ".hidden-temp"), []byte("x"), 0o644)
	if bigMiB > 0 {
		b := make([]byte, bigMiB<<20)
		rand.Read(b)
		b[510], b[511] = 0x55, 0xaa // a boot sector: a raw disk
		os.WriteFile(filepath.Join(dir, "ecs-1.0.raw"), b, 0o644)
	}
	bm := `{
  "name": "ecs", "version": "1.0", "variant": "dev",
  "base_image": {"name": "debian-12", "digest": "sha256:0123"},
  "template_digest": "sha256:abcd", "builder_version": "v0.1.0",
  "git_revision": "deadbeef", "build_time": "2026-11-24T07:00:00Z",
  "packages": [{"name": "openssh-server", "version": "1:9.2p1-2", "arch": "amd64"}, "curl=7.88.1-10"],
  "future_field": true
}`
	os.WriteFile(filepath.Join(dir, BuildManifestFile), []byte(bm), 0o644)
	return dir
}

func TestMakeSignVerifyWithGPG(t *testing.T) {
	for _, tc := range []struct{ algo, pass string }{{"ed25519", ""}, {"rsa3072", "s3cret pass"}} {
		t.Run(tc.algo, func(t *testing.T) {
			key, vhome := gpgKey(t, tc.algo, tc.pass)
			if tc.pass != "" {
				if _, err := LoadSigner(key, nil); err == nil || !strings.Contains(err.Error(), "passphrase") {
					t.Fatalf("LoadSigner without passphrase = %v", err)
				}
				if _, err := LoadSigner(key, []byte("wrong")); err == nil || !IsBadInput(err) {
					t.Fatalf("LoadSigner wrong passphrase = %v", err)
				}
			}
			signer, err := LoadSigner(key, []byte(tc.pass))
			if err != nil {
				t.Fatal(err)
			}
			dir := releaseDir(t, 0)
			now := time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)
			m, err := Make(context.Background(), dir, Options{Signer: signer, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			// Real coreutils and real gpg accept what we wrote.
			run(t, dir, nil, "sha256sum", "--strict", "-c", SumsFile)
			if err := gpgVerify(dir, vhome); err != nil {
				t.Fatalf("gpg --verify: %v", err)
			}
			if err := CheckSignature(filepath.Join(filepath.Dir(key), "release-key.pub.asc"), mustRead(t, filepath.Join(dir, SumsFile)), mustRead(t, filepath.Join(dir, SignatureFile))); err != nil {
				t.Fatal(err)
			}
			sums := string(mustRead(t, filepath.Join(dir, SumsFile)))
			for _, want := range []string{"  ecs-1.0.qcow2\n", "  ecs-1.0.libvirt.box\n", "  manifest.json\n"} {
				if !strings.Contains(sums, want) {
					t.Errorf("SHA256SUMS lacks %q:\n%s", want, sums)
				}
			}
			if strings.Contains(sums, "hidden") || strings.Contains(sums, BuildManifestFile) {
				t.Errorf("SHA256SUMS lists non-artifacts:\n%s", sums)
			}
			if m.SigningKey != signer.Fingerprint() || len(m.SigningKey) != 40 {
				t.Errorf("signing key %q", m.SigningKey)
			}

			// A changed SHA256SUMS no longer verifies.
			os.WriteFile(filepath.Join(dir, SumsFile), []byte(strings.Replace(sums, "  ecs", "  ECS", 1)), 0o644)
			if err := gpgVerify(dir, vhome); err == nil {
				t.Fatal("gpg accepted a tampered SHA256SUMS")
			}
		})
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestManifestContent(t *testing.T) {
	dir := releaseDir(t, 0)
	if _, err := Make(context.Background(), dir, Options{}); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(mustRead(t, filepath.Join(dir, ManifestFile)), &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"schema": ManifestSchema, "variant": "dev", "template_digest": "sha256:abcd",
		"builder_version": "v0.1.0", "git_revision": "deadbeef", "build_time": "2026-11-24T07:00:00Z", "name": "ecs", "version": "1.0"} {
		if m[k] != want {
			t.Errorf("manifest %s = %v, want %v", k, m[k], want)
		}
	}
	if bi := m["base_image"].(map[string]any); bi["name"] != "debian-12" || bi["digest"] != "sha256:0123" {
		t.Errorf("base_image %v", bi)
	}
	pk := m["packages"].([]any)
	if len(pk) != 2 || pk[1].(map[string]any)["name"] != "curl" || pk[1].(map[string]any)["version"] != "7.88.1-10" {
		t.Errorf("packages %v", pk)
	}
	arts := m["artifacts"].([]any)
	if len(arts) != 2 {
		t.Fatalf("artifacts %v", arts)
	}
	a := arts[0].(map[string]any)
	if a["name"] != "ecs-1.0.libvirt.box" || a["format"] != "vagrant-libvirt" || a["size"] != float64(10) ||
		a["sha256"] != sha(t, filepath.Join(dir, "ecs-1.0.libvirt.box")) {
		t.Errorf("artifact %v", a)
	}
	if _, err := os.Stat(filepath.Join(dir, SignatureFile)); err == nil {
		t.Error("unsigned release has a signature file")
	}
}

func sha(t *testing.T, p string) string {
	s, _, err := HashFile(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMakeWithoutBuildManifest(t *testing.T) {
	dir := t.TempDir()
	disk(t, filepath.Join(dir, "a.vmdk"), "vmdk", "1M")
	m, err := Make(context.Background(), dir, Options{})
	if err != nil || len(m.Artifacts) != 1 || m.Artifacts[0].Format != "vmdk" || m.Variant != "" {
		t.Fatalf("Make = %+v, %v", m, err)
	}
	if _, err := Make(context.Background(), t.TempDir(), Options{}); err == nil || !IsBadInput(err) {
		t.Fatalf("empty dir: %v", err)
	}
}

func TestBadBuildManifest(t *testing.T) {
	dir := t.TempDir()
	disk(t, filepath.Join(dir, "a.vmdk"), "vmdk", "1M")
	os.WriteFile(filepath.Join(dir, BuildManifestFile), []byte("{\n  \"variant\": \"dev\",\n  \"packages\": 3\n}\n"), 0o644)
	_, err := Make(context.Background(), dir, Options{})
	if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "packages") {
		t.Fatalf("Make with bad build manifest = %v", err)
	}
}

func TestReadSumsErrors(t *testing.T) {
	dir := t.TempDir()
	good := strings.Repeat("ab", 32)
	for content, want := range map[string]string{
		good + "  a\nxyz  b\n":                ":2: \"xyz\" is not a SHA-256",
		good + "  ../etc/passwd\n":            ":1: file name",
		good + "  a\n" + good + " *a\n":       ":2: a listed twice",
		"garbage\n":                           ":1: want",
		"\n":                                  "lists no file",
		good + "  a\n" + good + "  sub/dir\n": ":2: file name",
	} {
		p := filepath.Join(dir, SumsFile)
		os.WriteFile(p, []byte(content), 0o644)
		_, err := ReadSums(p)
		if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("ReadSums(%q) = %v, want %q", content, err, want)
		}
	}
}

func TestVerifyDetectsMismatch(t *testing.T) {
	dir := releaseDir(t, 0)
	if _, err := Make(context.Background(), dir, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "ecs-1.0.qcow2"), []byte("tampered\n"), 0o644)
	_, err := Verify(context.Background(), dir)
	if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), "ecs-1.0.qcow2: SHA-256 mismatch") {
		t.Fatalf("Verify after tampering = %v", err)
	}
	dst := t.TempDir()
	tgt, _ := NewFileTarget(dst)
	if _, err := Publish(context.Background(), dir, tgt, PublishOptions{}); err == nil {
		t.Fatal("published a release that fails verification")
	}
	if entries, _ := os.ReadDir(dst); len(entries) != 0 {
		t.Fatalf("failed publish left %v", entries)
	}
}

func TestPublishFile(t *testing.T) {
	dir := releaseDir(t, 1)
	if _, err := Make(context.Background(), dir, Options{}); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "releases", "1.0")
	tgt, err := OpenTarget(context.Background(), "file://"+dst, S3Options{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Publish(context.Background(), dir, tgt, PublishOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Uploaded) != 5 || rep.Uploaded[len(rep.Uploaded)-1] != ManifestFile || len(rep.Skipped) != 0 {
		t.Fatalf("first publish %+v (manifest must be last)", rep)
	}
	run(t, dst, nil, "sha256sum", "--strict", "-c", SumsFile)
	rep, err = Publish(context.Background(), dir, tgt, PublishOptions{})
	if err != nil || len(rep.Uploaded) != 0 || len(rep.Skipped) != 5 {
		t.Fatalf("re-publish %+v %v, want everything skipped", rep, err)
	}
	// A new build into the same destination: the old manifest goes first.
	disk(t, filepath.Join(dir, "ecs-1.0.qcow2"), "qcow2", "2M") // rebuilt
	if _, err := Make(context.Background(), dir, Options{}); err != nil {
		t.Fatal(err)
	}
	rep, err = Publish(context.Background(), dir, tgt, PublishOptions{})
	if err != nil || strings.Join(rep.Uploaded, ",") != "ecs-1.0.qcow2,SHA256SUMS,manifest.json" {
		t.Fatalf("publish after rebuild %+v %v", rep, err)
	}
	run(t, dst, nil, "sha256sum", "--strict", "-c", SumsFile)

	for _, bad := range []string{"http://x/y", "file://relative", "s3:///nobucket", "ftp://a"} {
		if _, err := OpenTarget(context.Background(), bad, S3Options{}); err == nil || !IsBadInput(err) {
			t.Errorf("OpenTarget(%q) = %v", bad, err)
		}
	}
}

// TestBuilderManifest reads the builder's own NAME.build.json shape.
func TestBuilderManifest(t *testing.T) {
	dir := t.TempDir()
	disk(t, filepath.Join(dir, "ecs-dev.qcow2"), "qcow2", "1M")
	bm := builder.Manifest{
		Template: "ecs-appliance", TemplateDigest: "sha256:feed", Variant: "dev",
		Base:     builder.ManifestBase{Name: "debian-12", Digest: "sha256:beef", Path: "/cache/x.qcow2"},
		Packages: []string{"openssh-server\t1:9.2p1-2+deb12u3", "jq\t1.6-2.1"},
		Builder:  "ecs-image builder v1", Created: time.Date(2026, 11, 24, 7, 0, 0, 0, time.UTC),
	}
	data, _ := json.Marshal(bm)
	os.WriteFile(filepath.Join(dir, "ecs-dev.build.json"), data, 0o644)
	m, err := Make(context.Background(), dir, Options{GitRevision: "abc123"})
	if err != nil {
		t.Fatal(err)
	}
	want := BuildInfo{Name: "ecs-appliance", Variant: "dev", BaseImage: BaseImage{Name: "debian-12", Digest: "sha256:beef"},
		TemplateDigest: "sha256:feed", BuilderVersion: "ecs-image builder v1", GitRevision: "abc123", BuildTime: "2026-11-24T07:00:00Z",
		Packages: []Package{{Name: "openssh-server", Version: "1:9.2p1-2+deb12u3"}, {Name: "jq", Version: "1.6-2.1"}}}
	if got, _ := json.Marshal(m.BuildInfo); string(got) != string(mustMarshal(want)) {
		t.Fatalf("build info\n got %s\nwant %s", got, mustMarshal(want))
	}
	if len(m.Artifacts) != 1 || m.Artifacts[0].Name != "ecs-dev.qcow2" {
		t.Fatalf("artifacts %+v (the build manifest is no artifact)", m.Artifacts)
	}
	os.WriteFile(filepath.Join(dir, "other.build.json"), data, 0o644)
	if _, err := Make(context.Background(), dir, Options{}); err == nil || !strings.Contains(err.Error(), "--build-manifest") {
		t.Fatalf("two build manifests: %v", err)
	}
}

func mustMarshal(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
