package env

import (
	"bytes"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/ssh"
)

// spec describes the expected shape of one value. The schema follows the
// ECS administration manual §3, the original env-template.yml and
// default-env.yml.
type spec struct {
	kind     kind             // kStr, kBool, kMap, kSeq; kNull means anything
	fields   map[string]*spec // for kMap
	elem     *spec            // for kSeq
	required bool             // the key must be present and not null
	open     bool             // kMap: unknown keys are fine (no warning)
	check    func(c *checker, n *yaml.Node, path string, s string)
	checkMap func(c *checker, n *yaml.Node, path string)
}

func str() *spec     { return &spec{kind: kStr} }
func boolean() *spec { return &spec{kind: kBool} }
func strCheck(f func(c *checker, n *yaml.Node, path, s string)) *spec {
	return &spec{kind: kStr, check: f}
}
func mapOf(fields map[string]*spec) *spec { return &spec{kind: kMap, fields: fields} }
func listOf(elem *spec) *spec             { return &spec{kind: kSeq, elem: elem} }
func anything() *spec                     { return &spec{kind: kNull} }

var gitSpec = map[string]*spec{"branch": str(), "source": str()}

var schema = sync.OnceValue(func() *spec {
	root := mapOf(map[string]*spec{
		"ssh_authorized_keys": listOf(strCheck(checkSSHKey(false))),
		"ssh_deprecated_keys": listOf(strCheck(checkSSHKey(true))),
		"disable_root":        boolean(),
		"appliance": {kind: kMap, required: true, fields: map[string]*spec{
			"standby":       boolean(),
			"domain":        {kind: kStr, required: true, check: checkDomain},
			"allowed_hosts": strCheck(checkAllowedHosts),
			"ssl": {kind: kMap, checkMap: checkSSLPair, fields: map[string]*spec{
				"letsencrypt": mapOf(map[string]*spec{
					"enabled":   boolean(),
					"directory": strCheck(checkURL("an ACME directory", "https")),
				}),
				"client_certs_mandatory": boolean(),
				"key":                    strCheck(checkSSLKey),
				"cert":                   strCheck(checkSSLCert),
			}},
			"sentry": mapOf(map[string]*spec{"dsn": strCheck(checkURL("a sentry DSN", "http", "https"))}),
			"metric": mapOf(map[string]*spec{
				"exporter": boolean(), "server": boolean(), "gui": boolean(), "pghero": boolean(),
			}),
			"git": mapOf(gitSpec),
			"extra": mapOf(map[string]*spec{
				"files": listOf(&spec{kind: kMap, fields: map[string]*spec{
					"path":        {kind: kStr, required: true, check: checkAbsPath},
					"contents":    str(),
					"owner":       strCheck(checkOwner),
					"permissions": strCheck(checkPermissions),
				}}),
				"packages": listOf(strCheck(checkPackage)),
				"states":   str(),
			}),
			"update": mapOf(map[string]*spec{"automatic": boolean(), "oncalendar": str()}),
			"storage": mapOf(map[string]*spec{
				"setup":       str(),
				"proxy_cache": boolean(),
				"grow_root":   boolean(),
				"ignore":      mapOf(map[string]*spec{"volatile": boolean(), "data": boolean()}),
			}),
			"dkim": mapOf(map[string]*spec{"key": strCheck(checkDKIMKey)}),
			"backup": mapOf(map[string]*spec{
				"url":     strCheck(checkBackupURL),
				"options": str(),
				"mount": {kind: kMap, fields: map[string]*spec{
					"type":    {kind: kStr, required: true},
					"source":  {kind: kStr, required: true},
					"target":  {kind: kStr, required: true, check: checkAbsPath},
					"options": str(),
				}},
				"encrypt": strCheck(checkPGP(usageEncrypt)),
				// ssh_known_hosts: the sftp/scp backup server's host key(s),
				// known_hosts lines (ecs-image's key; the original needed
				// extra.states for /root/.ssh/known_hosts).
				"ssh_known_hosts": strCheck(checkKnownHosts),
			}),
			// deploy enables ecs-agent's push-deploy API (docs/agent.md);
			// its fields are checked by the agent.
			"deploy": {kind: kMap, open: true},
		}},
		"ecs": mapOf(map[string]*spec{
			"git":      mapOf(gitSpec),
			"database": str(),
			"migrate":  mapOf(map[string]*spec{"auto": boolean()}),
			"userswitcher": mapOf(map[string]*spec{
				"enabled":   boolean(),
				"parameter": str(),
			}),
			"settings":      str(),
			"vault_encrypt": strCheck(checkPGP(usageEncrypt)),
			"vault_sign":    strCheck(checkPGP(usageSign)),
		}),
	})
	for _, k := range cloudInitKeys {
		if _, ok := root.fields[k]; !ok {
			root.fields[k] = anything()
		}
	}
	return root
})

