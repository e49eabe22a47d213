package env

import (
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
	"go.yaml.in/yaml/v3"
)

// rawDoc builds a Doc without validation, for flattening arbitrary YAML.
func rawDoc(t testing.TB, src string) *Doc {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatalf("yaml: %v\n%s", err, src)
	}
	return &Doc{Raw: []byte(src), Root: deref(&n)}
}

func loadDefault(t testing.TB) *Doc {
	t.Helper()
	d, err := Load("testdata/default-env.yml")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestFlattenDefaultEnv compares against default-env.flat, written by hand
// from FLATTEN.md (prefix "export ", keys ".").
func TestFlattenDefaultEnv(t *testing.T) {
	want, err := os.ReadFile("testdata/default-env.flat")
	if err != nil {
		t.Fatal(err)
	}
	got, missing := Flatten(loadDefault(t), []string{"."}, "export ", "")
	if got != string(want) {
		t.Errorf("flatten differs from testdata/default-env.flat:\n%s", firstDiff(got, string(want)))
	}
	if len(missing) != 0 {
		t.Errorf("missing = %v", missing)
	}
	// FLATTEN.md's own example lines
	for _, l := range []string{
		"export APPLIANCE_SSL_LETSENCRYPT_ENABLED=false\n",
		"export APPLIANCE_STORAGE_IGNORE_DATA=true\n",
		"export ECS_USERSWITCHER_PARAMETER=-it\n",
	} {
		if !strings.Contains(got, l) {
			t.Errorf("output lacks FLATTEN.md example %q", l)
		}
	}
}

// records splits flatten output made with prefix "export " into variables.
func records(s string) []string {
	parts := strings.Split(s, "\nexport ")
	parts[0] = strings.TrimPrefix(parts[0], "export ")
	parts[len(parts)-1] = strings.TrimSuffix(parts[len(parts)-1], "\n")
	return parts
}

// TestFlattenKeysNoPrefix: named keys come in the order given, each with its
// K_ prefix, no shell prefix; a missing key is reported and skipped.
func TestFlattenKeysNoPrefix(t *testing.T) {
	want, err := os.ReadFile("testdata/default-env.flat")
	if err != nil {
		t.Fatal(err)
	}
	var ecs, app []string
	for _, r := range records(string(want)) {
		switch {
		case strings.HasPrefix(r, "ECS_"):
			ecs = append(ecs, r+";\n")
		case strings.HasPrefix(r, "APPLIANCE_"):
			app = append(app, r+";\n")
		}
	}
	expect := strings.Join(ecs, "") + strings.Join(app, "")
	got, missing := Flatten(loadDefault(t), []string{"ecs", "nosuchkey", "appliance"}, "", ";")
	if got != expect {
		t.Errorf("flatten ecs,appliance:\n%s", firstDiff(got, expect))
	}
	if len(missing) != 1 || missing[0] != "nosuchkey" {
		t.Errorf("missing = %v, want [nosuchkey]", missing)
	}
}

func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + strconv.Itoa(i+1) + ":\n got: " + gl + "\nwant: " + wl
		}
	}
	return "(equal?)"
}

