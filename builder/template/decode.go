package template

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// decoder decodes YAML nodes into Go values strictly: unknown fields,
// duplicate keys and wrong kinds are problems with positions, and decoding
// goes on so that one run reports every problem. It records the node of
// every path it visits for later semantic checks.
type decoder struct {
	file     string
	problems []Problem
	nodes    map[string]*yaml.Node // path → value node
	keys     map[string]*yaml.Node // path → key node
}

// nodeDecoder is implemented by types that decode themselves.
type nodeDecoder interface {
	decodeNode(d *decoder, n *yaml.Node, path string)
}

var durationType = reflect.TypeOf(time.Duration(0))

func (d *decoder) add(n *yaml.Node, path, format string, args ...any) {
	p := Problem{File: d.file, Path: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		p.Line, p.Column = n.Line, n.Column
	}
	d.problems = append(d.problems, p)
}

// at reports a problem at path, positioned at the nearest recorded node.
func (d *decoder) at(path, format string, args ...any) {
	for _, p := range d.problems {
		if p.Path == path || strings.HasPrefix(path, p.Path+".") || strings.HasPrefix(path, p.Path+"[") {
			return // already reported (e.g. it did not decode)
		}
	}
	d.add(d.nodeFor(path), path, format, args...)
}

// nodeFor returns the node recorded for path or its nearest ancestor.
func (d *decoder) nodeFor(path string) *yaml.Node {
	for p := path; ; {
		if n, ok := d.nodes[p]; ok {
			return n
		}
		if p == "" {
			return nil
		}
		p = parentPath(p)
	}
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "a document"
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	d.nodes[path] = n
	if v.CanAddr() {
		if nd, ok := v.Addr().Interface().(nodeDecoder); ok {
			nd.decodeNode(d, n, path)
			return
		}
		if u, ok := v.Addr().Interface().(yaml.Unmarshaler); ok {
			if err := u.UnmarshalYAML(n); err != nil {
				d.add(n, path, "%s", err)
			}
			return
		}
	}
	if v.Type() == durationType {
		if n.Kind != yaml.ScalarNode {
			d.add(n, path, "want a duration like 10m or 90s, got %s", kindName(n))
			return
		}
		dur, err := time.ParseDuration(n.Value)
		if err != nil || dur <= 0 {
			d.add(n, path, "want a positive duration like 10m or 90s, got %q", n.Value)
			return
		}
		v.SetInt(int64(dur))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return
		}
		e := reflect.New(v.Type().Elem())
		d.decode(n, e.Elem(), path)
		v.Set(e)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.add(n, path, "want a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.add(n, path, "want a mapping, got %s", kindName(n))
			return
		}
		m := reflect.MakeMap(v.Type())
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			if m.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
				d.add(k, p, "duplicate key %q", k.Value)
				continue
			}
			d.keys[p] = k
			e := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, e, p)
			m.SetMapIndex(reflect.ValueOf(k.Value), e)
		}
		v.Set(m)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
			d.add(n, path, "want a string, got %s", kindName(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			d.add(n, path, "want true or false, got %s", kindName(n))
			return
		}
		b, _ := strconv.ParseBool(n.Value)
		v.SetBool(b)
	case reflect.Int:
		var i int
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&i) != nil {
			d.add(n, path, "want an integer, got %s", kindName(n))
			return
		}
		v.SetInt(int64(i))
	default:
		panic(fmt.Sprintf("builder: cannot decode %s", v.Type()))
	}
}

// fields returns a struct type's YAML field names and indexes.
func fields(t reflect.Type) (map[string]int, []string) {
	idx := map[string]int{}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		idx[tag] = i
		names = append(names, tag)
	}
	sort.Strings(names)
	return idx, names
}

// decodeStruct decodes a mapping into a struct, skipping keys in skip.
func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string, skip ...string) {
	if n.Kind != yaml.MappingNode {
		d.add(n, path, "want a mapping, got %s", kindName(n))
		return
	}
	idx, names := fields(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		p := join(path, k.Value)
		if seen[k.Value] {
			d.add(k, p, "duplicate key %q", k.Value)
			continue
		}
		seen[k.Value] = true
		d.keys[p] = k
		skipped := false
		for _, s := range skip {
			if s == k.Value {
				skipped = true
			}
		}
		if skipped {
			d.nodes[p] = val
			continue
		}
		fi, ok := idx[k.Value]
		if !ok {
			d.add(k, p, "unknown field %q (known: %s)", k.Value, strings.Join(append(names, skip...), ", "))
			continue
		}
		d.decode(val, v.Field(fi), p)
	}
}
