package prepare

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
)

// Metrics (manual §4.8): Debian's Prometheus packages are baked into the
// image with their units disabled; appliance.metric.exporter starts the
// exporters, appliance.metric.server Prometheus and Alertmanager, at every
// start. Unset, every one of them is stopped: nothing of it runs or listens.
const (
	// BridgeIP is the docker bridge's address, where the manual puts the
	// Prometheus and Alertmanager GUIs (reach them with ssh -L).
	BridgeIP = "172.17.0.1"

	PromConfig      = "/etc/prometheus/prometheus.yml"
	PromRules       = "/etc/prometheus/ecs-alert.rules.yml"
	PromCustomRules = "/app/etc/prometheus-rules.d/*.rules.yml"
	AlertConfig     = "/etc/prometheus/alertmanager.yml"
	ProcessConfig   = "/etc/prometheus/process-exporter.yml"
	// NginxStatusConf serves nginx's stub_status to its exporter on loopback.
	NginxStatusConf = "/etc/nginx/conf.d/ecs-metrics.conf"
	nginxStatusAddr = "127.0.0.1:8090"
	// MetricsTimer runs `ecs-agent metrics collect` (containers, memcached,
	// redis and the appliance's own state into the textfile collector).
	MetricsTimer = "ecs-agent-metrics.timer"
)

//go:embed templates/ecs-alert.rules.yml
var alertRules []byte

//go:embed templates/process-exporter.yml
var processExporterConfig []byte

// metricService is one metric unit and how it is configured.
type metricService struct {
	Unit string
	Job  string // Prometheus job name
	Addr string // where it listens
	Args string // ARGS of /etc/default/<unit>
	Env  string // other lines of /etc/default/<unit>
}

// nodeMountPointsExclude is Debian's default for the node exporter's
// filesystem collector without its /mnt and /media: the manual mounts the
// backup target under /mnt (appliance.backup.mount.target), and
// NodeFilesystemFree must see it filling up.
const nodeMountPointsExclude = `^/(dev|proc|run|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)`

// exporters are the units appliance.metric.exporter starts, listening on
// loopback only.
var exporters = []metricService{
	{Unit: "prometheus-node-exporter", Job: "node", Addr: "127.0.0.1:9100",
		Args: "--web.listen-address=127.0.0.1:9100 --collector.disable-defaults " +
			"--collector.diskstats --collector.entropy --collector.filefd --collector.filesystem --collector.hwmon " +
			"--collector.loadavg --collector.mdadm --collector.meminfo --collector.netdev --collector.netstat " +
			"--collector.stat --collector.textfile --collector.time --collector.uname --collector.vmstat " +
			// NodeLoadHigh divides by the number of CPUs (node_cpu_seconds_total).
			"--collector.cpu " +
			"--collector.filesystem.mount-points-exclude=" + nodeMountPointsExclude + " " +
			"--collector.textfile.directory=" + MetricsDir},
	{Unit: "prometheus-nginx-exporter", Job: "nginx", Addr: "127.0.0.1:9113",
		Args: "-web.listen-address=127.0.0.1:9113 -nginx.scrape-uri=http://" + nginxStatusAddr + "/stub_status"},
	{Unit: "prometheus-postgres-exporter", Job: "postgres", Addr: "127.0.0.1:9187",
		Args: "--web.listen-address=127.0.0.1:9187",
		Env:  "DATA_SOURCE_NAME='user=prometheus host=/run/postgresql dbname=postgres sslmode=disable'"},
	{Unit: "prometheus-process-exporter", Job: "process", Addr: "127.0.0.1:9256",
		Args: "-web.listen-address=127.0.0.1:9256 -config.path=" + ProcessConfig},
}

// servers are the units appliance.metric.server starts, on the bridge.
var servers = []metricService{
	{Unit: "prometheus", Job: "prometheus", Addr: BridgeIP + ":9090",
		Args: "--config.file=" + PromConfig + " --web.listen-address=" + BridgeIP + ":9090"},
	{Unit: "prometheus-alertmanager", Job: "alertmanager", Addr: BridgeIP + ":9093",
		Args: "--config.file=" + AlertConfig + " --web.listen-address=" + BridgeIP + ":9093 --cluster.listen-address="},
}

// serverDropIn makes the servers wait for the docker bridge they listen on.
const serverDropIn = `# Written by ecs-agent: listens on the docker bridge (` + BridgeIP + `).
[Unit]
After=docker.service
Wants=docker.service
[Service]
RestartSec=5
`

// metricsWanted reads appliance.metric: the server needs the exporters.
func metricsWanted(e *Env) (exporter, server bool) {
	exporter = e.Bool("appliance.metric.exporter", false)
	server = e.Bool("appliance.metric.server", false)
	return exporter || server, server
}

