package env

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// checker collects the problems and warnings of one document.
type checker struct {
	file  string
	data  []byte
	probs []Problem
	warns []Problem

	nonASCII []Problem  // positions of non-ASCII characters, paths filled in later
	spots    []nodeSpot // every key and scalar with its path, for nonASCII
	slow     []slowCheck
}

// slowCheck is an expensive check (OpenPGP keys), run after the others
// (concurrently when there are many, see runSlow); run returns a problem
// message or "".
type slowCheck struct {
	n    *yaml.Node
	path string
	run  func() string
}

// parallelSlowChecks is the number of slow checks from which runSlow runs
// them in parallel. Fewer run one after the other: one takes ≈0.1 ms (a
// PGP key's self-signatures), less than the OS threads the runtime starts
// for goroutines running in parallel cost. With the three PGP keys of a
// typical env.yml run in parallel, `ecs-image cidata` took 0.03–0.25 ms
// more CPU and 0.06–0.20 ms more median wall time (300 interleaved runs
// of each build, six times, load 8–13).
const parallelSlowChecks = 8

// runSlow runs the slow checks and records their problems in order.
func (c *checker) runSlow() {
	msgs := make([]string, len(c.slow))
	var wg sync.WaitGroup
	for i, sc := range c.slow {
		if len(c.slow) < parallelSlowChecks {
			msgs[i] = sc.run()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs[i] = sc.run()
		}()
	}
	wg.Wait()
	for i, m := range msgs {
		if m != "" {
			c.errAt(c.slow[i].n, c.slow[i].path, "%s", m)
		}
	}
}

type nodeSpot struct {
	line, col int
	path      string
}

func (c *checker) errAt(n *yaml.Node, path, format string, args ...any) {
	c.probs = append(c.probs, c.problem(n, path, format, args...))
}

func (c *checker) warnAt(n *yaml.Node, path, format string, args ...any) {
	c.warns = append(c.warns, c.problem(n, path, format, args...))
}

func (c *checker) problem(n *yaml.Node, path, format string, args ...any) Problem {
	p := Problem{File: c.file, Line: 1, Column: 1, Path: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil && n.Line > 0 {
		p.Line, p.Column = n.Line, n.Column
	}
	return p
}

func sortProblems(ps []Problem) []Problem {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Line != ps[j].Line {
			return ps[i].Line < ps[j].Line
		}
		return ps[i].Column < ps[j].Column
	})
	return ps
}

// run checks the whole document and returns its top-level mapping (nil if
// the document could not be parsed).
func (c *checker) run() *yaml.Node {
	if len(c.data) > MaxSize {
		line, col := position(c.data, MaxSize)
		c.probs = append(c.probs, Problem{File: c.file, Line: line, Column: col,
			Msg: fmt.Sprintf("file is %d bytes, more than the limit of %d", len(c.data), MaxSize)})
		return nil
	}
	c.checkASCII()
	c.checkHeader()
	if !utf8.Valid(c.data) {
		// YAML is UTF-8; the non-ASCII report says where it is not.
		c.probs = append(c.probs, c.nonASCII...)
		return nil
	}

	root, ok := c.parseYAML()
	if !ok {
		c.probs = append(c.probs, c.nonASCII...)
		return nil
	}
	if root == nil || root.Kind != yaml.MappingNode {
		what := "empty"
		if root != nil {
			what = article(nodeKind(root))
		}
		c.errAt(root, "", "the document is %s; env.yml must be a mapping of keys (appliance:, ecs:, ...)", what)
		c.probs = append(c.probs, c.nonASCII...)
		return nil
	}
	if !c.checkAliases(root) {
		// Do not walk a structure whose expansion is unbounded.
		c.probs = append(c.probs, c.nonASCII...)
		return nil
	}
	c.checkTree(root, "")
	c.attributeNonASCII()
	c.checkSchema(root)
	c.runSlow()
	return root
}

// position returns the 1-based line and column of byte offset off.
func position(data []byte, off int) (line, col int) {
	if off > len(data) {
		off = len(data)
	}
	before := data[:off]
	line = bytes.Count(before, []byte{'\n'}) + 1
	col = off - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}

