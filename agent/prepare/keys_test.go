package prepare

import (
	"bytes"
	"context"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/env"
	"go.yaml.in/yaml/v3"
)

// Every key the schema knows is classified, and every row of the table is
// a key the schema knows: adding a key to either alone fails here.
func TestKeyTableClassifiesEverySchemaKey(t *testing.T) {
	if !sort.SliceIsSorted(KeyTable, func(i, j int) bool { return KeyTable[i].Key < KeyTable[j].Key }) {
		t.Fatal("KeyTable is not sorted by Key (Rule searches it)")
	}
	known := map[string]bool{}
	for _, k := range env.SchemaKeys() {
		known[k.Path] = true
		r, ok := Rule(k.Path)
		if !ok {
			t.Errorf("schema key %s is not classified in KeyTable", k.Path)
			continue
		}
		if (r.Handler == "") == (r.Unsupported == "") {
			t.Errorf("%s: rule %q must have exactly one of Handler and Unsupported", k.Path, r.Key)
		}
	}
	for _, r := range KeyTable {
		below := false
		for k := range known {
			below = below || strings.HasPrefix(k, r.Key+".")
		}
		if !known[r.Key] && !(r.Subtree && below) {
			t.Errorf("KeyTable row %s is not a key of the env schema", r.Key)
		}
	}
	if len(known) < 40 {
		t.Errorf("only %d schema keys; SchemaKeys is broken", len(known))
	}
}

// Every key written in the original default-env.yml (and in the manual's
// env.yml reference, whose keys the schema follows) is classified.
func TestKeyTableClassifiesDefaultEnv(t *testing.T) {
	doc, err := env.Parse("default-env.yml", defaultEnvData(t))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	doc.Walk(func(path string, v *yaml.Node) bool {
		r, ok := Rule(path)
		if !ok {
			if v != nil && v.Kind == yaml.MappingNode && knownPrefix(path) {
				return true
			}
			t.Errorf("default-env.yml key %s is not classified", path)
			return false
		}
		n++
		return !r.Subtree
	})
	if n < 15 {
		t.Errorf("only %d keys walked", n)
	}
	// The manual's reference (§3.2) also names these, commented out.
	for _, k := range []string{"appliance.sentry.dsn", "appliance.metric.exporter", "appliance.metric.pghero",
		"appliance.git.branch", "appliance.extra.files", "appliance.extra.packages", "appliance.extra.states",
		"appliance.update.automatic", "appliance.update.oncalendar", "appliance.storage.setup",
		"appliance.storage.proxy_cache", "appliance.storage.grow_root", "appliance.backup.mount.type",
		"appliance.backup.options", "appliance.ssl.key", "appliance.ssl.cert", "ecs.git.source", "ecs.database",
		"ssh_deprecated_keys", "appliance.standby"} {
		if _, ok := Rule(k); !ok {
			t.Errorf("manual key %s is not classified", k)
		}
	}
}

func TestUnhandledKeys(t *testing.T) {
	const text = `#cloud-config
packages: [curl]
appliance:
  domain: ecs.example.org
  metric:
    exporter: true
    gui: true
  sentry:
    dsn: ""
  update:
    automatic: false
  storage:
    grow_root: false
    proxy_cache: true
  extra:
    states: |
      x: y
  frobnicate: 3
ecs:
  git:
    branch: stable
  migrate:
    auto: true
`
	doc, err := env.Parse("env.yml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range UnhandledKeys(doc) {
		got = append(got, r.String())
	}
	want := []string{
		"appliance.metric.gui: " + KeyTable[slices.IndexFunc(KeyTable, func(r KeyRule) bool { return r.Key == "appliance.metric.gui" })].Unsupported,
		"appliance.storage.proxy_cache: not supported by this image (no polipo proxy cache)",
		"appliance.extra.states: not supported by this image (no saltstack; use appliance.extra.files and .packages)",
		"appliance.frobnicate: unknown key, ignored",
		"ecs.git: not supported by this image (the ecs images are baked into the image, not built from git)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// prepare-env reports ignored keys in the journal and on the status page,
// and clears the report when the env no longer sets them.
func TestPrepareEnvReportsUnsupportedKeys(t *testing.T) {
	a, _ := testAgent(t)
	activate(t, a, "#cloud-config\nappliance:\n  domain: ecs.example.org\n  metric:\n    gui: true\n")
	log := a.Log.(*bytes.Buffer).String()
	if !strings.Contains(log, "prepare-env: appliance.metric.gui: not supported by this image") {
		t.Errorf("journal:\n%s", log)
	}
	st, _ := status.Read(a.Host)
	if !strings.HasPrefix(st.Warnings[KeysWarning], "appliance.metric.gui: not supported by this image") {
		t.Errorf("warnings %v", st.Warnings)
	}
	if page := read(t, a, status.StatusPage); !strings.Contains(page, "appliance.metric.gui: not supported by this image") {
		t.Errorf("page:\n%s", page)
	}
	activate(t, a, "#cloud-config\nappliance:\n  domain: ecs.example.org\n")
	if st, _ := status.Read(a.Host); st.Warnings[KeysWarning] != "" {
		t.Errorf("stale warning %q", st.Warnings[KeysWarning])
	}
}

// ecs.database names the database (default ecs); a bad name fails the
// postgresql step by key.
func TestECSDatabaseName(t *testing.T) {
	a, _ := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, "#cloud-config\nappliance:\n  domain: ecs.example.org\necs:\n  database: ecs_site\n")
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if u := read(t, a, DatabaseEnv); !strings.HasSuffix(strings.TrimSpace(u), "@host.docker.internal:5432/ecs_site") {
		t.Errorf("database url %q", u)
	}
	if hba := read(t, a, "/etc/postgresql/15/main/pg_hba.conf"); !strings.Contains(hba, "ecs_site") {
		t.Errorf("pg_hba:\n%s", hba)
	}
	b, _ := testAgent(t)
	fakeSystem(t, b)
	activate(t, b, "#cloud-config\nappliance:\n  domain: ecs.example.org\necs:\n  database: \"ecs; drop\"\n")
	err := b.PrepareAppliance(context.Background())
	if err == nil || !strings.Contains(err.Error(), `ecs.database: "ecs; drop" is not a database name`) {
		t.Errorf("err %v", err)
	}
}
