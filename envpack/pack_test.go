package envpack

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/skip2/go-qrcode"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/env"
)

var testNow = time.Date(2026, 3, 4, 5, 6, 7, 0, time.Local)

// defaultEnv returns the compat default-env.yml (env/testdata holds a
// byte-identical copy of shared/compat/default-env.yml).
func defaultEnv(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("../env/testdata/default-env.yml")
	if err != nil {
		t.Fatalf("default-env.yml: %v", err)
	}
	return data
}

func writeEnv(t *testing.T, data []byte) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "env.yml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
		if st, _ := e.Info(); st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), st.Mode().Perm())
		}
	}
	sort.Strings(names)
	return names
}

// TestPackageDefaultEnv packages the compat default-env.yml unchanged and
// checks every output with independent tools: the ISO with isoinfo, the
// QR codes with pdftoppm + zbarimg, the text pages with pdftotext.
func TestPackageDefaultEnv(t *testing.T) {
	envData := defaultEnv(t)
	dir, path := writeEnv(t, envData)
	paths, err := Package(context.Background(), Options{EnvFile: path, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 2 {
		t.Fatalf("wrote %v, want the PDF and the ISO", paths)
	}
	if got := listDir(t, dir); strings.Join(got, " ") != "env-cidata.iso env.yml env.yml.pdf" {
		t.Fatalf("directory holds %v", got)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, envData) {
		t.Fatal("env.yml was modified")
	}

	needTools(t, "isoinfo", "pdftotext")
	iso := filepath.Join(dir, ISOName)
	out, err := exec.Command("isoinfo", "-R", "-x", "/user-data", "-i", iso).Output()
	if err != nil {
		t.Fatalf("isoinfo: %v", err)
	}
	if !bytes.Equal(out, envData) {
		t.Error("user-data in the ISO differs from env.yml")
	}
	out, _ = exec.Command("isoinfo", "-d", "-i", iso).Output()
	if !strings.Contains(string(out), "Volume id: cidata") {
		t.Errorf("ISO label:\n%s", out)
	}

	pdf, err := os.ReadFile(filepath.Join(dir, PDFName))
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeQRChunks(zbarDecode(t, pdf))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, envData) {
		t.Fatal("QR codes do not decode to the env.yml")
	}

	text, err := exec.Command("pdftotext", "-layout", filepath.Join(dir, PDFName), "-").Output()
	if err != nil {
		t.Fatalf("pdftotext: %v", err)
	}
	// pdftotext approximates runs of spaces: compare with spaces collapsed.
	flat := strings.Join(strings.Fields(string(text)), " ")
	for i, l := range splitLines(envData) {
		if l = strings.Join(strings.Fields(l), " "); l != "" && len(l) < 90 && !strings.Contains(flat, l) {
			t.Errorf("line %d missing from the PDF text: %q", i+1, l)
		}
	}
	for _, s := range []string{"How to restore env.yml", RestoreCommand[:40], "pdftoppm -r 150 -png env.yml.pdf page"} {
		if !strings.Contains(string(text), s) {
			t.Errorf("PDF lacks %q", s)
		}
	}
}

// TestPDFQRRestoreCommand runs the restore pipeline printed in the PDF,
// as a shell command, on an env larger than one QR code.
func TestPDFQRRestoreCommand(t *testing.T) {
	needTools(t, "pdftoppm", "zbarimg", "base32", "gunzip")
	// Incompressible random text: many QR codes.
	r := rand.New(rand.NewSource(1))
	var b strings.Builder
	b.WriteString("#cloud-config\nappliance:\n  domain: ecs.example.org\n  note: |\n")
	for b.Len() < 9000 {
		b.WriteString("    ")
		for i := 0; i < 64; i++ {
			b.WriteByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[r.Intn(64)])
		}
		b.WriteString("\n")
	}
	envData := []byte(b.String())
	if n := len(QRChunks(Gzip(envData))); n < 5 {
		t.Fatalf("only %d QR codes", n)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, PDFName), pdfOf(t, envData), 0o600); err != nil {
		t.Fatal(err)
	}
	// The printed command, run as printed (its exit status is gunzip's).
	cmd := exec.Command("bash", "-c", "pdftoppm -r 150 -png env.yml.pdf page && "+RestoreCommand)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restore pipeline: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "env.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, envData) {
		t.Fatalf("restored env.yml differs (%d vs %d bytes)", len(got), len(envData))
	}
}

type gpgHome struct {
	t    *testing.T
	home string
}