// cloudInitKeys are cloud-init's own top-level cloud-config keys (cloud-init
// 22.4 schema plus later and legacy ones); env.yml is also user-data.
var cloudInitKeys = strings.Fields(`
	allow_public_ssh_keys ansible apk_repos apt apt_pipelining apt_reboot_if_required
	apt_update apt_upgrade apt_sources apt_proxy apt_http_proxy apt_https_proxy
	apt_ftp_proxy apt_mirror apt_mirror_search apt_mirror_search_dns
	apt_preserve_sources_list apt_custom_sources_list apt_get_command
	apt_get_upgrade_subcommand apt_get_wrapper add_apt_repo_match debconf_selections
	authkey_hash autoinstall bootcmd byobu_by_default ca-certs ca_certs chef chpasswd
	cloud_config_modules cloud_final_modules cloud_init_modules create_hostname_file
	datasource datasource_list def_log_file device_aliases disable_ec2_metadata
	disable_root disable_root_opts disk_setup drivers fan final_message fqdn fs_setup
	groups growpart grub-dpkg grub_dpkg hostname keyboard landscape locale
	locale_configfile log_cfgs lxd manage_etc_hosts manage_resolv_conf
	manual_cache_clean mcollective merge_how merge_type migrate mount_default_fields
	mounts network no_ssh_fingerprints ntp output package_reboot_if_required
	package_update package_upgrade packages password phone_home power_state
	prefer_fqdn_over_hostname preserve_hostname puppet random_seed reporting
	resize_rootfs resolv_conf rh_subscription rsyslog runcmd salt_minion snap
	spacewalk ssh ssh_authorized_keys ssh_deletekeys ssh_fp_console_blacklist
	ssh_genkeytypes ssh_import_id ssh_key_console_blacklist ssh_keys
	ssh_publish_hostkeys ssh_pwauth ssh_quiet_keygen syslog_fix_perms system_info
	timezone ubuntu_advantage ubuntu_pro updates user users vendor_data wireguard
	write_files yum_repo_dir yum_repos zypper`)

// checkSchema checks the document against the schema.
func (c *checker) checkSchema(root *yaml.Node) {
	c.checkValue(schema(), root, "", root)
}

// checkValue checks n (possibly an alias) against sp; at is the node whose
// position is reported.
func (c *checker) checkValue(sp *spec, n *yaml.Node, path string, at *yaml.Node) {
	d := deref(n)
	k := nodeKind(d)
	if sp.kind == kNull {
		return
	}
	if k == kNull {
		if sp.required {
			c.errAt(at, path, "is required and must not be empty")
		}
		return
	}
	if k != sp.kind {
		c.errAt(at, path, "%s", typeMismatch(sp.kind, d, k))
		return
	}
	switch sp.kind {
	case kMap:
		c.checkMapping(sp, d, path)
		if sp.checkMap != nil {
			sp.checkMap(c, d, path)
		}
	case kSeq:
		for i, e := range d.Content {
			c.checkValue(sp.elem, e, fmt.Sprintf("%s[%d]", path, i), e)
		}
	default:
		s, err := resolve(d, false)
		if err != nil || !isASCII(s.text) {
			return // reported by checkTree
		}
		if sp.check != nil {
			sp.check(c, at, path, s.text)
		}
	}
}

func (c *checker) checkMapping(sp *spec, n *yaml.Node, path string) {
	var f flattener
	present := map[string]bool{}
	for _, e := range f.entries(n) {
		if e.key.kind != kStr {
			continue // reported by checkTree
		}
		name := e.key.text
		present[name] = true
		childPath := joinPath(path, name)
		fs, ok := sp.fields[name]
		if !ok {
			if !sp.open {
				c.warnAt(c.keyNode(n, name), childPath, "unknown key%s", suggest(name, sp.fields))
			}
			continue
		}
		at := e.value
		if nodeKind(at) == kNull {
			at = c.keyNode(n, name)
		}
		c.checkValue(fs, e.value, childPath, at)
	}
	var missing []string
	for name, fs := range sp.fields {
		if fs.required && !present[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	for _, name := range missing {
		c.errAt(n, joinPath(path, name), "is required but missing")
	}
}

// keyNode finds the key node of name in mapping n, for its position.
func (c *checker) keyNode(n *yaml.Node, name string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == name {
			return n.Content[i]
		}
	}
	return n
}

// typeMismatch explains a wrong type, with a hint for YAML 1.1 surprises.
func typeMismatch(want kind, n *yaml.Node, got kind) string {
	wantS := map[kind]string{kStr: "a string", kBool: "a boolean (true or false)", kMap: "a mapping", kSeq: "a list"}[want]
	msg := fmt.Sprintf("must be %s, not %s", wantS, article(got))
	if n == nil || n.Kind != yaml.ScalarNode {
		return msg
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:37] + "..."
	}
	switch {
	case want == kStr && (got == kBool || got == kInt || got == kFloat || got == kDate || got == kTimestamp):
		return fmt.Sprintf("%s (YAML 1.1 reads %s as %s); quote it", msg, v, article(got))
	case want == kBool && got == kStr && isYAMLBool(v):
		return fmt.Sprintf("%s (%q is quoted); remove the quotes", msg, v)
	case want == kSeq && got == kStr:
		return msg + fmt.Sprintf("; write a list, e.g. [%s] or one \"- item\" per line", v)
	}
	return msg
}

