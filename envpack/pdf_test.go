package envpack

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (make deps)", tool)
		}
	}
}

// zbarDecode renders pdf with pdftoppm and decodes its QR codes with the
// real zbarimg, returning zbarimg's output.
func zbarDecode(t *testing.T, pdf []byte) string {
	t.Helper()
	needTools(t, "pdftoppm", "zbarimg")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "env.yml.pdf"), pdf, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("pdftoppm", "-r", "150", "-png", "env.yml.pdf", "page")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pdftoppm: %v\n%s", err, out)
	}
	pages, _ := filepath.Glob(filepath.Join(dir, "page-*.png"))
	if len(pages) == 0 {
		t.Fatal("pdftoppm made no pages")
	}
	var stdout, stderr bytes.Buffer
	cmd = exec.Command("zbarimg", append([]string{"--raw", "-q", "-Sdisable", "-Sqrcode.enable"}, pages...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// zbarimg exits 4 when some page has no code (the text pages): fine.
	if err := cmd.Run(); err != nil && cmd.ProcessState.ExitCode() != 4 {
		t.Fatalf("zbarimg: %v\n%s", err, stderr.String())
	}
	return stdout.String()
}

func pdfOf(t *testing.T, env []byte) []byte {
	t.Helper()
	sum := sha256.Sum256(env)
	pdf, err := renderPDF(pdfInput{Domain: "ecs.example.org", Env: env, SHA256: hex.EncodeToString(sum[:]), Now: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	return pdf
}