func (g gpgHome) run(stdin []byte, args ...string) []byte {
	g.t.Helper()
	cmd := exec.Command("gpg", append([]string{"--homedir", g.home, "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		g.t.Fatalf("gpg %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

func newGPGHome(t *testing.T, uid, algo string) gpgHome {
	t.Helper()
	needTools(t, "gpg")
	home, err := os.MkdirTemp("", "gnupg-") // short path: gpg-agent's socket
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "gpg-agent").Run()
		os.RemoveAll(home)
	})
	os.Chmod(home, 0o700)
	g := gpgHome{t, home}
	g.run(nil, "--quick-gen-key", uid, algo, "default", "never")
	if strings.HasPrefix(algo, "rsa") { // an explicit algorithm gives a primary key only
		fpr := strings.Split(string(g.run(nil, "--with-colons", "--list-keys")), "fpr:::::::::")[1][:40]
		g.run(nil, "--quick-add-key", fpr, algo, "encr", "never")
	}
	return g
}

// TestPackageEncrypted encrypts to two recipients whose keys real gpg made
// (ed25519/cv25519 and RSA), and decrypts with each using real gpg.
func TestPackageEncrypted(t *testing.T) {
	alice := newGPGHome(t, "Alice <alice@example.org>", "future-default")
	bob := newGPGHome(t, "Bob <bob@example.org>", "rsa2048")
	var keys []byte
	keys = append(keys, "# recipients of the env package\n"...)
	keys = append(keys, alice.run(nil, "--armor", "--export", "alice@example.org")...)
	keys = append(keys, bob.run(nil, "--armor", "--export", "bob@example.org")...)

	envData := defaultEnv(t)
	dir, path := writeEnv(t, envData)
	out := t.TempDir()
	now := time.Now() // the keys must be valid then
	paths, err := Package(context.Background(), Options{EnvFile: path, OutDir: out, Recipients: keys, RecipientsFile: "keys.asc", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	name := "localhost.env." + now.Format("2006-01-02_15.04") + ".tar.gz.gpg"
	if got := listDir(t, out); strings.Join(got, " ") != "env-cidata.iso env.yml.pdf "+name {
		t.Fatalf("output dir holds %v (paths %v)", got, paths)
	}
	if got := listDir(t, dir); len(got) != 1 {
		t.Errorf("env dir holds %v, want only env.yml", got)
	}
	enc, err := os.ReadFile(filepath.Join(out, name))
	if err != nil {
		t.Fatal(err)
	}
	pdf, _ := os.ReadFile(filepath.Join(out, PDFName))
	iso, _ := os.ReadFile(filepath.Join(out, ISOName))
	want := map[string][]byte{"env.yml": envData, PDFName: pdf, ISOName: iso}
	for _, g := range []gpgHome{alice, bob} {
		tgz := g.run(enc, "--decrypt")
		zr, err := gzip.NewReader(bytes.NewReader(tgz))
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(zr)
		var names []string
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, h.Name)
			b, _ := io.ReadAll(tr)
			if !bytes.Equal(b, want[h.Name]) {
				t.Errorf("%s in the archive differs", h.Name)
			}
			if h.Mode != 0o600 {
				t.Errorf("%s mode %o in tar", h.Name, h.Mode)
			}
		}
		if strings.Join(names, " ") != "env.yml env.yml.pdf env-cidata.iso" {
			t.Errorf("archive holds %v", names)
		}
	}
}

func TestPackageInvalidEnvWritesNothing(t *testing.T) {
	dir, path := writeEnv(t, []byte("#cloud-config\nappliance:\n  domain: ecs.example.org\n  ssl: [1, 2]\n"))
	_, err := Package(context.Background(), Options{EnvFile: path, Now: testNow})
	var ee *env.Error
	if !errors.As(err, &ee) || !IsInputError(err) {
		t.Fatalf("err = %v, want *env.Error", err)
	}
	if !strings.Contains(err.Error(), path+":4:") {
		t.Errorf("error does not name file:line: %v", err)
	}
	if got := listDir(t, dir); len(got) != 1 {
		t.Errorf("dir holds %v", got)
	}
}

func TestPackageBadRecipients(t *testing.T) {
	for name, keys := range map[string]string{
		"garbage":      "not a key\n",
		"unterminated": "\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF\n",
		"corrupt":      "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n=AAAA\n-----END PGP PUBLIC KEY BLOCK-----\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir, path := writeEnv(t, defaultEnv(t))
			_, err := Package(context.Background(), Options{EnvFile: path, Recipients: []byte(keys), RecipientsFile: "keys.asc", Now: testNow})
			var ie *InputError
			if !errors.As(err, &ie) || ie.File != "keys.asc" {
				t.Fatalf("err = %v, want an InputError naming keys.asc", err)
			}
			if got := listDir(t, dir); len(got) != 1 {
				t.Errorf("dir holds %v", got)
			}
		})
	}
}

