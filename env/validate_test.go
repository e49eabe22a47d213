package env

import (
	"bytes"
	"errors"
	"os/exec"

	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/ecs-image/ecs-image/testenv"
)

func TestDefaultEnvValid(t *testing.T) {
	d := loadDefault(t)
	if len(d.Warnings) != 0 {
		t.Errorf("default-env.yml has warnings: %v", d.Warnings)
	}
	if d.Domain() != "localhost" {
		t.Errorf("Domain() = %q", d.Domain())
	}
	if d.Standby() {
		t.Error("Standby() = true")
	}
	if v, ok := d.Bool("appliance.storage.ignore.data"); !v || !ok {
		t.Errorf("Bool(appliance.storage.ignore.data) = %v, %v", v, ok)
	}
	if v, ok := d.Bool("ecs.settings"); ok {
		t.Errorf("Bool(ecs.settings) = %v, %v; want not a bool", v, ok)
	}
	if got := d.String("ecs.userswitcher.parameter"); got != "-it" {
		t.Errorf("String(ecs.userswitcher.parameter) = %q", got)
	}
	if d.Lookup("appliance.nosuch") != nil || d.Lookup("appliance.domain.deeper") != nil {
		t.Error("Lookup of a missing path is not nil")
	}
}

// wantProblem is one line of a testdata/bad/*.want file:
// LINE:COLUMN<TAB>KEY.PATH<TAB>message substring.
type wantProblem struct {
	line, col int
	path, msg string
}

func readWant(t *testing.T, file string) []wantProblem {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []wantProblem
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, "\t", 3)
		if len(f) != 3 {
			t.Fatalf("%s: bad line %q", file, l)
		}
		lc := strings.SplitN(f[0], ":", 2)
		line, err1 := strconv.Atoi(lc[0])
		col, err2 := strconv.Atoi(lc[1])
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: bad position %q", file, f[0])
		}
		out = append(out, wantProblem{line, col, f[1], f[2]})
	}
	return out
}

// TestBadCorpus: every testdata/bad/X.yml must be rejected with exactly the
// problems listed in X.want (position, key path, message).
func TestBadCorpus(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 25 {
		t.Fatalf("only %d bad files", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yml")
		t.Run(name, func(t *testing.T) {
			want := readWant(t, strings.TrimSuffix(f, ".yml")+".want")
			_, err := Load(f)
			checkProblems(t, f, err, want)
		})
	}
}

func checkProblems(t *testing.T, file string, err error, want []wantProblem) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Load = %v, want *Error", err)
	}
	for _, p := range e.Problems {
		if p.File != file {
			t.Errorf("problem names file %q, want %q", p.File, file)
		}
	}
	if len(e.Problems) != len(want) {
		t.Errorf("got %d problems, want %d:\n%v", len(e.Problems), len(want), e)
	}
	for _, w := range want {
		found := false
		for _, p := range e.Problems {
			if p.Line == w.line && p.Column == w.col && p.Path == w.path && strings.Contains(p.Msg, w.msg) {
				found = true
			}
		}
		if !found {
			t.Errorf("no problem %d:%d %q containing %q; got:\n%v", w.line, w.col, w.path, w.msg, e)
		}
	}
}

func TestOversize(t *testing.T) {
	var b bytes.Buffer
	b.WriteString("#cloud-config\nappliance:\n  domain: ecs.example.org\n  extra:\n    states: |\n")
	for b.Len() <= MaxSize {
		b.WriteString("      # padding padding padding padding padding padding padding padding\n")
	}
	_, err := Parse("big.yml", b.Bytes())
	line, col := position(b.Bytes(), MaxSize)
	checkProblems(t, "big.yml", err, []wantProblem{{line, col, "", "more than the limit of 1048576"}})

	f := filepath.Join(t.TempDir(), "big.yml")
	if err := os.WriteFile(f, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(f)
	checkProblems(t, f, err, []wantProblem{{1, 1, "", "more than the limit"}})
}

// TestAliasBombFast: a billion-laughs document is refused quickly and
// without expanding it.
func TestAliasBombFast(t *testing.T) {
	data, err := os.ReadFile("testdata/bad/alias-bomb.yml")
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	_, err = Parse("bomb.yml", data)
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "alias bomb") {
		t.Fatalf("err = %v", err)
	}
	if elapsed > time.Second {
		t.Errorf("took %v", elapsed)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 20<<20 {
		t.Errorf("allocated %d bytes", alloc)
	}
	// Flatten of a Doc not from Parse stays bounded too.
	d := rawDoc(t, string(data))
	start = time.Now()
	Flatten(d, []string{"i"}, "", "")
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("Flatten of a bomb took %v", el)
	}
}

