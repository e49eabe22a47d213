package images

import (
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

//go:embed catalog.yml
var builtinCatalog []byte

// CatalogEntry is one known base image.
type CatalogEntry struct {
	Name        string   `yaml:"name" json:"name"`
	Aliases     []string `yaml:"aliases,omitempty" json:"aliases,omitempty"`
	Description string   `yaml:"description,omitempty" json:"description,omitempty"`
	URL         string   `yaml:"url" json:"url"`
	Checksum    string   `yaml:"checksum" json:"checksum"`
	Format      string   `yaml:"format" json:"format"`
	Arch        string   `yaml:"arch" json:"arch"`
	Firmware    string   `yaml:"firmware" json:"firmware"`
	User        string   `yaml:"user" json:"user"`
	// Origin is the catalog file the entry came from ("builtin" or a path).
	Origin string `yaml:"-" json:"origin"`
}

// Catalog is the list of known bases.
type Catalog struct {
	Entries []*CatalogEntry
}

// CatalogError is a problem in a catalog file, with its position.
type CatalogError struct {
	File   string
	Line   int
	Column int
	Field  string
	Msg    string
}

func (e *CatalogError) Error() string {
	pos := e.File
	if e.Line > 0 {
		pos = fmt.Sprintf("%s:%d:%d", e.File, e.Line, e.Column)
	}
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %s", pos, e.Field, e.Msg)
	}
	return pos + ": " + e.Msg
}

// UserCatalogPath is the user's catalog file: $ECS_IMAGE_CATALOG, else
// $XDG_CONFIG_HOME/ecs-image/catalog.yml, else ~/.config/ecs-image/catalog.yml.
func UserCatalogPath() string {
	if p := os.Getenv("ECS_IMAGE_CATALOG"); p != "" {
		return p
	}
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "ecs-image", "catalog.yml")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		return filepath.Join(home, ".config", "ecs-image", "catalog.yml")
	}
	return ""
}

// LoadCatalog returns the built-in catalog merged with the user's catalog
// file (if it exists): user entries add bases or replace built-in ones of
// the same name. An explicitly set $ECS_IMAGE_CATALOG must exist.
func LoadCatalog() (*Catalog, error) {
	c, err := ParseCatalog("builtin", builtinCatalog)
	if err != nil {
		return nil, err
	}
	p := UserCatalogPath()
	if p == "" {
		return c, nil
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) && os.Getenv("ECS_IMAGE_CATALOG") == "" {
		return c, nil
	}
	if err != nil {
		return nil, &CatalogError{File: p, Msg: err.Error()}
	}
	u, err := ParseCatalog(p, data)
	if err != nil {
		return nil, err
	}
	c.Merge(u)
	return c, nil
}

// Merge adds u's entries to c, replacing entries of the same name.
func (c *Catalog) Merge(u *Catalog) {
	for _, e := range u.Entries {
		replaced := false
		for i, old := range c.Entries {
			if old.Name == e.Name {
				c.Entries[i] = e
				replaced = true
			}
		}
		if !replaced {
			c.Entries = append(c.Entries, e)
		}
	}
}

// Lookup finds a base by name or alias.
func (c *Catalog) Lookup(name string) *CatalogEntry {
	for _, e := range c.Entries {
		if e.Name == name {
			return e
		}
	}
	for _, e := range c.Entries {
		for _, a := range e.Aliases {
			if a == name {
				return e
			}
		}
	}
	return nil
}

// Names lists the catalog's base names, sorted.
func (c *Catalog) Names() []string {
	var n []string
	for _, e := range c.Entries {
		n = append(n, e.Name)
	}
	sort.Strings(n)
	return n
}

