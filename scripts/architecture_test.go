package scripts

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// archRow is one row of README.md's architecture table.
type archRow struct {
	layer   string
	paths   []string // the packages column's paths, without the trailing /
	nothing bool     // says it imports nothing from this module
	line    int
}

// readArchTable reads the table under "## Architecture" in README.md.
func readArchTable(t *testing.T, readme string) []archRow {
	t.Helper()
	f, err := os.Open(readme)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	code := regexp.MustCompile("`([^`]+)`")
	var rows []archRow
	in := false
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "## "):
			in = l == "## Architecture"
			continue
		case !in || !strings.HasPrefix(l, "| ") || strings.HasPrefix(l, "| layer ") || strings.HasPrefix(l, "| ---"):
			continue
		}
		cells := strings.Split(strings.Trim(l, "| "), " | ")
		if len(cells) != 3 {
			t.Fatalf("README.md:%d: want 3 cells, got %d", n, len(cells))
		}
		r := archRow{layer: cells[0], line: n, nothing: strings.Contains(cells[2], "nothing from this module")}
		for _, m := range code.FindAllStringSubmatch(cells[1], -1) {
			r.paths = append(r.paths, strings.TrimSuffix(m[1], "/"))
		}
		rows = append(rows, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		t.Fatal("README.md: no architecture table under ## Architecture")
	}
	return rows
}

// TestArchitectureTable checks README.md's architecture table against the
// module's packages and their (non-test) imports: every package is in a
// row, every path a row names exists, no package imports one of a lower
// row, the agent imports nothing of the build row, and a row that says it
// imports nothing from this module does not.
func TestArchitectureTable(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	rows := readArchTable(t, filepath.Join(root, "README.md"))
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	module := moduleOf(t, root)
	rel := func(p string) (string, bool) {
		if p == module {
			return ".", true
		}
		r, ok := strings.CutPrefix(p, module+"/")
		return r, ok
	}
	// rowOf is the row of the longest path naming pkg.
	rowOf := func(pkg string) int {
		best, bestLen := -1, -1
		for i, r := range rows {
			for _, p := range r.paths {
				if (pkg == p || strings.HasPrefix(pkg, p+"/")) && len(p) > bestLen {
					best, bestLen = i, len(p)
				}
			}
		}
		return best
	}
	for _, r := range rows {
		for _, p := range r.paths {
			if fi, err := os.Stat(filepath.Join(root, p)); err != nil || !fi.IsDir() {
				t.Errorf("README.md:%d: layer %q names %s, which is not a directory of this module", r.line, r.layer, p)
			}
		}
	}
	agent, build := -1, -1
	for i, r := range rows {
		switch r.layer {
		case "agent":
			agent = i
		case "build":
			build = i
		}
	}
	if agent < 0 || build < 0 {
		t.Errorf("README.md: the table has no agent or build layer")
	}
	seen := 0
	for _, l := range lines {
		f := strings.Fields(l)
		pkg, _ := rel(f[0])
		i := rowOf(pkg)
		if i < 0 {
			t.Errorf("package %s is in no row of README.md's architecture table", pkg)
			continue
		}
		seen++
		for _, imp := range f[1:] {
			ip, ok := rel(imp)
			if !ok {
				continue
			}
			j := rowOf(ip)
			switch {
			case rows[i].nothing:
				t.Errorf("%s (layer %q, README.md:%d: imports nothing from this module) imports %s", pkg, rows[i].layer, rows[i].line, ip)
			case j > i:
				t.Errorf("%s (layer %q) imports %s of layer %q, which comes after it in README.md's table", pkg, rows[i].layer, ip, rows[j].layer)
			case i == agent && j == build:
				t.Errorf("%s of the agent imports %s of the build layer", pkg, ip)
			}
		}
	}
	if seen < 20 {
		t.Errorf("only %d packages placed: is go list's output what this test reads?", seen)
	}
}

// moduleOf reads the module path from root's go.mod.
func moduleOf(t *testing.T, root string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if m, ok := strings.CutPrefix(strings.TrimSpace(l), "module "); ok {
			return strings.TrimSpace(m)
		}
	}
	t.Fatal("go.mod: no module line")
	return ""
}