// TestAliasesAllowed: ordinary anchors, aliases and merge keys are fine.
func TestAliasesAllowed(t *testing.T) {
	src := `#cloud-config
appliance:
  domain: ecs.example.org
  git: &git
    branch: master
    source: https://github.com/ecs-org/ecs-appliance
  metric: {exporter: true, server: yes, gui: off}
ecs:
  git:
    <<: *git
    branch: stable
`
	d, err := Parse("a.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Warnings) != 0 {
		t.Errorf("warnings: %v", d.Warnings)
	}
	if got := d.String("ecs.git.source"); got != "https://github.com/ecs-org/ecs-appliance" {
		t.Errorf("merged ecs.git.source = %q", got)
	}
	if got := d.String("ecs.git.branch"); got != "stable" {
		t.Errorf("ecs.git.branch = %q", got)
	}
	if v, ok := d.Bool("appliance.metric.server"); !v || !ok {
		t.Errorf("yes is not true: %v %v", v, ok)
	}
}

func TestWarnings(t *testing.T) {
	src := `#cloud-config
users: [default]
runcmd:
  - [echo, hi]
write_files:
  - path: /etc/motd
    content: hi
package_update: true
ssh_deprecated_keys:
  - not a key
appliance:
  domain: ecs.example.org
  domian: typo.example.org
  ssl:
    letsencrypt: {enabled: true, staging: true}
  dkim:
    selector: default
  mystery: 1
ecs:
  vault_sign:
colour: blue
`
	d, err := Parse("w.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`w.yml:10:5: ssh_deprecated_keys[0]: not an SSH public key`,
		`w.yml:13:3: appliance.domian: unknown key (did you mean "domain"?)`,
		`w.yml:15:34: appliance.ssl.letsencrypt.staging: unknown key`,
		`w.yml:17:5: appliance.dkim.selector: unknown key`,
		`w.yml:18:3: appliance.mystery: unknown key`,
		`w.yml:21:1: colour: unknown key`,
	}
	if len(d.Warnings) != len(want) {
		t.Errorf("got %d warnings, want %d: %v", len(d.Warnings), len(want), d.Warnings)
	}
	for i, w := range want {
		if i < len(d.Warnings) && !strings.HasPrefix(d.Warnings[i].String(), w) {
			t.Errorf("warning %d = %q, want prefix %q", i, d.Warnings[i], w)
		}
	}
}

// TestValidKeyMaterial: good inline PEM and PGP material is accepted.
func TestValidKeyMaterial(t *testing.T) {
	d := loadDefault(t)
	for _, p := range []string{"appliance.backup.encrypt", "ecs.vault_encrypt", "ecs.vault_sign"} {
		if msg := pgpProblem(d.String(p), usageEncrypt); msg != "" {
			t.Errorf("%s: %s", p, msg)
		}
	}
	// the mismatch file's key and certificate are each fine alone
	bad, err := os.ReadFile("testdata/bad/ssl-mismatch.yml")
	if err != nil {
		t.Fatal(err)
	}
	good := strings.Replace(string(bad), "    key: |", "    key: /etc/ssl/key.pem\n    unused: |", 1)
	doc, err := Parse("good.yml", []byte(good))
	if err != nil {
		t.Fatalf("inline certificate refused: %v", err)
	}
	if len(doc.Warnings) != 1 {
		t.Errorf("warnings = %v", doc.Warnings)
	}
}

func TestProblemString(t *testing.T) {
	p := Problem{File: "env.yml", Line: 3, Column: 5, Path: "appliance.domain", Msg: "bad"}
	if got := p.String(); got != "env.yml:3:5: appliance.domain: bad" {
		t.Errorf("String() = %q", got)
	}
	e := &Error{[]Problem{p, {File: "env.yml", Msg: "other"}}}
	if got := e.Error(); got != "env.yml:3:5: appliance.domain: bad\nenv.yml: other" {
		t.Errorf("Error() = %q", got)
	}
}

