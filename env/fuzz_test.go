package env

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func addSeeds(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yml")
	bad, _ := filepath.Glob("testdata/bad/*.yml")
	for _, p := range append(files, bad...) {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, tc := range flattenCases {
		f.Add([]byte("#cloud-config\nappliance:\n  domain: ecs.example.org\n" + tc.src))
	}
}

// FuzzParse: Parse never panics; what it accepts has a valid domain, only
// string keys, and flattens to well-formed shell assignments.
func FuzzParse(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse("fuzz.yml", data)
		if err != nil {
			e, ok := err.(*Error)
			if !ok || len(e.Problems) == 0 {
				t.Fatalf("error %T %v is not an *Error with problems", err, err)
			}
			for _, p := range e.Problems {
				if p.File != "fuzz.yml" || p.Line < 1 || p.Column < 1 || p.Msg == "" {
					t.Fatalf("problem without position or message: %#v", p)
				}
			}
			return
		}
		if !ValidHostname(d.Domain()) {
			t.Fatalf("accepted domain %q", d.Domain())
		}
		for _, p := range d.Warnings {
			if p.Line < 1 || p.Column < 1 {
				t.Fatalf("warning without position: %#v", p)
			}
		}
		out, _ := Flatten(d, []string{".", "appliance", "ecs"}, "", "")
		if identifierKeys(d.Root) {
			checkShell(t, out)
		}
	})
}

// FuzzFlatten flattens arbitrary YAML (not validated) with arbitrary keys:
// no panic, prefix and postfix wrap every variable and nothing else, and
// when keys are identifiers the output is a sequence of NAME=WORD lines
// whose words are canonically shell-quoted.
func FuzzFlatten(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yml")
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, ".")
		f.Add(data, "ecs,appliance,nosuch")
	}
	for _, tc := range flattenCases {
		f.Add([]byte(tc.src), tc.keys)
	}
	f.Fuzz(func(t *testing.T, data []byte, keyList string) {
		var n yaml.Node
		if yaml.Unmarshal(data, &n) != nil {
			return
		}
		root := deref(&n)
		if root == nil || root.Kind != yaml.MappingNode {
			return
		}
		d := &Doc{Raw: data, Root: root}
		keys := strings.Split(keyList, ",")
		plain, missing := Flatten(d, keys, "", "")
		wrapped, missing2 := Flatten(d, keys, "export ", ";")
		if fmt.Sprint(missing) != fmt.Sprint(missing2) {
			t.Fatalf("missing differs: %v / %v", missing, missing2)
		}
		for _, m := range missing {
			if m == "." {
				t.Fatal(`"." reported missing`)
			}
		}
		if !identifierKeys(root) {
			return
		}
		recs := checkShell(t, plain)
		var want strings.Builder
		for _, r := range recs {
			want.WriteString("export " + r + ";\n")
		}
		if wrapped != want.String() {
			t.Fatalf("prefix/postfix do not wrap each variable:\n%q\n%q", wrapped, want.String())
		}
	})
}

// identifierKeys reports whether every mapping key below n is a plain
// identifier, so that variable names cannot contain '=' or newlines.
func identifierKeys(n *yaml.Node) bool {
	ok := true
	seen := map[*yaml.Node]bool{}
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n == nil || seen[n] || !ok {
			return
		}
		seen[n] = true
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := deref(n.Content[i])
				if k == nil || !reIdent.MatchString(k.Value) || k.Value == "<<" && !isPlain(k) {
					ok = false
				}
			}
		}
		if n.Kind == yaml.AliasNode {
			walk(n.Alias)
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(n)
	return ok
}

var (
	reIdent    = regexp.MustCompile(`^(?:[A-Za-z0-9_]+|<<)$`)
	reName     = regexp.MustCompile(`^[A-Z0-9_]*=`)
	reBare     = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]*`)
	reDateTime = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?(?:[+-][0-9]{2}:[0-9]{2})?`)
)

// checkShell parses flatten output as POSIX shell would: NAME=WORD lines,
// WORD bare or single-quoted with '"'"' for quotes. Every quoted word must
// be what shlex.quote makes of its value. It returns the records.
func checkShell(t *testing.T, out string) []string {
	t.Helper()
	var recs []string
	rest := out
	for rest != "" {
		name := reName.FindString(rest)
		if name == "" {
			t.Fatalf("no NAME= at %q", head(rest))
		}
		var word string
		r := rest[len(name):]
		switch {
		case strings.HasPrefix(r, "'"):
			value, n := unquote(t, r)
			word = r[:n]
			if q := shellQuote(value); q != word {
				t.Fatalf("word %q is not shlex.quote(%q) = %q", word, value, q)
			}
		default:
			word = reDateTime.FindString(r) // the original prints datetimes bare
			if word == "" {
				word = reBare.FindString(r)
			}
		}
		r = r[len(word):]
		if !strings.HasPrefix(r, "\n") {
			t.Fatalf("variable %s%s not followed by a newline: %q", name, word, head(r))
		}
		recs = append(recs, name+word)
		rest = r[1:]
	}
	return recs
}

// unquote decodes a word made of '...' and "'" pieces.
func unquote(t *testing.T, s string) (string, int) {
	var v strings.Builder
	i := 0
	for i < len(s) {
		switch {
		case s[i] == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				t.Fatalf("unterminated quote in %q", head(s))
			}
			v.WriteString(s[i+1 : i+1+j])
			i += j + 2
		case strings.HasPrefix(s[i:], `"'"`):
			v.WriteByte('\'')
			i += 3
		default:
			return v.String(), i
		}
	}
	return v.String(), i
}

func head(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}