func TestPackageCancelled(t *testing.T) {
	dir, path := writeEnv(t, defaultEnv(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Package(ctx, Options{EnvFile: path, Now: testNow}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if got := listDir(t, dir); len(got) != 1 {
		t.Errorf("dir holds %v", got)
	}
}

func TestDecodeQRChunks(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef\n"), 2000)
	r := rand.New(rand.NewSource(2))
	r.Read(data[:3000]) // less compressible
	chunks := QRChunks(Gzip(data))
	if len(chunks) < 3 {
		t.Fatalf("%d chunks", len(chunks))
	}
	for _, c := range chunks {
		for _, ch := range c {
			if !strings.ContainsRune("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:=", ch) {
				t.Fatalf("chunk char %q outside the QR alphanumeric set (and '=' padding)", ch)
			}
		}
	}
	for i, c := range chunks {
		q, err := qrcode.New(c, qrcode.Medium)
		if err != nil {
			t.Fatal(err)
		}
		// Alphanumeric mode keeps a full chunk within version 29 (byte mode
		// would need version 36).
		if q.VersionNumber > 29 {
			t.Errorf("chunk %d needs QR version %d, want <= 29", i+1, q.VersionNumber)
		}
	}
	shuffled := append([]string(nil), chunks...)
	r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	got, err := DecodeQRChunks(strings.Join(shuffled, "\n"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("shuffled decode: %v", err)
	}
	if _, err := DecodeQRChunks(strings.Join(chunks[1:], "\n")); err == nil || !strings.Contains(err.Error(), "part 1/") {
		t.Errorf("missing part: err = %v", err)
	}
	if _, err := DecodeQRChunks(strings.Join(append(chunks, chunks[1]), "\n")); err == nil {
		t.Error("duplicate part accepted")
	}
	if _, err := DecodeQRChunks("hello world"); err == nil {
		t.Error("garbage accepted")
	}
}

// TestPackageAllOrNothing: with one target a directory (or a fifo), no
// output is replaced, not even the ones before it (issue 13: the PDF was
// replaced before the failure), and nothing temporary is left.
func TestPackageAllOrNothing(t *testing.T) {
	for _, kind := range []string{"dir", "fifo"} {
		t.Run(kind, func(t *testing.T) {
			dir, path := writeEnv(t, defaultEnv(t))
			pdf := filepath.Join(dir, PDFName)
			if err := os.WriteFile(pdf, []byte("old pdf"), 0o600); err != nil {
				t.Fatal(err)
			}
			iso := filepath.Join(dir, ISOName)
			if kind == "dir" {
				os.Mkdir(iso, 0o700)
			} else if err := syscall.Mkfifo(iso, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Package(context.Background(), Options{EnvFile: path, OutDir: dir, Now: testNow})
			if !errors.Is(err, atomicfile.ErrNotRegular) || !strings.Contains(err.Error(), iso) {
				t.Fatalf("err = %v, want ErrNotRegular naming %s", err, iso)
			}
			if b, _ := os.ReadFile(pdf); string(b) != "old pdf" {
				t.Error("the PDF was replaced")
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 3 {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Errorf("dir holds %v", names)
			}
		})
	}
}

// TestWriteAllRollsBack: a rename failing half-way puts back the files
// already replaced.
func TestWriteAllRollsBack(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a"), []byte("old a"), 0o600)
	defer func() { rename = os.Rename }()
	rename = func(from, to string) error {
		if filepath.Base(to) == "c" {
			return errors.New("disk full")
		}
		return os.Rename(from, to)
	}
	_, err := writeAll(context.Background(), dir, []output{{"a", []byte("new a")}, {"b", []byte("new b")}, {"c", []byte("x")}})
	if err == nil {
		t.Fatal("writeAll succeeded")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a")); string(b) != "old a" {
		t.Errorf("a = %q, want it put back", b)
	}
	if _, err := os.Lstat(filepath.Join(dir, "b")); err == nil {
		t.Error("b left behind")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("leftovers: %v", ents)
	}
}
