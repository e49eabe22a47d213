package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// runBaseCLI runs the CLI in-process with fresh contexts and flag values,
// returning the exit code and stdout.
func runBaseCLI(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var reset func(c *cobra.Command)
	reset = func(c *cobra.Command) {
		c.SetContext(context.Background())
		for _, s := range c.Commands() {
			reset(s)
		}
	}
	reset(rootCmd)
	baseFetchFlags.checksum, baseFetchFlags.format, baseFetchFlags.insecure = "", "", false
	baseInspectFlags.format, baseInspectFlags.json = "", false
	var out bytes.Buffer
	rootCmd.SetOut(&out)
	defer rootCmd.SetOut(nil)
	return run(args), out.String()
}

func TestBaseCLI(t *testing.T) {
	t.Setenv("ECS_IMAGE_CACHE", t.TempDir())
	t.Setenv("ECS_IMAGE_CATALOG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())

	code, out := runBaseCLI(t, "base", "list")
	if code != exitOK || !strings.Contains(out, "ubuntu-jammy") || !strings.Contains(out, "debian-12") || !strings.HasPrefix(out, "NAME") {
		t.Fatalf("base list: exit %d\n%s", code, out)
	}

	img := filepath.Join(t.TempDir(), "base.qcow2")
	if b, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, b)
	}
	data, _ := os.ReadFile(img)
	sum := sha256.Sum256(data)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(data) }))
	defer srv.Close()

	// No checksum: refused as bad input.
	if code, _ := runBaseCLI(t, "base", "fetch", srv.URL+"/base.qcow2"); code != exitUsage {
		t.Errorf("fetch without checksum: exit %d, want 2", code)
	}
	code, out = runBaseCLI(t, "base", "fetch", srv.URL+"/base.qcow2", "--checksum", "sha256:"+hex.EncodeToString(sum[:]))
	path := strings.TrimSpace(out)
	if code != exitOK || !filepath.IsAbs(path) || strings.Count(out, "\n") != 1 {
		t.Fatalf("fetch: exit %d, stdout %q", code, out)
	}
	if code, out := runBaseCLI(t, "base", "inspect", "--format", "qcow2", path); code != exitOK || !strings.Contains(out, "format:       qcow2") {
		t.Errorf("inspect: exit %d\n%s", code, out)
	}
	if code, _ := runBaseCLI(t, "base", "inspect", "--format", "raw", path); code != exitUsage {
		t.Errorf("inspect format mismatch: exit %d, want 2", code)
	}
	if code, _ := runBaseCLI(t, "base", "fetch", "no-such-base"); code != exitUsage {
		t.Errorf("unknown base: exit %d, want 2", code)
	}
	if code, _ := runBaseCLI(t, "base", "build", "--size", "huge"); code != exitUsage {
		t.Errorf("bad size: exit %d, want 2", code)
	}
	if code, _ := runBaseCLI(t, "base", "build", "--mirror", "ftp://x"); code != exitUsage {
		t.Errorf("bad mirror: exit %d, want 2", code)
	}
	baseBuildFlags.mirror, baseBuildFlags.size = "", "4G"

	bad := filepath.Join(t.TempDir(), "catalog.yml")
	os.WriteFile(bad, []byte("bases:\n  - name: x\n    url: https://e.org/x\n    checksum: md5:00\n    format: qcow2\n    user: u\n"), 0o644)
	t.Setenv("ECS_IMAGE_CATALOG", bad)
	if code, _ := runBaseCLI(t, "base", "list"); code != exitUsage {
		t.Errorf("bad catalog: exit %d, want 2", code)
	}
}
