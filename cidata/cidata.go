// Package cidata writes and reads cloud-init seed images: NoCloud ISOs
// (volume id "cidata"), NoCloud FAT images and OpenStack config drives
// ("config-2"). Images are built in memory (ISO9660 by this package's
// own writer, FAT12 with go-diskfs) and are reproducible: the same inputs
// give byte-identical output, with every timestamp set from
// SOURCE_DATE_EPOCH (or a fixed epoch) and no random serial numbers.
package cidata

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/env"
)

// Format is the kind of seed image.
type Format string

// Seed image formats.
const (
	// NoCloud is an ISO9660 image (Rock Ridge + Joliet) labelled "cidata"
	// holding user-data, meta-data and optionally network-config and vendor-data.
	NoCloud Format = "nocloud"
	// ConfigDrive is an OpenStack config drive: an ISO9660 image labelled
	// "config-2" holding openstack/latest/{user_data,meta_data.json,...}.
	ConfigDrive Format = "config-2"
	// VFAT is a NoCloud FAT12 image labelled "cidata" with the same files as NoCloud.
	VFAT Format = "vfat"
)

// Formats lists the supported formats, the default first.
var Formats = []Format{NoCloud, ConfigDrive, VFAT}

// ParseFormat returns the Format named s ("" means NoCloud).
func ParseFormat(s string) (Format, error) {
	if s == "" {
		return NoCloud, nil
	}
	for _, f := range Formats {
		if string(f) == s {
			return f, nil
		}
	}
	return "", &InputError{Msg: fmt.Sprintf("unknown format %q (want nocloud, config-2 or vfat)", s)}
}

// Label returns the volume label cloud-init looks for with this format.
func (f Format) Label() string {
	if f == ConfigDrive {
		return "config-2"
	}
	return "cidata"
}

// MaxFileSize is the largest meta-data, network-config or vendor-data accepted.
const MaxFileSize = 1 << 20

// DefaultEpoch is the timestamp of every file and volume date when neither
// Options.ModTime nor SOURCE_DATE_EPOCH is set (1980-01-01, the FAT epoch).
var DefaultEpoch = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)

// Options describe one seed image.
type Options struct {
	Format Format // "" means NoCloud

	// UserData is the env.yml, stored unchanged as user-data. Unless Raw is
	// set it must be a valid env.yml (env.Parse); UserDataName names it in
	// error messages (default "user-data").
	UserData     []byte
	UserDataName string
	// Raw skips the env.yml validation, for plain cloud-config user-data
	// (e.g. a build-time seed).
	Raw bool

	// MetaData is optional extra meta-data: a YAML (or JSON) mapping. Keys it
	// sets win; instance-id and local-hostname (NoCloud) or uuid, hostname
	// and name (config-2) are added when missing. MetaDataName names it in errors.
	MetaData     []byte
	MetaDataName string
	// NetworkConfig is optional: NoCloud network-config (YAML, network
	// config v1 or v2) or, for config-2, OpenStack network_data.json (JSON).
	NetworkConfig     []byte
	NetworkConfigName string
	// VendorData is optional vendor-data (any user-data format); for
	// config-2 it is wrapped as {"cloud-init": "..."} in vendor_data.json.
	VendorData     []byte
	VendorDataName string

	// Hostname is local-hostname; default: the env.yml's appliance.domain.
	Hostname string

	// ModTime is the timestamp of every file and date in the image. Zero
	// means SOURCE_DATE_EPOCH when set, else DefaultEpoch.
	ModTime time.Time
}

// InputError reports unusable input (bad meta-data, unknown format, bad
// SOURCE_DATE_EPOCH, ...). Invalid env.yml user-data yields an *env.Error.
type InputError struct {
	File         string // the offending input, if any
	Line, Column int    // position in File, when known
	Msg          string
}