// suggest proposes the closest known key for a misspelt one.
func suggest(name string, fields map[string]*spec) string {
	best, bestD := "", 3
	for k := range fields {
		if d := editDistance(name, k); d < bestD || d == bestD && best != "" && k < best {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// ValidHostname reports whether s is a host name as appliance.domain
// requires: dot-separated labels of letters, digits and '-', at most 253
// characters, and a last label that is not all digits (an IP address).
func ValidHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if !isDNSLabel(l) {
			return false
		}
	}
	// an all-numeric last label is an IP address or garbage, not a name
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}

func checkDomain(c *checker, n *yaml.Node, path, s string) {
	s = strings.TrimSpace(s)
	if !ValidHostname(s) {
		c.errAt(n, path, "%q is not a valid host name (letters, digits and '-' in dot-separated labels of at most 63 characters, e.g. ecs.example.org)", s)
	}
}

func checkAllowedHosts(c *checker, n *yaml.Node, path, s string) {
	for _, h := range strings.Fields(s) {
		if !isAllowedHost(h) {
			c.errAt(n, path, "%q is not a host name (allowed_hosts is a space-separated list of host names)", h)
		}
	}
}

func checkURL(what string, schemes ...string) func(c *checker, n *yaml.Node, path, s string) {
	return func(c *checker, n *yaml.Node, path, s string) {
		s = strings.TrimSpace(s)
		if s == "" {
			return
		}
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			c.errAt(n, path, "%q is not a valid URL for %s", s, what)
			return
		}
		for _, sc := range schemes {
			if u.Scheme == sc {
				return
			}
		}
		c.errAt(n, path, "%s must use %s, not %q", what, strings.Join(schemes, " or "), u.Scheme)
	}
}

func checkBackupURL(c *checker, n *yaml.Node, path, s string) {
	s = strings.TrimSpace(s)
	if s == "" {
		return
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || scheme == "" || rest == "" || strings.ContainsAny(scheme, " /") {
		c.errAt(n, path, "%q is not a duplicity target URL (scheme://..., e.g. file:///volatile/ecs-backup-test/ or sftp://user@host/path)", s)
	}
}

func checkKnownHosts(c *checker, n *yaml.Node, path, s string) {
	rest := []byte(s)
	for len(bytes.TrimSpace(rest)) > 0 {
		var err error
		if _, _, _, _, rest, err = ssh.ParseKnownHosts(rest); err != nil {
			c.errAt(n, path, "not known_hosts lines (e.g. \"[backup.example.org]:22 ssh-ed25519 AAAA...\", from ssh-keyscan): %v", err)
			return
		}
	}
}

func checkAbsPath(c *checker, n *yaml.Node, path, s string) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "/") || strings.ContainsAny(s, "\n\x00") {
		c.errAt(n, path, "%q is not an absolute path", s)
	}
}

var reOwner = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?$`)
})

func checkOwner(c *checker, n *yaml.Node, path, s string) {
	if s = strings.TrimSpace(s); !reOwner().MatchString(s) {
		c.errAt(n, path, "%q is not an owner (user or user:group)", s)
	}
}

var rePermissions = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^0?[0-7]{3,4}$`) })

func checkPermissions(c *checker, n *yaml.Node, path, s string) {
	if s = strings.TrimSpace(s); !rePermissions().MatchString(s) {
		c.errAt(n, path, "%q is not an octal file mode (write it quoted, e.g. \"0600\")", s)
	}
}

var rePackage = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(?:[=:][A-Za-z0-9.+~:-]+)?$`) })

func checkPackage(c *checker, n *yaml.Node, path, s string) {
	if s = strings.TrimSpace(s); !rePackage().MatchString(s) {
		c.errAt(n, path, "%q is not a Debian package name", s)
	}
}

func article(k kind) string {
	if k == kInt {
		return "an integer"
	}
	return "a " + k.String()
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// SchemaKey is one key the env.yml schema knows.
type SchemaKey struct {
	// Path is the dotted path (appliance.ssl.key). Mappings with declared
	// fields are not keys themselves: their fields are. Lists, open
	// mappings and cloud-init's own keys are keys, not descended into.
	Path string
	// CloudInit marks a top-level key of cloud-init's cloud-config that
	// the schema accepts without knowing its shape.
	CloudInit bool
}

// SchemaKeys returns every key the schema knows, sorted by path, for
// tables that must classify each of them (the agent's key table).
func SchemaKeys() []SchemaKey {
	var out []SchemaKey
	var walk func(sp *spec, path string)
	walk = func(sp *spec, path string) {
		if sp.kind != kMap || sp.open || len(sp.fields) == 0 {
			out = append(out, SchemaKey{Path: path, CloudInit: sp.kind == kNull && !strings.Contains(path, ".")})
			return
		}
		for name, f := range sp.fields {
			walk(f, joinPath(path, name))
		}
	}
	walk(schema(), "")
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}
