package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runEnvCLI runs ecs-image in-process, returning exit code, stdout, stderr
// (the commands' own output; run() itself reports errors on os.Stderr).
func runEnvCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	if c, _, err := rootCmd.Find([]string{"env", "flatten"}); err == nil {
		_ = c.Flags().Set("prefix", "")
		_ = c.Flags().Set("postfix", "")
	}
	var out, errb bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetErr(&errb)
	defer rootCmd.SetOut(nil)
	defer rootCmd.SetErr(nil)
	code := runCLI(args)
	return code, out.String(), errb.String()
}

const defaultEnv = "../../env/testdata/default-env.yml"

func TestEnvValidateCLI(t *testing.T) {
	code, out, errs := runEnvCLI(t, "env", "validate", defaultEnv)
	if code != exitOK || out != defaultEnv+": ok\n" || errs != "" {
		t.Fatalf("valid file: exit %d, out %q, err %q", code, out, errs)
	}

	bad := "../../env/testdata/bad/many-problems.yml"
	code, out, errs = runEnvCLI(t, "env", "validate", bad)
	if code != exitUsage || out != "" {
		t.Fatalf("invalid file: exit %d, out %q", code, out)
	}
	for _, want := range []string{
		bad + ":3:11: appliance.domain: ",
		bad + ":4:12: appliance.standby: must be a boolean",
		bad + ":6:10: appliance.metric.gui: ",
		bad + ":8:19: ecs.migrate.auto: ",
	} {
		if !strings.Contains(errs, want+"") {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}

	dir := t.TempDir()
	warn := filepath.Join(dir, "warn.yml")
	if err := os.WriteFile(warn, []byte("#cloud-config\nappliance:\n  domain: ecs.example.org\n  domian: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs = runEnvCLI(t, "env", "validate", warn)
	if code != exitOK || out != warn+": ok\n" ||
		errs != warn+`:4:3: appliance.domian: warning: unknown key (did you mean "domain"?)`+"\n" {
		t.Errorf("warnings: exit %d, out %q, err %q", code, out, errs)
	}

	if code, _, _ = runEnvCLI(t, "env", "validate", filepath.Join(dir, "missing.yml")); code != exitFailure {
		t.Errorf("missing file: exit %d, want %d", code, exitFailure)
	}
	data, err := os.ReadFile(defaultEnv)
	if err != nil {
		t.Fatal(err)
	}
	rootCmd.SetIn(bytes.NewReader(data))
	code, out, _ = runEnvCLI(t, "env", "validate", "-")
	rootCmd.SetIn(nil)
	if code != exitOK || out != "-: ok\n" {
		t.Errorf("stdin: exit %d, out %q", code, out)
	}

	if code, _, _ = runEnvCLI(t, "env", "validate"); code != exitUsage {
		t.Errorf("no argument: exit %d, want %d", code, exitUsage)
	}
}

func TestEnvFlattenCLI(t *testing.T) {
	want, err := os.ReadFile("../../env/testdata/default-env.flat")
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs := runEnvCLI(t, "env", "flatten", defaultEnv, "--prefix", "export ")
	if code != exitOK || out != string(want) || errs != "" {
		t.Fatalf("flatten: exit %d, err %q, output equal: %v", code, errs, out == string(want))
	}

	code, out, errs = runEnvCLI(t, "env", "flatten", defaultEnv, "ecs,nosuch", "--postfix", ";")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	if !strings.HasPrefix(out, "ECS_MIGRATE_AUTO=true;\nECS_SETTINGS='DOMAIN = ") ||
		!strings.HasSuffix(out, "-----END PGP PRIVATE KEY BLOCK-----';\n") || strings.Contains(out, "APPLIANCE_") {
		t.Errorf("flatten ecs: %q", out)
	}
	if errs != defaultEnv+": key \"nosuch\" not found\n" {
		t.Errorf("stderr %q", errs)
	}

	code, out, _ = runEnvCLI(t, "env", "flatten", "../../env/testdata/bad/dup-top.yml")
	if code != exitUsage || out != "" {
		t.Errorf("invalid file: exit %d, output %q", code, out)
	}
}
