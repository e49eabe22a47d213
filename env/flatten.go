package env

import (
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Flatten turns parts of doc into shell variable assignments, byte for byte
// as the original appliance's flatten_yaml.py does (see docs/env.md and
// FLATTEN.md). keys are top-level keys, or "." for the whole document; nil
// means ".". Each variable becomes one line prefix+NAME=VALUE+postfix.
// Requested keys absent from the document are skipped and returned in
// missing, in request order.
func Flatten(doc *Doc, keys []string, prefix, postfix string) (out string, missing []string) {
	if len(keys) == 0 {
		keys = []string{"."}
	}
	var b strings.Builder
	// Parse refuses documents whose aliases add more than maxAliasNodes.
	f := flattener{limit: countNodes(doc.Root) + maxAliasNodes}
	for _, k := range keys {
		f.used, f.nameBytes = 0, 0
		var root *yaml.Node
		var namePrefix string
		if k == "." {
			root = doc.Root
		} else {
			root = f.topLevel(doc.Root, k)
			if root == nil {
				missing = append(missing, k)
				continue
			}
			namePrefix = strings.ToUpper(k) + "_"
		}
		if root == nil {
			continue
		}
		vars := f.flatten(root, "")
		sort.Slice(vars, func(i, j int) bool { return vars[i].name < vars[j].name })
		for _, v := range vars {
			b.WriteString(prefix)
			b.WriteString(namePrefix)
			b.WriteString(strings.ToUpper(v.name))
			b.WriteByte('=')
			b.WriteString(v.value)
			b.WriteString(postfix)
			b.WriteByte('\n')
		}
	}
	return b.String(), missing
}

type variable struct{ name, value string }

// flattener walks the node tree with PyYAML's semantics. A limit bounds the
// number of nodes visited, and the bytes of variable names made, so that a
// Doc not produced by Parse (which refuses alias bombs, deep nesting and
// long keys) cannot make it run away; limit 0 means no limit.
type flattener struct{ limit, used, nameBytes int }

// maxNameBytes bounds the total length of the names Flatten builds per key.
const maxNameBytes = 64 << 20

// spend counts one visited node named name and reports whether the limits
// allow it.
func (f *flattener) spend(name string) bool {
	f.used++
	f.nameBytes += len(name)
	return f.limit == 0 || f.used <= f.limit && f.nameBytes <= maxNameBytes
}

// topLevel returns the value of top-level key k of the mapping root, as
// Python's "k in data; data[k]" sees it.
func (f *flattener) topLevel(root *yaml.Node, k string) *yaml.Node {
	for _, e := range f.entries(deref(root)) {
		if e.key.kind == kStr && e.key.text == k {
			return e.value
		}
	}
	return nil
}

// flatten returns the variables of node n, named below parent, without
// duplicates (the last assignment to a name wins, as with Python's dict).
func (f *flattener) flatten(n *yaml.Node, parent string) []variable {
	var all []variable
	f.walk(n, parent, &all)
	// dedupe, last wins
	seen := make(map[string]int, len(all))
	out := all[:0]
	for _, v := range all {
		if i, ok := seen[v.name]; ok {
			out[i].value = v.value
			continue
		}
		seen[v.name] = len(out)
		out = append(out, v)
	}
	return out
}

func (f *flattener) walk(n *yaml.Node, parent string, out *[]variable) {
	if !f.spend(parent) {
		return
	}
	n = deref(n)
	if n == nil {
		*out = append(*out, variable{parent, ""})
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		for _, e := range f.entries(n) {
			name := e.key.text
			if parent != "" {
				name = parent + "_" + name
			}
			f.walk(e.value, name, out)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			name := strconv.Itoa(i)
			if parent != "" {
				name = parent + "_" + name
			}
			f.walk(c, name, out)
		}
		*out = append(*out, variable{parent + "_len", strconv.Itoa(len(n.Content))})
	default:
		s, err := resolve(n, false)
		if err != nil {
			s = scalar{kStr, n.Value}
		}
		v := s.text
		if s.kind == kStr {
			v = shellQuote(pyStrip(v))
		}
		*out = append(*out, variable{parent, v})
	}
}

// entry is one key/value pair of a constructed mapping.
type entry struct {
	key   scalar
	value *yaml.Node
}

// entries returns the pairs of mapping n as PyYAML's construct_mapping
// builds its dict: merge keys ("<<") expanded first, then the mapping's own
// pairs; a repeated key keeps its first position and takes the last value.
func (f *flattener) entries(n *yaml.Node) []entry {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	pairs := f.mergedPairs(n, 0)
	var out []entry
	index := make(map[scalar]int, len(pairs))
	for _, p := range pairs {
		k := keyScalar(p.key)
		if i, ok := index[k]; ok {
			out[i].value = p.value
			continue
		}
		index[k] = len(out)
		out = append(out, entry{k, p.value})
	}
	return out
}

type pair struct{ key, value *yaml.Node }

// mergedPairs implements PyYAML's SafeConstructor.flatten_mapping.
func (f *flattener) mergedPairs(n *yaml.Node, depth int) []pair {
	var merge, own []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && isMergeKey(k) && depth < 100 {
			if !f.spend("") {
				return nil
			}
			switch v := deref(v); {
			case v == nil:
			case v.Kind == yaml.MappingNode:
				merge = append(merge, f.mergedPairs(v, depth+1)...)
			case v.Kind == yaml.SequenceNode:
				for j := len(v.Content) - 1; j >= 0; j-- {
					if s := deref(v.Content[j]); s != nil && s.Kind == yaml.MappingNode {
						merge = append(merge, f.mergedPairs(s, depth+1)...)
					}
				}
			}
			continue
		}
		own = append(own, pair{k, v})
	}
	if merge == nil {
		return own
	}
	return append(merge, own...)
}

func isMergeKey(k *yaml.Node) bool {
	k = deref(k)
	return k != nil && k.Kind == yaml.ScalarNode && k.Value == "<<" && isPlain(k)
}

// keyScalar resolves a mapping key; keys that are not scalars or that
// PyYAML cannot load (Parse refuses both) are named by their text.
func keyScalar(k *yaml.Node) scalar {
	k = deref(k)
	if k == nil || k.Kind != yaml.ScalarNode {
		return scalar{kStr, ""}
	}
	s, err := resolve(k, true)
	if err != nil {
		return scalar{kStr, k.Value}
	}
	return s
}

// deref follows aliases (and a document node) to the node they stand for.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && i < 100; i++ {
		switch n.Kind {
		case yaml.AliasNode:
			n = n.Alias
		case yaml.DocumentNode:
			if len(n.Content) == 0 {
				return nil
			}
			n = n.Content[0]
		default:
			return n
		}
	}
	return n
}

// countNodes counts the nodes of n as written (aliases not followed).
func countNodes(n *yaml.Node) int {
	if n == nil {
		return 0
	}
	c := 1
	for _, ch := range n.Content {
		c += countNodes(ch)
	}
	return c
}