func (e *InputError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

var yamlLine = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^yaml: line (\d+): (.*)$`) })

// yamlError turns a yaml.v3 syntax error into an InputError with its line.
func yamlError(file string, err error) *InputError {
	if m := yamlLine().FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &InputError{File: file, Line: line, Column: 1, Msg: "YAML syntax error: " + m[2]}
	}
	return &InputError{File: file, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
}

// nodeError is an InputError at the position of YAML node n.
func nodeError(file string, n *yaml.Node, format string, args ...any) *InputError {
	return &InputError{File: file, Line: n.Line, Column: n.Column, Msg: fmt.Sprintf(format, args...)}
}

// Seed is a prepared seed: the files to store and their volume label.
type Seed struct {
	Format     Format
	Label      string
	InstanceID string // NoCloud instance-id, or the config-2 uuid
	Hostname   string
	Files      []SeedFile // in image order
	ModTime    time.Time
}

// SeedFile is one file of a seed image.
type SeedFile struct {
	Path string // slash-separated, relative to the image root
	Data []byte
}

// Prepare validates the options and computes the files of the seed
// without building an image. Nothing is written.
func Prepare(o Options) (*Seed, error) {
	format, err := ParseFormat(string(o.Format))
	if err != nil {
		return nil, err
	}
	if len(o.UserData) == 0 {
		return nil, &InputError{File: nameOr(o.UserDataName, "user-data"), Msg: "user-data is empty"}
	}
	hostname := o.Hostname
	if !o.Raw {
		doc, err := env.Parse(nameOr(o.UserDataName, "user-data"), o.UserData)
		if err != nil {
			return nil, err
		}
		if hostname == "" {
			hostname = doc.Domain()
		}
	}
	if strings.ContainsAny(hostname, " \t\r\n\"'\\") {
		return nil, &InputError{Msg: fmt.Sprintf("hostname %q contains whitespace or quotes", hostname)}
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{nameOr(o.MetaDataName, "meta-data"), o.MetaData},
		{nameOr(o.NetworkConfigName, "network-config"), o.NetworkConfig},
		{nameOr(o.VendorDataName, "vendor-data"), o.VendorData},
	} {
		if len(f.data) > MaxFileSize {
			return nil, &InputError{File: f.name, Msg: fmt.Sprintf("larger than %d bytes", MaxFileSize)}
		}
	}
	mtime := o.ModTime
	if mtime.IsZero() {
		if mtime, err = SourceDateEpoch(); err != nil {
			return nil, err
		}
	}
	if err := checkTime(mtime); err != nil {
		return nil, err
	}

	sum := contentHash(o, hostname)
	s := &Seed{Format: format, Label: format.Label(), Hostname: hostname, ModTime: mtime.UTC()}
	switch format {
	case NoCloud, VFAT:
		s.InstanceID = "iid-ecs-" + hex.EncodeToString(sum[:10])
		md, iid, err := nocloudMetaData(o, s.InstanceID, hostname)
		if err != nil {
			return nil, err
		}
		s.InstanceID = iid
		s.Files = append(s.Files, SeedFile{"meta-data", md})
		if len(o.NetworkConfig) > 0 {
			if err := checkYAMLMapping(nameOr(o.NetworkConfigName, "network-config"), o.NetworkConfig); err != nil {
				return nil, err
			}
			s.Files = append(s.Files, SeedFile{"network-config", o.NetworkConfig})
		}
		s.Files = append(s.Files, SeedFile{"user-data", o.UserData})
		if len(o.VendorData) > 0 {
			s.Files = append(s.Files, SeedFile{"vendor-data", o.VendorData})
		}
	case ConfigDrive:
		s.InstanceID = uuidFromHash(sum)
		md, uuid, err := configDriveMetaData(o, s.InstanceID, hostname)
		if err != nil {
			return nil, err
		}
		s.InstanceID = uuid
		const dir = "openstack/latest/"
		s.Files = append(s.Files, SeedFile{dir + "meta_data.json", md})
		if len(o.NetworkConfig) > 0 {
			if !json.Valid(o.NetworkConfig) {
				return nil, &InputError{File: nameOr(o.NetworkConfigName, "network-config"),
					Msg: "config-2 needs network_data.json in OpenStack's JSON format; this is not valid JSON"}
			}
			s.Files = append(s.Files, SeedFile{dir + "network_data.json", o.NetworkConfig})
		}
		s.Files = append(s.Files, SeedFile{dir + "user_data", o.UserData})
		if len(o.VendorData) > 0 {
			if !utf8.Valid(o.VendorData) {
				return nil, &InputError{File: nameOr(o.VendorDataName, "vendor-data"),
					Msg: "config-2 stores vendor-data as a JSON string; it must be UTF-8 text"}
			}
			vd, _ := json.Marshal(map[string]string{"cloud-init": string(o.VendorData)})
			s.Files = append(s.Files, SeedFile{dir + "vendor_data.json", append(vd, '\n')})
		}
	}
	return s, nil
}

// Build returns the seed image for o, built entirely in memory.
func Build(o Options) ([]byte, error) {
	s, err := Prepare(o)
	if err != nil {
		return nil, err
	}
	return s.Image()
}

// Image builds the image of a prepared seed.
func (s *Seed) Image() ([]byte, error) {
	if s.Format == VFAT {
		return buildFAT(s)
	}
	return buildISO(s)
}

// Write builds the seed image for o and writes it to path, mode 0600. The
// image goes to a temporary file in path's directory that is renamed over
// path at the end, so path is never half-written; invalid input leaves
// nothing behind.
func Write(path string, o Options) error {
	img, err := Build(o)
	if err != nil {
		return err
	}
	return WriteImage(path, img)
}

// WriteImage writes an image built by Build or Seed.Image to path, mode
// 0600, through a temporary file in the same directory renamed at the end.
func WriteImage(path string, data []byte) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if err := atomicfile.CheckTarget(path); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = atomicfile.CheckTarget(path); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// SourceDateEpoch returns the time in $SOURCE_DATE_EPOCH (seconds since
// 1970 UTC) when set, else DefaultEpoch. A malformed value is an error, as
// the reproducible-builds specification asks.
func SourceDateEpoch() (time.Time, error) {
	v, ok := os.LookupEnv("SOURCE_DATE_EPOCH")
	if !ok || v == "" {
		return DefaultEpoch, nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, &InputError{File: "SOURCE_DATE_EPOCH", Msg: fmt.Sprintf("want a non-negative integer, got %q", v)}
	}
	t := time.Unix(n, 0).UTC()
	if err := checkTime(t); err != nil {
		return time.Time{}, err
	}
	return t, nil
}

func checkTime(t time.Time) error {
	// ISO 9660 directory dates hold years 1900..2155, FAT ones 1980..2107.
	if y := t.UTC().Year(); y < 1970 || y > 2107 {
		return &InputError{File: "SOURCE_DATE_EPOCH", Msg: fmt.Sprintf("timestamp %s outside 1970..2107", t.UTC().Format(time.RFC3339))}
	}
	return nil
}

func nameOr(name, def string) string {
	if name == "" {
		return def
	}
	return name
}

// contentHash hashes everything that goes into the seed except the
// format, so one env gives one instance-id whichever way it is packaged.
func contentHash(o Options, hostname string) [32]byte {
	h := sha256.New()
	h.Write([]byte("ecs-image cidata v1\x00"))
	for _, b := range [][]byte{o.UserData, o.MetaData, o.NetworkConfig, o.VendorData, []byte(hostname)} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// uuidNamespace is the name-based UUID namespace of ecs-image seeds.
var uuidNamespace = [16]byte{0x6b, 0x1f, 0x3e, 0x52, 0x0e, 0x8a, 0x4c, 0x1d, 0x9f, 0x35, 0x7a, 0x2c, 0x41, 0x0b, 0xd8, 0x63}

// uuidFromHash returns an RFC 4122 version 5 (name-based, SHA-1) UUID of sum.
func uuidFromHash(sum [32]byte) string {
	h := sha1.New()
	h.Write(uuidNamespace[:])
	h.Write(sum[:])
	u := h.Sum(nil)[:16]
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// parseMapping parses optional YAML/JSON meta-data; nil data gives nil.
func parseMapping(name string, data []byte) (*yaml.Node, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlError(name, err)
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, nodeError(name, m, "want a mapping of keys to values")
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := m.Content[i]
		if k.Kind != yaml.ScalarNode {
			return nil, nodeError(name, k, "keys must be strings")
		}
		if seen[k.Value] {
			return nil, nodeError(name, k, "%s: duplicate key", k.Value)
		}
		seen[k.Value] = true
	}
	return m, nil
}

func checkYAMLMapping(name string, data []byte) error {
	m, err := parseMapping(name, data)
	if err == nil && m == nil {
		err = &InputError{File: name, Msg: "empty"}
	}
	return err
}

func lookupKey(m *yaml.Node, key string) *yaml.Node {
	if m == nil {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// nocloudMetaData returns the NoCloud meta-data: instance-id and
// local-hostname, plus whatever the user's meta-data adds, and the
// instance-id in effect (the user's, if given).
func nocloudMetaData(o Options, iid, hostname string) ([]byte, string, error) {
	name := nameOr(o.MetaDataName, "meta-data")
	m, err := parseMapping(name, o.MetaData)
	if err != nil {
		return nil, "", err
	}
	if m == nil {
		var b strings.Builder
		fmt.Fprintf(&b, "instance-id: %s\n", iid)
		if hostname != "" {
			fmt.Fprintf(&b, "local-hostname: %s\n", hostname)
		}
		return []byte(b.String()), iid, nil
	}
	for _, k := range []string{"instance-id", "local-hostname"} {
		if v := lookupKey(m, k); v != nil && (v.Kind != yaml.ScalarNode || strings.TrimSpace(v.Value) == "") {
			return nil, "", nodeError(name, v, "%s: want a non-empty string", k)
		}
	}
	var add []*yaml.Node
	if v := lookupKey(m, "instance-id"); v != nil {
		iid = v.Value
	} else {
		add = append(add, strNode("instance-id"), strNode(iid))
	}
	if lookupKey(m, "local-hostname") == nil && hostname != "" {
		add = append(add, strNode("local-hostname"), strNode(hostname))
	}
	if len(add) == 0 {
		return o.MetaData, iid, nil
	}
	m.Content = append(add, m.Content...)
	m.Style = 0 // block style, whatever the input used
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(m); err != nil {
		return nil, "", &InputError{File: name, Msg: err.Error()}
	}
	return buf.Bytes(), iid, nil
}

func strNode(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}

// configDriveMetaData returns openstack/latest/meta_data.json: uuid
// (cloud-init's instance-id; required), hostname and name, plus the
// user's meta-data keys, as JSON with sorted keys, and the uuid in effect.
func configDriveMetaData(o Options, uuid, hostname string) ([]byte, string, error) {
	name := nameOr(o.MetaDataName, "meta-data")
	m, err := parseMapping(name, o.MetaData)
	if err != nil {
		return nil, "", err
	}
	md := map[string]any{"uuid": uuid, "launch_index": 0}
	if hostname != "" {
		md["hostname"] = hostname
		md["name"] = hostname
	}
	if m != nil {
		var user map[string]any
		if err := m.Decode(&user); err != nil {
			return nil, "", &InputError{File: name, Msg: err.Error()}
		}
		for k, v := range user {
			md[k] = v
		}
		u, ok := md["uuid"].(string)
		if !ok || u == "" {
			return nil, "", &InputError{File: name, Msg: "uuid: want a non-empty string"}
		}
		uuid = u
	}
	out, err := json.MarshalIndent(md, "", "  ")
	if err != nil {
		return nil, "", &InputError{File: name, Msg: fmt.Sprintf("cannot convert to JSON: %v", err)}
	}
	return append(out, '\n'), uuid, nil
}