func (a *Agent) stepMetrics(ctx context.Context, e *Env) error {
	exporter, server := metricsWanted(e)
	if server && !e.Bool("appliance.metric.exporter", false) {
		a.logf("metrics: appliance.metric.server collects the exporters' metrics: exporters started too")
	}
	var start, restart, stop []string
	reload := false
	for _, s := range exporters {
		if !exporter {
			stop = append(stop, s.Unit+".service")
			continue
		}
		changed, err := a.writeDefault(s)
		if err != nil {
			return err
		}
		if changed {
			restart = append(restart, s.Unit+".service") // with its new ARGS
		} else {
			start = append(start, s.Unit+".service")
		}
	}
	for _, s := range servers {
		if !server {
			stop = append(stop, s.Unit+".service")
			continue
		}
		changed, err := a.writeDefault(s)
		if err != nil {
			return err
		}
		dchanged, err := a.Host.WriteFile("/etc/systemd/system/"+s.Unit+".service.d/ecs-agent.conf", []byte(serverDropIn), 0o644)
		if err != nil {
			return err
		}
		reload = reload || dchanged
		if changed || dchanged {
			restart = append(restart, s.Unit+".service")
		} else {
			start = append(start, s.Unit+".service")
		}
	}
	if exporter {
		if err := a.metricsExporterFiles(ctx); err != nil {
			return err
		}
		start = append(start, MetricsTimer)
	} else {
		stop = append(stop, MetricsTimer)
		if a.Host.Exists(NginxStatusConf) {
			if err := a.Host.Remove(NginxStatusConf); err != nil {
				return err
			}
			if err := a.systemctl(ctx, "reload", "nginx.service"); err != nil {
				return err
			}
		}
	}
	if server {
		promChanged, amChanged, err := a.metricsServerFiles(ctx, e)
		if err != nil {
			return err
		}
		if promChanged {
			start, restart = moveUnits(start, restart, "prometheus.service")
		}
		if amChanged {
			start, restart = moveUnits(start, restart, "prometheus-alertmanager.service")
		}
	}
	if reload {
		if err := a.systemctl(ctx, "daemon-reload"); err != nil {
			return err
		}
	}
	if len(stop) > 0 {
		// Units of packages that are not installed are not an error here.
		if _, err := a.Host.Run(ctx, "systemctl", append([]string{"stop", "--no-block"}, stop...)...); err != nil {
			a.logf("metrics: stopping %s: %v", strings.Join(stop, " "), err)
		}
	}
	for _, op := range []struct {
		verb  string
		units []string
	}{{"restart", restart}, {"start", start}} {
		if len(op.units) == 0 {
			continue
		}
		if err := a.systemctl(ctx, append([]string{op.verb}, op.units...)...); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		a.logf("metrics: %s %s", op.verb, strings.Join(op.units, " "))
	}
	return nil
}

// moveUnits moves units from from to to (when there).
func moveUnits(from, to []string, units ...string) ([]string, []string) {
	var kept []string
	for _, u := range from {
		moved := false
		for _, m := range units {
			if u == m {
				moved = true
			}
		}
		if moved {
			to = append(to, u)
		} else {
			kept = append(kept, u)
		}
	}
	return kept, to
}

// writeDefault writes /etc/default/<unit>, which the Debian unit reads.
func (a *Agent) writeDefault(s metricService) (bool, error) {
	body := "# Written by ecs-agent from appliance.metric; local changes are overwritten.\n"
	if s.Env != "" {
		body += s.Env + "\n"
	}
	body += "ARGS=\"" + s.Args + "\"\n"
	return a.Host.WriteFile("/etc/default/"+s.Unit, []byte(body), 0o644)
}

// metricsExporterFiles writes what the exporters read: nginx's stub_status
// on loopback, the process groups, the textfile directory, and a
// PostgreSQL role for the exporter (peer authentication, pg_monitor).
func (a *Agent) metricsExporterFiles(ctx context.Context) error {
	conf := "# Written by ecs-agent (appliance.metric.exporter): nginx's status for its exporter.\n" +
		"server {\n    listen " + nginxStatusAddr + ";\n    location = /stub_status {\n        stub_status;\n        allow 127.0.0.1;\n        deny all;\n    }\n}\n"
	changed, err := a.Host.WriteFile(NginxStatusConf, []byte(conf), 0o644)
	if err != nil {
		return err
	}
	if changed {
		if err := a.systemctl(ctx, "reload-or-restart", "nginx.service"); err != nil {
			return err
		}
	}
	if _, err := a.Host.WriteFile(ProcessConfig, processExporterConfig, 0o644); err != nil {
		return err
	}
	if err := a.Host.MkdirAll(MetricsDir, 0o755); err != nil {
		return err
	}
	if a.pgConfDir() != "" {
		sql := `SELECT 'CREATE ROLE prometheus LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prometheus')\gexec
GRANT pg_monitor TO prometheus;
`
		if _, err := a.psqlQuery(ctx, "postgres", sql); err != nil {
			return fmt.Errorf("metrics: PostgreSQL role for the exporter: %w", err)
		}
	}
	return nil
}