// checkASCII reports the first non-ASCII character of every line.
func (c *checker) checkASCII() {
	const maxReports = 20
	lines := 0
	for off := 0; off < len(c.data); {
		i := bytes.IndexFunc(c.data[off:], func(r rune) bool { return r >= utf8.RuneSelf })
		if i < 0 {
			break
		}
		off += i
		line, col := position(c.data, off)
		lines++
		if lines <= maxReports {
			r, _ := utf8.DecodeRune(c.data[off:])
			desc := fmt.Sprintf("byte 0x%02x (not UTF-8)", c.data[off])
			if r != utf8.RuneError {
				desc = fmt.Sprintf("character %U %q", r, r)
			}
			c.nonASCII = append(c.nonASCII, Problem{File: c.file, Line: line, Column: col,
				Msg: "non-ASCII " + desc + "; env.yml must be plain ASCII (the appliance's saltstack reads it as ASCII)"})
		}
		nl := bytes.IndexByte(c.data[off:], '\n')
		if nl < 0 {
			break
		}
		off += nl + 1
	}
	if lines > maxReports {
		c.nonASCII = append(c.nonASCII, Problem{File: c.file, Line: c.nonASCII[maxReports-1].Line, Column: 1,
			Msg: fmt.Sprintf("non-ASCII characters on %d more lines", lines-maxReports)})
	}
}

// checkHeader requires the "#cloud-config" first line: the file is also
// cloud-init user-data, and the appliance's software expects the header.
func (c *checker) checkHeader() {
	first, _, _ := bytes.Cut(c.data, []byte{'\n'})
	if string(bytes.TrimRight(first, " \t\r")) != "#cloud-config" {
		c.probs = append(c.probs, Problem{File: c.file, Line: 1, Column: 1,
			Msg: `the first line must be "#cloud-config" (env.yml is also cloud-init user-data)`})
	}
}