// flattenCases exercise PyYAML 1.1 typing and FLATTEN.md's corners. want is
// the output for keys "." without prefix, checked here by hand; the
// differential test also runs every case through PyYAML.
var flattenCases = []struct{ name, src, keys, want string }{
	{"bools", "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: 'yes'\n", ".",
		"A=true\nB=false\nC=true\nD=false\nE=true\nF=yes\n"},
	{"ints", "a: 010\nb: 0x1F\nc: 1_000\nd: 1:30\ne: -0\nf: +5\ng: 0b101\nh: 08\ni: 123456789012345678901234567890\n", ".",
		"A=8\nB=31\nC=1000\nD=90\nE=0\nF=5\nG=5\nH=08\nI=123456789012345678901234567890\n"},
	{"floats", "a: 1.0\nb: 1e5\nc: 1.0e+5\nd: .inf\ne: -.Inf\nf: .NaN\ng: 1.5\nh: 0.00001\ni: 1.0e+16\nj: 1:30.5\nk: -.5\nl: 3.\nm: 1.0e+15\nn: 0.0001\n", ".",
		"A=1.0\nB=1e5\nC=100000.0\nD=inf\nE=-inf\nF=nan\nG=1.5\nH=1e-05\nI=1e+16\nJ=90.5\nK=-.5\nL=3.0\nM=1000000000000000.0\nN=0.0001\n"},
	{"nulls", "a:\nb: ~\nc: null\nd: ''\ne: '  '\n", ".",
		"A=\nB=\nC=\nD=''\nE=''\n"},
	{"dates", "a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\nc: 2001-12-14 21:59:43.10\nd: 2002-12-14T00:00:00Z\ne: 2001-1-2 3:04:05 +5\n", ".",
		"A=2001-12-14\nB=2001-12-14 21:59:43.100000-05:00\nC=2001-12-14 21:59:43.100000\nD=2002-12-14 00:00:00+00:00\nE=2001-01-02 03:04:05+05:00\n"},
	{"quoting", "a: \"it's\"\nb: ' padded '\nc: a b\nd: x@y%z+=:,./-_\ne: $HOME\nf: \"tab\\there\"\ng: \"\\x1c sep \\x1f\"\n", ".",
		"A='it'\"'\"'s'\nB=padded\nC='a b'\nD=x@y%z+=:,./-_\nE='$HOME'\nF='tab\there'\nG=sep\n"},
	{"lists", "l: [a, [b, c], {k: v}]\ne: []\nm: {}\n", ".",
		"E_LEN=0\nL_0=a\nL_1_0=b\nL_1_1=c\nL_1_LEN=2\nL_2_K=v\nL_LEN=3\n"},
	{"sort by written name", "b: 1\nB: 2\na_z: 3\na:\n  y: 4\nlen: 5\nl: [x]\nl_LEN: 6\n", ".",
		"B=2\nA_Y=4\nA_Z=3\nB=1\nL_0=x\nL_LEN=6\nL_LEN=1\nLEN=5\n"},
	{"collision last wins", "a_b: 1\na:\n  b: 2\n", ".", "A_B=2\n"},
	{"merge keys", "base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n", "m",
		"M_X=1\nM_Y=3\n"},
	{"merge list precedence", "a: &a {x: 1}\nb: &b {x: 2, z: 0}\nm:\n  <<: [*a, *b]\n", "m",
		"M_X=1\nM_Z=0\n"},
	{"alias", "a: &x [1, 2]\nb: *x\n", "b", "B_0=1\nB_1=2\nB__LEN=2\n"},
	{"scalar key", "disable_root: false\n", "disable_root", "DISABLE_ROOT_=false\n"},
	{"multi keys", "a: {x: 1}\nb: {y: 2}\n", "b,a,zz", "B_Y=2\nA_X=1\n"},
	{"block scalars", "a: |\n  line1\n  it's\n\nb: >\n  folded\n  text\n", ".",
		"A='line1\nit'\"'\"'s'\nB='folded text'\n"},
}

