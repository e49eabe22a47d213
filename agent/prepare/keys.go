package prepare

import (
	"fmt"
	"sort"
	"strings"

	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/env"
	"go.yaml.in/yaml/v3"
)

// KeyRule classifies one env.yml key: what implements it, or why this
// image does not. Every key of the original env.yml (the schema of package
// env, which follows the manual and default-env.yml) has a rule; a test
// fails for a schema key without one.
type KeyRule struct {
	// Key is the dotted path of the key.
	Key string
	// Subtree: the rule also covers every key below Key.
	Subtree bool
	// Handler names what implements the key (a chain step, cloud-init,
	// the containers' environment).
	Handler string
	// Unsupported, when not empty, says why the image ignores the key: a
	// set value (see env.IsSet) is reported in the journal and as the
	// "env.yml" warning of the status page.
	Unsupported string
}

// notSupported is the report's wording for an unsupported key.
const notSupported = "not supported by this image"

// cloudInitHandler handles the top-level keys of cloud-init's cloud-config.
const cloudInitHandler = "cloud-init (env.yml is also the seed's user-data)"

// containersHandler: the key reaches the ecs containers only through the
// flattened environment (ECS_* variables, /run/active-env.compose.env).
const containersHandler = "ecs containers (flattened environment)"

// KeyTable is the classification of every env.yml key, sorted by Key.
// Keys other issues implement keep their row here: change the row when the
// implementation lands.
var KeyTable = []KeyRule{
	{Key: "appliance.allowed_hosts", Handler: "prepare-appliance/tls, nginx (server names)"},
	{Key: "appliance.backup", Subtree: true, Handler: "ecs-agent backup run (appliance-backup.timer), ecs-agent recover, prepare-ecs/restore-check"},
	{Key: "appliance.deploy", Subtree: true, Handler: "prepare-appliance/deploy-api"},
	{Key: "appliance.dkim.key", Handler: "prepare-appliance/mail (opendkim)"},
	{Key: "appliance.domain", Handler: "prepare-appliance/hostname, tls, nginx, mail"},
	{Key: "appliance.extra.files", Handler: "prepare-appliance/extra-files"},
	{Key: "appliance.extra.packages", Handler: "prepare-appliance/extra-packages"},
	{Key: "appliance.extra.states", Unsupported: notSupported + " (no saltstack; use appliance.extra.files and .packages)"},
	{Key: "appliance.git", Subtree: true, Unsupported: notSupported + " (the appliance is baked into the image, not checked out from git)"},
	{Key: "appliance.metric.exporter", Handler: "prepare-appliance/metrics (node, nginx, postgres, process exporters; ecs-agent metrics collect: containers, redis, memcached, appliance state)"},
	{Key: "appliance.metric.gui", Unsupported: notSupported + " (no grafana in Debian; use the Prometheus GUI at 172.17.0.1:9090)"},
	{Key: "appliance.metric.pghero", Unsupported: notSupported + " (no pghero in Debian; the postgres exporter's metrics are in Prometheus)"},
	{Key: "appliance.metric.server", Handler: "prepare-appliance/metrics (Prometheus on 172.17.0.1:9090, Alertmanager on 172.17.0.1:9093 mailing root)"},
	{Key: "appliance.sentry", Subtree: true, Handler: "ecs-agent (failures of the chain, units and backups reported with Sentry's envelope protocol); ecs containers (flattened environment)"},
	{Key: "appliance.ssl.cert", Handler: "prepare-appliance/tls"},
	{Key: "appliance.ssl.client_certs_mandatory", Handler: "prepare-appliance/client-ca, nginx (ssl_verify_client on)"},
	{Key: "appliance.ssl.key", Handler: "prepare-appliance/tls"},
	{Key: "appliance.ssl.letsencrypt.directory", Handler: "ecs-agent acme"},
	{Key: "appliance.ssl.letsencrypt.enabled", Handler: "prepare-appliance/tls, ecs-agent acme"},
	{Key: "appliance.standby", Handler: "prepare-env (standby)"},
	{Key: "appliance.storage.grow_root", Unsupported: notSupported + " (grow the root filesystem with cloud-init's growpart)"},
	{Key: "appliance.storage.ignore.data", Handler: "prepare-appliance/storage"},
	{Key: "appliance.storage.ignore.volatile", Handler: "prepare-appliance/storage"},
	{Key: "appliance.storage.proxy_cache", Unsupported: notSupported + " (no polipo proxy cache)"},
	{Key: "appliance.storage.setup", Unsupported: notSupported + " (no saltstack; prepare the volumes labelled ecs-data / ecs-volatile before the appliance starts)"},
	{Key: "appliance.update", Subtree: true, Handler: "prepare-appliance/timers (appliance-update.timer), ecs-agent update"},
	{Key: "disable_root", Handler: "prepare-appliance/ssh (sshd PermitRootLogin) and cloud-init"},
	{Key: "ecs.database", Handler: "prepare-appliance/postgresql (database name), prepare-ecs/migrate"},
	{Key: "ecs.git", Subtree: true, Unsupported: notSupported + " (the ecs images are baked into the image, not built from git)"},
	{Key: "ecs.migrate.auto", Handler: "prepare-ecs/migrate"},
	{Key: "ecs.settings", Handler: containersHandler + " as ECS_SETTINGS"},
	{Key: "ecs.userswitcher.enabled", Handler: containersHandler},
	{Key: "ecs.userswitcher.parameter", Handler: containersHandler},
	{Key: "ecs.vault_encrypt", Handler: "prepare-appliance/vault-keys (/data/ecs-gpg)"},
	{Key: "ecs.vault_sign", Handler: "prepare-appliance/vault-keys (/data/ecs-gpg)"},
	{Key: "ssh_authorized_keys", Handler: "prepare-appliance/ssh (root, at every start) and cloud-init"},
	{Key: "ssh_deprecated_keys", Handler: "prepare-appliance/ssh (removed from root's and every user's authorized_keys)"},
}