func TestLoadErrors(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	var e *Error
	if _, err := Load(t.TempDir()); err == nil || errors.As(err, &e) {
		t.Errorf("directory: %v", err)
	}
}

func BenchmarkParseDefaultEnv(b *testing.B) {
	data, err := os.ReadFile("testdata/default-env.yml")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("default-env.yml", data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFlattenDefaultEnv(b *testing.B) {
	d := loadDefault(b)
	for b.Loop() {
		Flatten(d, []string{"ecs", "appliance"}, "export ", "")
	}
}

// BenchmarkParseCreatedEnv parses what env create makes (RSA-3072 OpenPGP
// keys with subkeys, RSA-2048 DKIM key).
func BenchmarkParseCreatedEnv(b *testing.B) {
	data, err := os.ReadFile("testdata/created-env.yml")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Parse("created-env.yml", data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseCreatedEnvUncached: as above with the PGP verdict cache
// emptied each time, i.e. the cost of parsing a new env.yml.
func BenchmarkParseCreatedEnvUncached(b *testing.B) {
	data, err := os.ReadFile("testdata/created-env.yml")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		pgpCache.Lock()
		pgpCache.m = nil
		pgpCache.Unlock()
		if _, err := Parse("created-env.yml", data); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPGPKeys: gpg's ed25519/cv25519 secret keys pass for both uses;
// corrupt secret material with intact armor is caught by the checksum;
// the public part of a secret key is refused.
func TestPGPKeys(t *testing.T) {
	data, err := os.ReadFile("testdata/pgp-ed25519-secret.asc")
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []keyUsage{usageEncrypt, usageSign} {
		if msg := pgpProblem(string(data), u); msg != "" {
			t.Errorf("ed25519/cv25519 key, usage %d: %s", u, msg)
		}
	}
	def := loadDefault(t).String("ecs.vault_sign")
	if msg := pgpProblem(def, usageSign); msg != "" {
		t.Errorf("default-env vault_sign: %s", msg)
	}

	// flip one bit of the first secret key's material (before its checksum)
	block, err := armor.Decode(strings.NewReader(def))
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	opr := packet.NewOpaqueReader(block.Body)
	for first := true; ; first = false {
		op, err := opr.Next()
		if err != nil {
			break
		}
		if first {
			op.Contents[len(op.Contents)-10] ^= 1
		}
		if err := op.Serialize(&body); err != nil {
			t.Fatal(err)
		}
	}
	var armored bytes.Buffer
	w, err := armor.Encode(&armored, "PGP PRIVATE KEY BLOCK", nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(body.Bytes())
	w.Close()
	if msg := pgpProblem(armored.String(), usageSign); !strings.Contains(msg, "checksum mismatch") {
		t.Errorf("corrupt secret key: %q", msg)
	}
}

// sharedCompat finds shared/compat beside the repository: ../shared/compat
// from the checkout's root (CI clones next to shared/, as /work/main sits
// next to /work/shared) or, in a git worktree elsewhere, from the main
// checkout's root.
func sharedCompat(t *testing.T) string {
	t.Helper()
	roots := []string{".."} // this package is env/ in the repository root
	if out, err := exec.Command("git", "rev-parse", "--path-format=absolute", "--git-common-dir").Output(); err == nil {
		roots = append(roots, filepath.Dir(strings.TrimSpace(string(out))))
	}
	var tried []string
	for _, r := range roots {
		d := filepath.Join(r, "..", "shared", "compat")
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			return d
		}
		tried = append(tried, d)
	}
	testenv.Missing(t, "shared/compat not beside this checkout (tried %s)", strings.Join(tried, ", "))
	return ""
}

// TestDefaultEnvCopy: testdata/default-env.yml is the compat file from
// shared/compat (beside the repository), byte for byte.
func TestDefaultEnvCopy(t *testing.T) {
	want, err := os.ReadFile(filepath.Join(sharedCompat(t), "default-env.yml"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("testdata/default-env.yml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("testdata/default-env.yml differs from shared/compat/default-env.yml")
	}
}