var reYAMLErr = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^yaml: line (\d+): (.*)$`) })

// parseYAML parses the single document in c.data.
func (c *checker) parseYAML() (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(c.data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, true
		}
		c.syntaxError(err)
		return nil, false
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		c.errAt(&next, "", "a second YAML document starts here; env.yml must hold exactly one")
		return nil, false
	case !errors.Is(err, io.EOF):
		c.syntaxError(err)
		return nil, false
	}
	if len(doc.Content) == 0 {
		return nil, true
	}
	return doc.Content[0], true
}

func (c *checker) syntaxError(err error) {
	line, col, msg := SyntaxErrorAt(c.data, err)
	c.probs = append(c.probs, Problem{File: c.file, Line: line, Column: col, Msg: "YAML syntax error: " + msg})
}

// SyntaxErrorAt places a yaml.v3 syntax error of data at the line and
// column of its cause (yaml.v3 reports some errors on the line before, or
// without a position) and returns its message without the "yaml: line N:"
// prefix. It is shared by env.yml and the build templates.
func SyntaxErrorAt(data []byte, err error) (line, col int, msg string) {
	msg = strings.TrimPrefix(err.Error(), "yaml: ")
	line, col = 1, 1
	reported := 0
	if m := reYAMLErr().FindStringSubmatch(err.Error()); m != nil {
		reported, _ = strconv.Atoi(m[1])
		msg = m[2]
		// yaml.v3 reports scanner errors with 1-based lines but parser
		// errors with the 0-based line of the enclosing construct.
		if isParserError(msg) {
			reported++
		}
	} else if isParserError(msg) {
		reported = 1 // no line given: it is 0-based line 0
	}
	switch {
	case strings.HasPrefix(msg, "unknown anchor '"):
		name := strings.TrimSuffix(strings.TrimPrefix(msg, "unknown anchor '"), "' referenced")
		if i := bytes.Index(data, []byte("*"+name)); i >= 0 {
			line, col = position(data, i)
			return line, col, msg
		}
	case strings.Contains(msg, "control characters are not allowed"):
		// Reported without a position: the first control character.
		if i := bytes.IndexFunc(data, isControl); i >= 0 {
			line, col = position(data, i)
			return line, col, fmt.Sprintf("%s (byte 0x%02x)", msg, data[i])
		}
	case strings.Contains(msg, "found a tab character"):
		// yaml.v3 names the line before the tab's: the first line from
		// there on with a tab in its indentation.
		for n := max(reported, 1); n <= reported+2 && n <= bytes.Count(data, []byte{'\n'})+1; n++ {
			text := lineOf(data, n)
			indent := len(text) - len(strings.TrimLeft(text, " \t"))
			if i := strings.IndexByte(text[:indent], '\t'); i >= 0 {
				return n, i + 1, msg + " (a tab in the indentation: YAML indents with spaces only)"
			}
		}
	}
	if n := bytes.Count(bytes.TrimRight(data, "\n"), []byte{'\n'}) + 1; reported > n && len(bytes.TrimSpace(data)) > 0 {
		// At the end of the file: after the last line's text.
		return n, len(lineOf(data, n)) + 1, msg + " (at the end of the file)"
	}
	if reported > 0 {
		line = reported
		text := lineOf(data, line)
		indent := len(text) - len(strings.TrimLeft(text, " \t"))
		if i := strings.IndexByte(text[:indent], '\t'); i >= 0 {
			col = i + 1
			msg += " (a tab in the indentation: YAML indents with spaces only)"
		} else if i := strings.IndexByte(text, '\t'); i >= 0 && strings.Contains(msg, "cannot start any token") {
			col = i + 1
			msg += " (a tab character)"
		} else {
			col = indent + 1
		}
	}
	return line, col, msg
}

// isControl: the characters YAML refuses in a document (C0 controls but
// tab, line feed and carriage return; DEL).
func isControl(r rune) bool {
	return (r < 0x20 && r != '\t' && r != '\n' && r != '\r') || r == 0x7f
}

// isParserError tells yaml.v3's parser errors from its scanner errors.
func isParserError(msg string) bool {
	for _, p := range []string{"did not find expected ", "found duplicate %", "found incompatible YAML document", "found undefined tag handle"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// lineOf returns the text of 1-based line n of data.
func lineOf(data []byte, n int) string {
	for i := 1; i < n; i++ {
		j := bytes.IndexByte(data, '\n')
		if j < 0 {
			return ""
		}
		data = data[j+1:]
	}
	l, _, _ := bytes.Cut(data, []byte{'\n'})
	return strings.TrimSuffix(string(l), "\r")
}

// nodeKind is the Python type of n, following aliases.
func nodeKind(n *yaml.Node) kind {
	n = deref(n)
	if n == nil {
		return kNull
	}
	switch n.Kind {
	case yaml.MappingNode:
		return kMap
	case yaml.SequenceNode:
		return kSeq
	}
	s, err := resolve(n, false)
	if err != nil {
		return kStr
	}
	return s.kind
}

// checkAliases refuses recursive aliases and alias bombs: the document,
// with every alias expanded, may have at most maxAliasNodes more nodes than
// it has written out.
func (c *checker) checkAliases(root *yaml.Node) bool {
	literal := 0
	var firstAlias *yaml.Node
	var count func(n *yaml.Node)
	count = func(n *yaml.Node) {
		literal++
		if n.Kind == yaml.AliasNode && firstAlias == nil {
			firstAlias = n
		}
		for _, ch := range n.Content {
			count(ch)
		}
	}
	count(root)
	if firstAlias == nil {
		return true
	}
	limit := literal + maxAliasNodes
	size := make(map[*yaml.Node]int)
	const inProgress = -1
	var cyclic *yaml.Node
	var expand func(n *yaml.Node) int
	expand = func(n *yaml.Node) int {
		if s, ok := size[n]; ok {
			if s == inProgress {
				return -1
			}
			return s
		}
		size[n] = inProgress
		total := 1
		children := n.Content
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			children = []*yaml.Node{n.Alias}
		}
		for _, ch := range children {
			s := expand(ch)
			if s < 0 {
				if cyclic == nil {
					cyclic = n
				}
				return -1
			}
			total += s
			if total > limit {
				total = limit + 1
				break
			}
		}
		size[n] = total
		return total
	}
	total := expand(root)
	switch {
	case total < 0:
		c.errAt(cyclic, pathOf(root, cyclic), "alias *%s refers to a node that contains it (a recursive structure cannot be flattened)", cyclic.Value)
		return false
	case total > limit:
		c.errAt(firstAlias, pathOf(root, firstAlias), "aliases expand this document beyond %d nodes (%d written); refusing a possible YAML alias bomb", limit, literal)
		return false
	}
	return true
}

// checkTree checks every node as written (not following aliases): that
// PyYAML can construct it, keys are strings and unique, values are ASCII.
func (c *checker) checkTree(n *yaml.Node, path string) {
	c.checkTreeDepth(n, path, 0)
}

// maxDepth and maxKeyLen keep documents (and their flattened names) sane.
const (
	maxDepth  = 64
	maxKeyLen = 256
)

func (c *checker) checkTreeDepth(n *yaml.Node, path string, depth int) {
	if depth > maxDepth {
		c.errAt(n, path, "nested deeper than %d levels", maxDepth)
		return
	}
	switch n.Kind {
	case yaml.ScalarNode:
		c.spots = append(c.spots, nodeSpot{n.Line, n.Column, path})
		if s, err := resolve(n, false); err != nil {
			c.errAt(n, path, "%v", err)
		} else if s.kind == kTimestamp {
			c.warnAt(n, path, "YAML 1.1 reads %q as a timestamp, which flatten prints unquoted as %q (two shell words); quote it if it is text", n.Value, s.text)
		}
		if len(c.nonASCII) == 0 {
			for _, r := range n.Value {
				if r >= utf8.RuneSelf {
					c.errAt(n, path, "escape sequence yields non-ASCII character %U %q; env.yml must be plain ASCII", r, r)
					break
				}
			}
		}
	case yaml.SequenceNode:
		if n.Style&yaml.TaggedStyle != 0 && n.Tag != "!!seq" {
			c.errAt(n, path, "tag %s is not supported on a list", n.Tag)
		}
		for i, ch := range n.Content {
			c.checkTreeDepth(ch, fmt.Sprintf("%s[%d]", path, i), depth+1)
		}
	case yaml.MappingNode:
		if n.Style&yaml.TaggedStyle != 0 && n.Tag != "!!map" {
			c.errAt(n, path, "tag %s is not supported on a mapping", n.Tag)
		}
		seen := make(map[scalar]*yaml.Node)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kd := deref(k)
			if kd == nil || kd.Kind != yaml.ScalarNode {
				c.errAt(k, path, "a mapping key must be a plain string, not %s", article(nodeKind(k)))
				continue
			}
			ks, err := resolve(kd, true)
			if err != nil {
				c.errAt(k, path, "key: %v", err)
				continue
			}
			if len(kd.Value) > maxKeyLen {
				c.errAt(k, path, "key of %d characters is longer than %d", len(kd.Value), maxKeyLen)
				continue
			}
			childPath := joinPath(path, kd.Value)
			c.spots = append(c.spots, nodeSpot{k.Line, k.Column, childPath})
			switch ks.kind {
			case kStr:
			case kMerge:
				c.checkMerge(v, path)
				c.checkTreeDepth(v, path, depth+1)
				continue
			default:
				c.errAt(k, childPath, "key %q is read as %s by YAML 1.1 (PyYAML); quote it to make it a string", kd.Value, article(ks.kind))
				continue
			}
			if first, dup := seen[ks]; dup {
				c.errAt(k, childPath, "duplicate key %q (first defined at line %d)", kd.Value, first.Line)
			} else {
				seen[ks] = k
			}
			c.checkTreeDepth(v, childPath, depth+1)
		}
	}
}

// checkMerge checks the value of a "<<" merge key.
func (c *checker) checkMerge(v *yaml.Node, path string) {
	d := deref(v)
	if d != nil && d.Kind == yaml.MappingNode {
		return
	}
	if d != nil && d.Kind == yaml.SequenceNode {
		for _, e := range d.Content {
			if e := deref(e); e == nil || e.Kind != yaml.MappingNode {
				c.errAt(v, path, "a merge key (<<) takes a mapping or a list of mappings")
				return
			}
		}
		return
	}
	c.errAt(v, path, "a merge key (<<) takes a mapping or a list of mappings, not %s", article(nodeKind(v)))
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// attributeNonASCII gives each non-ASCII problem the key path of the key
// or scalar that contains it, and records the problems.
func (c *checker) attributeNonASCII() {
	if len(c.nonASCII) == 0 {
		return
	}
	sort.Slice(c.spots, func(i, j int) bool {
		a, b := c.spots[i], c.spots[j]
		return a.line < b.line || a.line == b.line && a.col < b.col
	})
	for _, p := range c.nonASCII {
		i := sort.Search(len(c.spots), func(i int) bool {
			s := c.spots[i]
			return s.line > p.Line || s.line == p.Line && s.col > p.Column
		})
		if i > 0 {
			p.Path = c.spots[i-1].path
		}
		c.probs = append(c.probs, p)
	}
}

// pathOf returns the key path of node target below root (as written, not
// following aliases), or "".
func pathOf(root, target *yaml.Node) string {
	var find func(n *yaml.Node, path string) (string, bool)
	find = func(n *yaml.Node, path string) (string, bool) {
		if n == target {
			return path, true
		}
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if p, ok := find(n.Content[i+1], joinPath(path, n.Content[i].Value)); ok {
					return p, true
				}
			}
		case yaml.SequenceNode:
			for i, ch := range n.Content {
				if p, ok := find(ch, fmt.Sprintf("%s[%d]", path, i)); ok {
					return p, true
				}
			}
		}
		return "", false
	}
	p, _ := find(root, "")
	return p
}