var (
	nameRE     = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`) })
	hexDigests = map[string]int{"sha256": 64, "sha512": 128}
)

// ParseCatalog parses and validates a catalog file's content. Errors name
// the file, line and field.
func ParseCatalog(file string, data []byte) (*Catalog, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &CatalogError{File: file, Msg: err.Error()}
	}
	if len(doc.Content) == 0 {
		return &Catalog{}, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, &CatalogError{File: file, Line: root.Line, Column: root.Column, Msg: "want a mapping with a 'bases' list"}
	}
	var bases *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i]
		if k.Value != "bases" {
			return nil, &CatalogError{File: file, Line: k.Line, Column: k.Column, Field: k.Value, Msg: "unknown key (want 'bases')"}
		}
		bases = root.Content[i+1]
	}
	if bases == nil {
		return &Catalog{}, nil
	}
	if bases.Kind != yaml.SequenceNode {
		return nil, &CatalogError{File: file, Line: bases.Line, Column: bases.Column, Field: "bases", Msg: "want a list"}
	}
	c := &Catalog{}
	seen := map[string]int{}
	for i, n := range bases.Content {
		e := &CatalogEntry{Origin: file}
		dec := n
		if n.Kind != yaml.MappingNode {
			return nil, &CatalogError{File: file, Line: n.Line, Column: n.Column, Field: fmt.Sprintf("bases[%d]", i), Msg: "want a mapping"}
		}
		known := map[string]bool{"name": true, "aliases": true, "description": true, "url": true, "checksum": true, "format": true, "arch": true, "firmware": true, "user": true}
		pos := map[string]*yaml.Node{}
		for j := 0; j+1 < len(n.Content); j += 2 {
			k := n.Content[j]
			if !known[k.Value] {
				return nil, &CatalogError{File: file, Line: k.Line, Column: k.Column, Field: fmt.Sprintf("bases[%d].%s", i, k.Value), Msg: "unknown field"}
			}
			pos[k.Value] = n.Content[j+1]
		}
		if err := dec.Decode(e); err != nil {
			return nil, &CatalogError{File: file, Line: n.Line, Column: n.Column, Field: fmt.Sprintf("bases[%d]", i), Msg: err.Error()}
		}
		fail := func(field, msg string) error {
			at := n
			if p := pos[field]; p != nil {
				at = p
			}
			label := fmt.Sprintf("bases[%d].%s", i, field)
			if e.Name != "" {
				label = fmt.Sprintf("bases[%d] (%s).%s", i, e.Name, field)
			}
			return &CatalogError{File: file, Line: at.Line, Column: at.Column, Field: label, Msg: msg}
		}
		if !nameRE().MatchString(e.Name) {
			return nil, fail("name", fmt.Sprintf("%q: want lower-case letters, digits, '.', '_', '-'", e.Name))
		}
		for _, a := range append([]string{e.Name}, e.Aliases...) {
			if !nameRE().MatchString(a) {
				return nil, fail("aliases", fmt.Sprintf("%q is not a valid name", a))
			}
			if prev, dup := seen[a]; dup {
				return nil, fail("name", fmt.Sprintf("%q is already used by bases[%d]", a, prev))
			}
			seen[a] = i
		}
		if err := validSourceURL(e.URL); err != nil {
			return nil, fail("url", err.Error())
		}
		if err := ValidChecksum(e.Checksum); err != nil {
			return nil, fail("checksum", err.Error())
		}
		if !knownFormat(e.Format) {
			return nil, fail("format", fmt.Sprintf("%q: want one of %s", e.Format, strings.Join(Formats, ", ")))
		}
		if e.Arch == "" {
			e.Arch = "amd64"
		}
		if e.Arch != "amd64" {
			return nil, fail("arch", fmt.Sprintf("%q: only amd64 is supported", e.Arch))
		}
		if e.Firmware == "" {
			e.Firmware = "bios"
		}
		if e.Firmware != "bios" && e.Firmware != "uefi" {
			return nil, fail("firmware", fmt.Sprintf("%q: want bios or uefi", e.Firmware))
		}
		if !nameRE().MatchString(e.User) {
			return nil, fail("user", fmt.Sprintf("%q: want the image's default user name", e.User))
		}
		c.Entries = append(c.Entries, e)
	}
	return c, nil
}

func validSourceURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return fmt.Errorf("%q has no host", s)
		}
	case "file":
		if u.Path == "" {
			return fmt.Errorf("%q has no path", s)
		}
	default:
		return fmt.Errorf("%q: want an http, https or file URL", s)
	}
	return nil
}

// ValidChecksum checks a checksum specification: sha256:HEX, sha512:HEX or
// file:URL (a GNU or BSD style checksum file).
func ValidChecksum(s string) error {
	algo, val, ok := strings.Cut(s, ":")
	if !ok || val == "" {
		return fmt.Errorf("%q: want sha256:HEX, sha512:HEX or file:URL", s)
	}
	if algo == "file" {
		if strings.HasPrefix(val, "/") {
			return nil
		}
		return validSourceURL(val)
	}
	n, known := hexDigests[strings.ToLower(algo)]
	if !known {
		return fmt.Errorf("%q: unsupported digest %q (want sha256 or sha512)", s, algo)
	}
	if len(val) != n || strings.Trim(strings.ToLower(val), "0123456789abcdef") != "" {
		return fmt.Errorf("%q: want %d hex digits for %s", s, n, algo)
	}
	return nil
}