// alertTimings are Prometheus' and Alertmanager's intervals: production
// uses productionTimings; the host test of the whole alert chain renders
// the same templates with short ones.
type alertTimings struct {
	Scrape, Evaluation                       string // Prometheus
	GroupWait, GroupInterval, RepeatInterval string // Alertmanager
}

var productionTimings = alertTimings{Scrape: "15s", Evaluation: "15s", GroupWait: "30s", GroupInterval: "5m", RepeatInterval: "12h"}

// serverConfig is what Prometheus' and Alertmanager's configurations are
// rendered from.
type serverConfig struct {
	Domain           string
	AlertmanagerAddr string
	RulesFile        string
	CustomRules      string
	// CustomDigest is a digest of the custom rule files, written into
	// prometheus.yml as a comment: Prometheus reads rule files only when
	// it (re)loads, so changed custom rules change its configuration.
	CustomDigest string
	Targets      []metricService
	// Smarthost is postfix's smtpd (plain SMTP on the loopback: no
	// STARTTLS is required), MailTo the alerts' recipient.
	Smarthost string
	MailTo    string
	alertTimings
}

// applianceServerConfig is the appliance's configuration for a domain.
func applianceServerConfig(domain string) serverConfig {
	var targets []metricService
	targets = append(targets, exporters...)
	targets = append(targets, servers...)
	return serverConfig{
		Domain: domain, AlertmanagerAddr: servers[1].Addr,
		RulesFile: PromRules, CustomRules: PromCustomRules, Targets: targets,
		Smarthost: fmt.Sprintf("127.0.0.1:%d", PostfixPort), MailTo: "root@localhost",
		alertTimings: productionTimings,
	}
}

// renderServerConfig renders prometheus.yml and alertmanager.yml.
func renderServerConfig(c serverConfig) (prom, am []byte, err error) {
	if prom, err = render("prometheus.yml.tmpl", c); err != nil {
		return nil, nil, err
	}
	if am, err = render("alertmanager.yml.tmpl", c); err != nil {
		return nil, nil, err
	}
	return prom, am, nil
}

// metricsServerFiles writes Prometheus' configuration and alert rules and
// Alertmanager's configuration; it reports which changed. Changed custom
// rules are first checked with promtool: a broken one is an error naming
// it (Prometheus would not start with it).
func (a *Agent) metricsServerFiles(ctx context.Context, e *Env) (promChanged, amChanged bool, err error) {
	if err := a.Host.MkdirAll(filepath.Dir(PromCustomRules), 0o755); err != nil {
		return false, false, err
	}
	custom, digest, err := a.customRules()
	if err != nil {
		return false, false, err
	}
	c := applianceServerConfig(e.Doc.Domain())
	c.CustomDigest = digest
	prom, am, err := renderServerConfig(c)
	if err != nil {
		return false, false, err
	}
	if promChanged, err = a.Host.WriteFile(PromConfig, prom, 0o644); err != nil {
		return false, false, err
	}
	if promChanged && len(custom) > 0 {
		if out, err := a.Host.Run(ctx, "promtool", append([]string{"check", "rules"}, custom...)...); err != nil {
			// Rewritten at the next start, and checked again then.
			if rerr := a.Host.Remove(PromConfig); rerr != nil {
				a.logf("metrics: %v", rerr)
			}
			return false, false, fmt.Errorf("custom Prometheus rules %s (appliance.extra.files): %w\n%s", PromCustomRules, err, strings.TrimSpace(string(out)))
		}
	}
	rulesChanged, err := a.Host.WriteFile(PromRules, alertRules, 0o644)
	if err != nil {
		return false, false, err
	}
	if amChanged, err = a.Host.WriteFile(AlertConfig, am, 0o644); err != nil {
		return false, false, err
	}
	return promChanged || rulesChanged, amChanged, nil
}

// customRules lists the custom rule files (paths on the appliance) and
// digests their names and contents.
func (a *Agent) customRules() (files []string, digest string, err error) {
	matches, err := filepath.Glob(a.Host.Path(PromCustomRules))
	if err != nil {
		return nil, "", err
	}
	sort.Strings(matches)
	h := sha256.New()
	for _, m := range matches {
		p := filepath.Join(filepath.Dir(PromCustomRules), filepath.Base(m))
		data, err := a.Host.ReadFile(p)
		if err != nil {
			return nil, "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", p, len(data))
		h.Write(data)
		files = append(files, p)
	}
	return files, fmt.Sprintf("%x", h.Sum(nil)), nil
}
