// Package env parses, validates and flattens env.yml, the configuration file
// of an ECS appliance. It is shared by ecs-image and the in-VM agent, so it
// must never import the builder.
//
// Values are interpreted as the appliance's own tooling reads them: PyYAML's
// safe_load, i.e. YAML 1.1 (yes/no/on/off are booleans, 010 is octal).
package env

import (
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxSize is the largest env.yml accepted, in bytes.
const MaxSize = 1 << 20

// maxAliasNodes bounds how many nodes aliases may add to a document when
// expanded; more is treated as an alias bomb ("billion laughs").
const maxAliasNodes = 100_000

// Problem is one finding about an env.yml, with its position.
type Problem struct {
	File   string
	Line   int
	Column int
	Path   string // key path, e.g. "appliance.ssl.letsencrypt.enabled"
	Msg    string
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", p.Line, p.Column)
	}
	if p.Path != "" {
		fmt.Fprintf(&b, ": %s", p.Path)
	}
	fmt.Fprintf(&b, ": %s", p.Msg)
	return b.String()
}

// Error is returned when an env.yml is invalid; it lists every problem found.
type Error struct{ Problems []Problem }

func (e *Error) Error() string {
	s := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		s[i] = p.String()
	}
	return strings.Join(s, "\n")
}

// Doc is a parsed and validated env.yml.
type Doc struct {
	File     string
	Raw      []byte
	Root     *yaml.Node // the document's top-level mapping node
	Warnings []Problem  // e.g. unknown keys
}

// Load reads and parses the env.yml at path. Files larger than MaxSize are
// refused without reading them whole.
func Load(path string) (*Doc, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("%s: is a directory", path)
	}
	if fi.Mode().IsRegular() && fi.Size() > MaxSize {
		return nil, &Error{[]Problem{{File: path, Line: 1, Column: 1,
			Msg: fmt.Sprintf("file is %d bytes, more than the limit of %d", fi.Size(), MaxSize)}}}
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse parses and validates an env.yml; file names it in messages.
// An invalid document yields an *Error listing every problem found;
// warnings (unknown keys and the like) are in the returned Doc.
func Parse(file string, data []byte) (*Doc, error) {
	c := &checker{file: file, data: data}
	root := c.run()
	if len(c.probs) > 0 {
		return nil, &Error{Problems: sortProblems(c.probs)}
	}
	return &Doc{File: file, Raw: data, Root: root, Warnings: sortProblems(c.warns)}, nil
}

// Lookup returns the node at a dotted key path (aliases and merge keys
// resolved), or nil.
func (d *Doc) Lookup(path string) *yaml.Node {
	if d == nil {
		return nil
	}
	var f flattener
	n := deref(d.Root)
	for _, k := range strings.Split(path, ".") {
		if n == nil || n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for _, e := range f.entries(n) {
			if e.key.kind == kStr && e.key.text == k {
				next = e.value
			}
		}
		n = deref(next)
	}
	return n
}

// String returns the string at path, with surrounding whitespace removed,
// or "" if it is absent or not a string.
func (d *Doc) String(path string) string {
	n := d.Lookup(path)
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	if s, err := resolve(n, false); err == nil && s.kind == kStr {
		return strings.TrimSpace(s.text)
	}
	return ""
}

// Bool returns the boolean at path as YAML 1.1 reads it (true, yes, on...);
// ok is false if it is absent or not a boolean.
func (d *Doc) Bool(path string) (value, ok bool) {
	n := d.Lookup(path)
	if n == nil || n.Kind != yaml.ScalarNode {
		return false, false
	}
	if s, err := resolve(n, false); err == nil && s.kind == kBool {
		return s.text == "true", true
	}
	return false, false
}

// Domain returns appliance.domain.
func (d *Doc) Domain() string { return d.String("appliance.domain") }

// Standby reports whether appliance.standby is true.
func (d *Doc) Standby() bool {
	v, _ := d.Bool("appliance.standby")
	return v
}

// Walk calls fn for every string key of the document's mappings, depth
// first in document order, with its dotted path and value (aliases and
// merge keys resolved); fn returns whether to descend into the value when
// it is a mapping.
func (d *Doc) Walk(fn func(path string, value *yaml.Node) bool) {
	if d == nil {
		return
	}
	var f flattener
	var walk func(n *yaml.Node, parent string)
	walk = func(n *yaml.Node, parent string) {
		n = deref(n)
		if n == nil || n.Kind != yaml.MappingNode {
			return
		}
		for _, e := range f.entries(n) {
			if e.key.kind != kStr {
				continue
			}
			p := joinPath(parent, e.key.text)
			v := deref(e.value)
			if fn(p, v) && v != nil && v.Kind == yaml.MappingNode {
				walk(v, p)
			}
		}
	}
	walk(d.Root, "")
}

// IsSet reports whether a value asks for something: not null, not an
// empty string, not false (YAML 1.1), not an empty list, and for a
// mapping, any of its values set.
func IsSet(n *yaml.Node) bool {
	n = deref(n)
	if n == nil {
		return false
	}
	switch n.Kind {
	case yaml.ScalarNode:
		s, err := resolve(n, false)
		if err != nil {
			return true
		}
		switch s.kind {
		case kNull:
			return false
		case kBool:
			return s.text == "true"
		case kStr:
			return strings.TrimSpace(s.text) != ""
		}
		return true
	case yaml.SequenceNode:
		return len(n.Content) > 0
	case yaml.MappingNode:
		var f flattener
		for _, e := range f.entries(n) {
			if IsSet(e.value) {
				return true
			}
		}
		return false
	}
	return true
}