func TestFlattenCases(t *testing.T) {
	for _, tc := range flattenCases {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := Flatten(rawDoc(t, tc.src), strings.Split(tc.keys, ","), "", "")
			if got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

// pyFlatten runs testdata/flatten_ref.py, a reference written from
// FLATTEN.md on PyYAML's safe_load (Debian's python3-yaml, the loader the
// original appliance uses), over docs in one process. It returns the output
// per document, "ERROR: ..." where PyYAML or the flattening fails.
func pyFlatten(t *testing.T, docs []string, keys string) []string {
	t.Helper()
	py := testenv.Tool(t, "python3", "make deps")
	if out, err := exec.Command(py, "-c", "import yaml").CombinedOutput(); err != nil {
		testenv.Missing(t, "%s has no PyYAML (Debian python3-yaml, make deps): %v: %s", py, err, out)
	}
	dir := t.TempDir()
	for i, d := range docs {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%05d.yml", i)), []byte(d), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(py, "testdata/flatten_ref.py", "--batch", dir, keys, "export ", "").CombinedOutput(); err != nil {
		t.Fatalf("flatten_ref.py: %v\n%s", err, out)
	}
	res := make([]string, len(docs))
	for i := range docs {
		out, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%05d.yml.out", i)))
		if err != nil {
			t.Fatal(err)
		}
		res[i] = string(out)
	}
	return res
}

// TestFlattenMatchesPyYAML compares Flatten with the PyYAML reference on
// default-env.yml and the hand-checked cases.
func TestFlattenMatchesPyYAML(t *testing.T) {
	type input struct{ name, src, keys string }
	raw := string(loadDefault(t).Raw)
	inputs := []input{{"default-env", raw, "."}, {"default-env keys", raw, "ecs,appliance,ssh_authorized_keys,nosuch"}}
	for _, tc := range flattenCases {
		inputs = append(inputs, input{tc.name, tc.src, tc.keys})
	}
	byKeys := map[string][]input{}
	for _, in := range inputs {
		byKeys[in.keys] = append(byKeys[in.keys], in)
	}
	for keys, ins := range byKeys {
		var docs []string
		for _, in := range ins {
			docs = append(docs, in.src)
		}
		want := pyFlatten(t, docs, keys)
		for i, in := range ins {
			got, _ := Flatten(rawDoc(t, in.src), strings.Split(keys, ","), "export ", "")
			if got != want[i] {
				t.Errorf("%s: differs from PyYAML reference:\n%s", in.name, firstDiff(got, want[i]))
			}
		}
	}
}

// scalarAtoms are plain and quoted scalars around YAML 1.1's typing rules.
var scalarAtoms = strings.Fields(`yes No ON off y n true False ~ null Null NULL 0 -0 +0 010 08
	0o7 0x1F 0xg 0b101 0b 0x_ 1_000 1__0 _1 1:30 1:70 -1:30:15 190:20:30 1.0 1. -1.5 +.5 .5
	-.5 1e5 1.0e+5 1.0e5 1.0E-3 6.8523015e+5 685_230.15 1:30.5 -1:0.25 .inf -.Inf +.INF .nan
	.NaN NaN inf 1.5e+300 1.0e+400 1.0e-400 0.1 0.000012 123456789.123456789 0.0001 0.00001
	1234567890123456.5 12345678901234567.0 -0.0
	99999999999999999999 2001-12-14 2001-12-14t21:59:43.10-05:00 2002-12-14T00:00:00Z
	2001-13-01 2000-02-29 1900-02-29 'quoted' 'it''s' "dq\x1c" $x a\\b @%+=:,./- "\t_x_\n"
	<<x =x ~x 0. 00 0_0 -0x1A +0b11 1_2:3_0 "" '' = << "a b" 'c d '`)

var randomKeys = []string{"a", "A", "b", "a_b", "len", "l", "_", "'1'", "x_len", "LEN", "b_0", "'<<'"}

func randomValue(r *rand.Rand, depth int) string {
	switch k := r.Intn(6); {
	case depth > 3 || k < 2:
		return scalarAtoms[r.Intn(len(scalarAtoms))]
	case k < 4:
		var items []string
		for range r.Intn(4) {
			items = append(items, randomValue(r, depth+1))
		}
		return "[" + strings.Join(items, ", ") + "]"
	default:
		return "{" + strings.Join(randomPairs(r, depth+1), ", ") + "}"
	}
}

func randomPairs(r *rand.Rand, depth int) []string {
	var pairs []string
	used := map[string]bool{}
	for range r.Intn(4) {
		k := randomKeys[r.Intn(len(randomKeys))]
		if !used[k] {
			used[k] = true
			pairs = append(pairs, k+": "+randomValue(r, depth))
		}
	}
	if r.Intn(5) == 0 {
		pairs = append(pairs, "<<: [{a: 7, b: [m]}, {a: 8, len: 1}]")
	}
	return pairs
}

// TestFlattenRandomMatchesPyYAML: random documents mixing YAML 1.1 scalars,
// colliding names, lists and merge keys flatten exactly as with PyYAML; and
// whatever PyYAML cannot load or flatten, Parse refuses, while what it can,
// Parse accepts.
func TestFlattenRandomMatchesPyYAML(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	var docs []string
	for len(docs) < 1500 {
		doc := strings.Join(randomPairs(r, 0), "\n") + "\n"
		if doc == "\n" || yaml.Unmarshal([]byte(doc), new(yaml.Node)) != nil {
			continue
		}
		docs = append(docs, doc)
	}
	want := pyFlatten(t, docs, ".")
	matched := 0
	for i, doc := range docs {
		_, perr := Parse("x.yml", []byte("#cloud-config\nappliance: {domain: a.example}\n"+doc))
		if strings.HasPrefix(want[i], "ERROR") {
			if perr == nil {
				t.Errorf("PyYAML fails (%s) but Parse accepts:\n%s", want[i], doc)
			}
			continue
		}
		if perr != nil {
			t.Errorf("PyYAML loads it but Parse refuses: %v\n%s", perr, doc)
		}
		got, _ := Flatten(rawDoc(t, doc), nil, "export ", "")
		if got != want[i] {
			t.Errorf("differs from PyYAML:\n%s\n%s", doc, firstDiff(got, want[i]))
		} else {
			matched++
		}
	}
	t.Logf("%d of %d documents flattened identically, the rest refused by both", matched, len(docs))
	if matched < len(docs)/2 {
		t.Errorf("only %d of %d documents compared", matched, len(docs))
	}
}
