package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// runCLI is run() for repeated in-process use: cobra keeps the (cancelled)
// context of a previous run on subcommands, so give each a fresh one.
func runCLI(args []string) int {
	var reset func(c *cobra.Command)
	reset = func(c *cobra.Command) {
		c.SetContext(context.Background())
		for _, s := range c.Commands() {
			reset(s)
		}
	}
	for _, c := range rootCmd.Commands() {
		reset(c)
	}
	return run(args)
}

func TestEnvCreateAndPackageCLI(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, "site", "env.yml")
	if code := runCLI([]string{"env", "create", "ecs.example.org", "-o", envFile, "--extra", "", "--force=false"}); code != exitOK {
		t.Fatalf("env create: exit %d", code)
	}
	st, err := os.Stat(envFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
	orig, _ := os.ReadFile(envFile)

	// Exists: exit 2, file unchanged.
	if code := runCLI([]string{"env", "create", "ecs.example.org", "-o", envFile, "--extra", "", "--force=false"}); code != exitUsage {
		t.Errorf("overwrite without --force: exit %d, want 2", code)
	}
	if b, _ := os.ReadFile(envFile); string(b) != string(orig) {
		t.Error("file changed without --force")
	}
	// Bad extra: exit 2, file unchanged even with --force.
	extra := filepath.Join(dir, "extra.yml")
	os.WriteFile(extra, []byte("appliance:\n  colour: blue\n"), 0o600)
	if code := runCLI([]string{"env", "create", "ecs.example.org", "-o", envFile, "--extra", extra, "--force"}); code != exitUsage {
		t.Errorf("bad extra: exit %d, want 2", code)
	}
	if b, _ := os.ReadFile(envFile); string(b) != string(orig) {
		t.Error("file changed by a failed create")
	}
	// Bad domain: exit 2.
	if code := runCLI([]string{"env", "create", "Not A Domain", "-o", filepath.Join(dir, "x.yml"), "--extra", "", "--force=false"}); code != exitUsage {
		t.Errorf("bad domain: exit %d, want 2", code)
	}
	// --force overwrites with new secrets.
	if code := runCLI([]string{"env", "create", "ecs.example.org", "-o", envFile, "--extra", "", "--force"}); code != exitOK {
		t.Fatalf("--force: exit %d", code)
	}
	if b, _ := os.ReadFile(envFile); string(b) == string(orig) {
		t.Error("--force did not write a new env")
	}

	// Package next to the env file.
	if code := runCLI([]string{"env", "package", envFile, "-o", "", "--recipients", "", "--meta-data", ""}); code != exitOK {
		t.Fatalf("env package: exit %d", code)
	}
	for _, n := range []string{"env.yml.pdf", "env-cidata.iso"} {
		st, err := os.Stat(filepath.Join(dir, "site", n))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", n, st.Mode().Perm())
		}
	}
	// A missing -o directory is created, 0700 (it holds secrets).
	pkgDir := filepath.Join(dir, "new", "package")
	if code := runCLI([]string{"env", "package", envFile, "-o", pkgDir, "--recipients", "", "--meta-data", ""}); code != exitOK {
		t.Fatalf("env package -o missing dir: exit %d", code)
	}
	for _, p := range []string{filepath.Join(dir, "new"), pkgDir} {
		if st, err := os.Stat(p); err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v, %v; want a 0700 directory", p, st, err)
		}
	}
	if _, err := os.Stat(filepath.Join(pkgDir, "env.yml.pdf")); err != nil {
		t.Fatal(err)
	}
	// Invalid env or recipients: exit 2.
	bad := filepath.Join(dir, "bad.yml")
	os.WriteFile(bad, []byte("#cloud-config\nappliance: {}\n"), 0o600)
	if code := runCLI([]string{"env", "package", bad, "-o", "", "--recipients", "", "--meta-data", ""}); code != exitUsage {
		t.Errorf("invalid env: exit %d, want 2", code)
	}
	keys := filepath.Join(dir, "keys.asc")
	os.WriteFile(keys, []byte("no keys here\n"), 0o600)
	if code := runCLI([]string{"env", "package", envFile, "-o", "", "--recipients", keys, "--meta-data", ""}); code != exitUsage {
		t.Errorf("bad recipients: exit %d, want 2", code)
	}
	if code := runCLI([]string{"env", "package", filepath.Join(dir, "missing.yml"), "-o", "", "--recipients", "", "--meta-data", ""}); code != exitUsage {
		t.Errorf("missing env: exit %d, want 2", code)
	}
	// A failure leaves no directory it created behind.
	if code := runCLI([]string{"env", "package", envFile, "-o", filepath.Join(dir, "never"), "--recipients", keys, "--meta-data", ""}); code != exitUsage {
		t.Errorf("bad recipients, new dir: exit %d, want 2", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "never")); !os.IsNotExist(err) {
		t.Errorf("failed package left its directory: %v", err)
	}
	if code := runCLI([]string{"env", "package", envFile, "-o", keys, "--recipients", "", "--meta-data", ""}); code != exitUsage {
		t.Errorf("-o names a file: exit %d, want 2", code)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
}
