package envgen

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/env"
)

func TestExtraMerge(t *testing.T) {
	file := "testdata/extra/good.yml"
	extra, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	data, err := quick(t, Options{Domain: "ecs.example.org", Extra: extra, ExtraFile: file})
	if err != nil {
		t.Fatal(err)
	}
	d := parse(t, data)
	want := map[string]string{
		"appliance.standby":                    "true",
		"appliance.allowed_hosts":              "ecs.example.org testecs",
		"appliance.ssl.letsencrypt.enabled":    "false",
		"appliance.ssl.client_certs_mandatory": "true",
		"appliance.sentry.dsn":                 "https://key@sentry.example.org/2",
		"appliance.metric.exporter":            "true",
		"appliance.metric.gui":                 "false",
		"appliance.git.branch":                 "release",
		"appliance.update.automatic":           "false",
		"appliance.update.oncalendar":          "Sun *-*-* 06:30:00",
		"appliance.storage.ignore.data":        "true",
		"appliance.backup.url":                 "sftp://backup@backup.example.org/ecs",
		"appliance.backup.options":             "--volsize 200",
		"appliance.backup.mount.source":        "//10.0.0.5/backup",
		"ecs.git.branch":                       "stable",
		"ecs.migrate.auto":                     "true",
		"ecs.userswitcher.enabled":             "true",
		"ecs.userswitcher.parameter":           "-it",
		"appliance.domain":                     "ecs.example.org",
	}
	for p, v := range want {
		n := d.Lookup(p)
		if n == nil {
			t.Errorf("%s missing", p)
		} else if n.Value != v {
			t.Errorf("%s = %q, want %q", p, n.Value, v)
		}
	}
	keys := d.Lookup("ssh_authorized_keys")
	if keys == nil || len(keys.Content) != 1 || !strings.HasPrefix(keys.Content[0].Value, "ssh-ed25519 ") {
		t.Errorf("ssh_authorized_keys not merged")
	}
	files := d.Lookup("appliance.extra.files")
	if files == nil || len(files.Content) != 1 {
		t.Fatalf("extra.files not merged")
	}
	s := string(data)
	for _, c := range []string{
		"Welcome to the ECS appliance\n",       // literal block kept
		`permissions: "0644"`,                  // quoting kept
		"automatic: false # we update by hand", // the extra file's comments kept
		"# # standby: default false",           // template comments kept
		"# # metric:pghero default false",      // ... also above overridden sections
		"  # # put ssh keys here",              //
		"SENTRY_DSN = 'https://key@sentry.example.org/2'",
		"ALLOWED_HOSTS = [DOMAIN, 'testecs', ]",
		"    # cert: filename-cert.pem", // untouched slot keeps its example
	} {
		if !strings.Contains(s, c) {
			t.Errorf("output lacks %q", c)
		}
	}
	// Overridden sections are no longer commented out.
	if strings.Contains(s, "  # sentry:\n") || strings.Contains(s, "# standby: true") {
		t.Error("commented default left beside its override")
	}
}

// TestExtraEveryKey sets every key the schema allows and checks that the
// template renders all of them (nothing silently dropped).
func TestExtraEveryKey(t *testing.T) {
	var b strings.Builder
	var emit func(f *field, indent string)
	emit = func(f *field, indent string) {
		for _, name := range fieldNames(f) {
			sub := f.fields[name]
			switch sub.kind {
			case kMap:
				b.WriteString(indent + name + ":\n")
				emit(sub, indent+"  ")
			case kBool:
				b.WriteString(indent + name + ": true\n")
			case kString:
				v := map[string]string{"allowed_hosts": "a.example.org", "dsn": "https://x@s.example.org/1", "url": "file:///x", "directory": "https://acme.example.org/dir", "path": "/x", "permissions": `"0600"`, "target": "/mnt/x", "owner": "root:root"}[name]
				if v == "" {
					v = "s-" + name
				}
				b.WriteString(indent + name + ": " + v + "\n")
			case kList:
				if sub.item.kind == kMap { // extra.files
					b.WriteString(indent + name + ":\n" + indent + "  - path: /etc/x\n" + indent + "    contents: y\n")
				} else if strings.HasPrefix(name, "ssh_") {
					b.WriteString(indent + name + ":\n" + indent + "  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnQ0Pj2mIJ8bm4HhTIm9OdRPpx5tbC8RF8X0EM71xv8 a@b\n")
				} else {
					b.WriteString(indent + name + ": [qrcode]\n")
				}
			}
		}
	}
	emit(extraSchema(), "")
	data, err := quick(t, Options{Domain: "ecs.example.org", Extra: []byte(b.String()), ExtraFile: "every.yml"})
	if err != nil {
		t.Fatalf("%v\nextra:\n%s", err, b.String())
	}
	d := parse(t, data)
	if n := d.Lookup("ecs.userswitcher.parameter"); n == nil || n.Value != "s-parameter" {
		t.Error("ecs.userswitcher.parameter not rendered")
	}
}

func TestExtraBad(t *testing.T) {
	for _, tc := range []struct {
		file      string
		line      int
		path, msg string
	}{
		{"unknown.yml", 4, "appliance.colour", "unknown key"},
		{"type.yml", 3, "appliance.metric.exporter", "want true or false"},
		{"fixed.yml", 2, "ecs.settings", "cannot be overridden"},
		{"sshkey.yml", 2, "ssh_authorized_keys[0]", "not an SSH public key"},
		{"nonascii.yml", 3, "", "non-ASCII"},
		{"syntax.yml", 2, "", "yaml:"},
		{"alias.yml", 2, "appliance.git", "anchors and aliases"},
		{"duplicate.yml", 4, "appliance.update", "duplicate key"},
		{"files.yml", 4, "appliance.extra.files[0].path", "required"},
		{"files.yml", 5, "appliance.extra.files[0].permissions", ""},
		{"badvalues.yml", 3, "appliance.extra.packages[1]", "not a Debian package name"},
		{"badvalues.yml", 7, "appliance.backup.mount.target", "not an absolute path"},
		{"badvalues.yml", 8, "appliance.backup.url", "duplicity target URL"},
		{"domain.yml", 2, "appliance.domain", "DOMAIN argument"},
		{"twodocs.yml", 3, "", "more than one YAML document"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			file := filepath.Join("testdata/extra", tc.file)
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			_, err = quick(t, Options{Domain: "ecs.example.org", Extra: data, ExtraFile: file})
			var ee *env.Error
			if !errors.As(err, &ee) {
				t.Fatalf("err = %v, want *env.Error", err)
			}
			var found bool
			for _, p := range ee.Problems {
				if p.File == file && p.Line == tc.line && p.Path == tc.path && strings.Contains(p.Msg, tc.msg) {
					found = true
				}
			}
			if !found {
				t.Errorf("want %s:%d %s %q, got:\n%v", file, tc.line, tc.path, tc.msg, err)
			}
			if !strings.HasPrefix(err.Error(), file+":") {
				t.Errorf("message does not start with the file name: %v", err)
			}
		})
	}
}
