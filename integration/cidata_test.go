//go:build integration

package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// cidataEnv is the cidata package's test env.yml (appliance.domain
// seed.example.org).
const cidataEnv = "../cidata/testdata/env.yml"

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestCidataCLI drives `ecs-image cidata` and `cidata inspect` as a user
// would: every format, reproducibility, modes, read-back and extraction.
func TestCidataCLI(t *testing.T) {
	dir := t.TempDir()
	envData, err := os.ReadFile(cidataEnv)
	if err != nil {
		t.Fatal(err)
	}
	netFor := map[string]string{"nocloud": "net.yml", "vfat": "net.yml", "config-2": "net.json"}
	os.WriteFile(filepath.Join(dir, "net.yml"), []byte("version: 2\nethernets:\n  eth0: {dhcp4: true}\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "net.json"), []byte(`{"links": [], "networks": [], "services": []}`), 0o600)
	for _, format := range []string{"nocloud", "config-2", "vfat"} {
		t.Run(format, func(t *testing.T) {
			out := filepath.Join(dir, format+".img")
			stdout := ecsImage(t, "cidata", "-e", cidataEnv, "-o", out, "--format", format,
				"--network-config", filepath.Join(dir, netFor[format]))
			if strings.TrimSpace(stdout) != out {
				t.Errorf("stdout %q, want the output path", stdout)
			}
			st, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", st.Mode().Perm())
			}
			first, _ := os.ReadFile(out)
			ecsImage(t, "cidata", "-e", cidataEnv, "-o", out, "--format", format,
				"--network-config", filepath.Join(dir, netFor[format]))
			if again, _ := os.ReadFile(out); !bytes.Equal(first, again) {
				t.Error("second run gave a different image")
			}

			var info struct {
				FS, Label, Format, InstanceID, Hostname string
				Files                                   []struct {
					Path string
					Size int64
				}
			}
			if err := json.Unmarshal([]byte(ecsImage(t, "cidata", "inspect", out, "--json")), &info); err != nil {
				t.Fatal(err)
			}
			wantLabel := map[bool]string{true: "config-2", false: "cidata"}[format == "config-2"]
			if info.Label != wantLabel || info.Format != format || info.Hostname != "seed.example.org" || info.InstanceID == "" {
				t.Errorf("inspect: %+v", info)
			}
			text := ecsImage(t, "cidata", "inspect", out)
			if !strings.Contains(text, "label:       "+wantLabel) {
				t.Errorf("inspect text:\n%s", text)
			}
			ex := filepath.Join(dir, format+"-x")
			ecsImage(t, "cidata", "inspect", out, "--extract", ex)
			ud := filepath.Join(ex, "user-data")
			if format == "config-2" {
				ud = filepath.Join(ex, "openstack", "latest", "user_data")
			}
			if got, err := os.ReadFile(ud); err != nil || !bytes.Equal(got, envData) {
				t.Errorf("extracted user-data differs from the env.yml (%v)", err)
			}
		})
	}

	// SOURCE_DATE_EPOCH changes the dates, and only them.
	out := filepath.Join(dir, "epoch.iso")
	ecsImage(t, "cidata", "-e", cidataEnv, "-o", out)
	plain, _ := os.ReadFile(out)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	ecsImage(t, "cidata", "-e", cidataEnv, "-o", out)
	dated, _ := os.ReadFile(out)
	if bytes.Equal(plain, dated) || len(plain) != len(dated) {
		t.Error("SOURCE_DATE_EPOCH had no effect (or changed the layout)")
	}
	if !bytes.Contains(dated, []byte("2023111422132000")) {
		t.Error("volume descriptor does not carry 2023-11-14 22:13:20")
	}
}

// TestCidataCLIErrors checks exit codes and that nothing is written on bad input.
func TestCidataCLIErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yml")
	os.WriteFile(bad, []byte("#cloud-config\nappliance:\n  domain: [x\n"), 0o600)
	noDomain := filepath.Join(dir, "nodomain.yml")
	os.WriteFile(noDomain, []byte("#cloud-config\nappliance:\n  ssl: {}\n"), 0o600)
	badMeta := filepath.Join(dir, "meta.yml")
	os.WriteFile(badMeta, []byte("- not\n- a mapping\n"), 0o600)
	out := filepath.Join(dir, "seed.iso")

	cases := []struct {
		name   string
		args   []string
		stderr string // regexp
	}{
		{"syntax", []string{"cidata", "-e", bad, "-o", out}, regexp.QuoteMeta(bad) + `:\d+:\d+`},
		{"no domain", []string{"cidata", "-e", noDomain, "-o", out}, regexp.QuoteMeta(noDomain) + `.*appliance.domain`},
		{"bad meta-data", []string{"cidata", "-e", cidataEnv, "-o", out, "--meta-data", badMeta}, regexp.QuoteMeta(badMeta) + `:1:1: want a mapping`},
		{"missing env", []string{"cidata", "-e", filepath.Join(dir, "none.yml"), "-o", out}, `no such file`},
		{"no flags", []string{"cidata"}, `-e ENV.yml and -o SEED are required`},
		{"bad format", []string{"cidata", "-e", cidataEnv, "-o", out, "--format", "udf"}, `unknown format "udf"`},
		{"missing dir", []string{"cidata", "-e", cidataEnv, "-o", filepath.Join(dir, "no", "seed.iso")}, `does not exist`},
		{"inspect garbage", []string{"cidata", "inspect", bad}, `not a seed image`},
		{"inspect args", []string{"cidata", "inspect"}, `accepts 1 arg`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, err := ecsImageRun(c.args...)
			if code := exitCode(err); code != 2 {
				t.Errorf("exit code %d, want 2\n%s", code, stderr)
			}
			if !regexp.MustCompile(c.stderr).MatchString(stderr) {
				t.Errorf("stderr does not match %q:\n%s", c.stderr, stderr)
			}
		})
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("files in the output directory: %v (want only the three inputs)", names)
	}

	for _, args := range [][]string{{"cidata", "--help"}, {"cidata", "inspect", "--help"}} {
		stdout := ecsImage(t, args...)
		if !strings.Contains(stdout, "Examples:") {
			t.Errorf("%v: no examples:\n%s", args, stdout)
		}
	}
}
