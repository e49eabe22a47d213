// Package env parses, validates and flattens env.yml, the configuration file
// of an ECS appliance. It is shared by ecs-image and the in-VM agent, so it
// must never import the builder.
package env

import (
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxSize is the largest env.yml accepted, in bytes.
const MaxSize = 1 << 20

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

// Load reads and parses the env.yml at path.
func Load(path string) (*Doc, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse parses and validates an env.yml; file names it in messages.
// An invalid document yields an *Error.
func Parse(file string, data []byte) (*Doc, error) {
	var n yaml.Node
	if err := yaml.Unmarshal(data, &n); err != nil {
		return nil, &Error{[]Problem{{File: file, Msg: err.Error()}}}
	}
	if len(n.Content) == 0 || n.Content[0].Kind != yaml.MappingNode {
		return nil, &Error{[]Problem{{File: file, Line: 1, Column: 1, Msg: "document is not a mapping"}}}
	}
	d := &Doc{File: file, Raw: data, Root: n.Content[0]}
	if d.Domain() == "" {
		return nil, &Error{[]Problem{{File: file, Line: 1, Column: 1, Path: "appliance.domain", Msg: "required"}}}
	}
	return d, nil
}

// Lookup returns the node at a dotted key path, or nil.
func (d *Doc) Lookup(path string) *yaml.Node {
	n := d.Root
	for _, k := range strings.Split(path, ".") {
		if n == nil || n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				next = n.Content[i+1]
			}
		}
		n = next
	}
	return n
}

// Domain returns appliance.domain.
func (d *Doc) Domain() string {
	if n := d.Lookup("appliance.domain"); n != nil && n.Kind == yaml.ScalarNode {
		return strings.TrimSpace(n.Value)
	}
	return ""
}

// Standby reports whether appliance.standby is true.
func (d *Doc) Standby() bool {
	n := d.Lookup("appliance.standby")
	return n != nil && n.Kind == yaml.ScalarNode && n.Tag == "!!bool" && n.Value == "true"
}