// Rule returns the rule that classifies the key at path: its own row, a
// Subtree row above it, or for a top-level cloud-init key the cloud-init
// row; ok is false for a key the image does not know.
func Rule(path string) (KeyRule, bool) {
	i := sort.Search(len(KeyTable), func(i int) bool { return KeyTable[i].Key >= path })
	if i < len(KeyTable) && KeyTable[i].Key == path {
		return KeyTable[i], true
	}
	for p := path; strings.Contains(p, "."); {
		p = p[:strings.LastIndexByte(p, '.')]
		if r, ok := Rule(p); ok && r.Subtree {
			return r, true
		}
	}
	if !strings.Contains(path, ".") && cloudInitKeys[path] {
		return KeyRule{Key: path, Handler: cloudInitHandler}, true
	}
	return KeyRule{}, false
}

var cloudInitKeys = func() map[string]bool {
	m := map[string]bool{}
	for _, k := range env.SchemaKeys() {
		if k.CloudInit {
			m[k.Path] = true
		}
	}
	return m
}()

// KeyReport is one key of an env.yml the image does not act on.
type KeyReport struct {
	Key, Reason string
}

func (r KeyReport) String() string { return r.Key + ": " + r.Reason }

// UnhandledKeys lists the keys of doc that are set but ignored: keys whose
// rule is Unsupported, and keys the image does not know (the validator
// warns about those too). Keys below an ecs or appliance key that is
// itself reported are not listed again.
func UnhandledKeys(doc *env.Doc) []KeyReport {
	var out []KeyReport
	doc.Walk(func(path string, v *yaml.Node) bool {
		r, ok := Rule(path)
		switch {
		case !ok:
			if v != nil && v.Kind == yaml.MappingNode && knownPrefix(path) {
				return true // a mapping on the way to known keys
			}
			if env.IsSet(v) && (strings.HasPrefix(path, "appliance.") || strings.HasPrefix(path, "ecs.")) {
				out = append(out, KeyReport{path, "unknown key, ignored"})
			}
			return false
		case r.Unsupported != "":
			if env.IsSet(v) {
				out = append(out, KeyReport{r.Key, r.Unsupported})
			}
			return false
		}
		return !r.Subtree
	})
	// A Subtree rule reached through several keys is reported once.
	seen := map[string]bool{}
	uniq := out[:0]
	for _, r := range out {
		if !seen[r.Key] {
			seen[r.Key] = true
			uniq = append(uniq, r)
		}
	}
	return uniq
}

// knownPrefix reports whether some rule's key lies below path.
func knownPrefix(path string) bool {
	for _, r := range KeyTable {
		if strings.HasPrefix(r.Key, path+".") {
			return true
		}
	}
	return false
}

// reportKeys logs every set key the image ignores and shows them as the
// status page's "env.yml" warning (cleared when there is none).
func (a *Agent) reportKeys(step string, doc *env.Doc) {
	reports := UnhandledKeys(doc)
	var texts []string
	for _, r := range reports {
		a.logf("%s: %s", step, r)
		texts = append(texts, r.String())
	}
	warning := strings.Join(texts, "; ")
	if err := status.Warn(a.Host, KeysWarning, warning); err != nil {
		a.logf("%s: status: %v", step, err)
	}
}

// KeysWarning is the status page's warning topic for ignored env.yml keys.
const KeysWarning = "env.yml"

// FormatKeyTable renders KeyTable as a text table (ecs-agent keys).
func FormatKeyTable() string {
	var b strings.Builder
	for _, r := range KeyTable {
		key := r.Key
		if r.Subtree {
			key += ".*"
		}
		what := r.Handler
		if r.Unsupported != "" {
			what = "UNSUPPORTED: " + r.Unsupported
		}
		fmt.Fprintf(&b, "%-40s %s\n", key, what)
	}
	fmt.Fprintf(&b, "%-40s %s\n", "(other top-level cloud-config keys)", cloudInitHandler)
	return b.String()
}
