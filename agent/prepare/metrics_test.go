package prepare

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/testenv"
)

// envWithMetric is the compat env with appliance.metric set.
func envWithMetric(t *testing.T, a *Agent, metric string) *Env {
	t.Helper()
	data := string(defaultEnvData(t))
	if metric != "" {
		data = strings.Replace(data, "\nappliance:\n", "\nappliance:\n  metric:\n"+metric, 1)
	}
	put(t, a, ActiveEnv, []byte(data), 0o600)
	e, err := a.loadActive()
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// Unset, every metric unit is stopped and nginx's status server removed.
func TestMetricsOffStopsEverything(t *testing.T) {
	a, rec := testAgent(t)
	put(t, a, NginxStatusConf, []byte("server {}\n"), 0o644)
	if err := a.stepMetrics(context.Background(), envWithMetric(t, a, "")); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(rec.Recorded(), "\n")
	for _, u := range append(exporters, servers...) {
		if !strings.Contains(got, u.Unit+".service") {
			t.Errorf("%s not stopped:\n%s", u.Unit, got)
		}
		if a.Host.Exists("/etc/default/" + u.Unit) {
			t.Errorf("/etc/default/%s written", u.Unit)
		}
	}
	if !strings.Contains(got, "stop --no-block") || !strings.Contains(got, MetricsTimer) || strings.Contains(got, " start ") {
		t.Errorf("commands:\n%s", got)
	}
	if a.Host.Exists(NginxStatusConf) {
		t.Error("nginx's status server left")
	}
}

// Exporters listen on loopback, the servers on the bridge; the rendered
// configuration passes the real promtool and amtool.
func TestMetricsExporterAndServer(t *testing.T) {
	a, rec := testAgent(t)
	e := envWithMetric(t, a, "    exporter: true\n    server: true\n")
	if err := a.stepMetrics(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	for _, s := range exporters {
		d := read(t, a, "/etc/default/"+s.Unit)
		if !strings.Contains(d, "127.0.0.1:") || strings.Contains(d, "0.0.0.0") {
			t.Errorf("%s listens beyond loopback:\n%s", s.Unit, d)
		}
	}
	for _, s := range servers {
		if d := read(t, a, "/etc/default/"+s.Unit); !strings.Contains(d, BridgeIP+":") {
			t.Errorf("%s not on the bridge:\n%s", s.Unit, d)
		}
	}
	if d := read(t, a, "/etc/default/prometheus-alertmanager"); !strings.Contains(d, "--cluster.listen-address= ") && !strings.HasSuffix(strings.TrimSpace(d), "--cluster.listen-address=\"") {
		t.Errorf("alertmanager's cluster port is not disabled:\n%s", d)
	}
	got := strings.Join(rec.Recorded(), "\n")
	if !strings.Contains(got, "restart prometheus-node-exporter.service") || !strings.Contains(got, "daemon-reload") || !strings.Contains(got, MetricsTimer) {
		t.Errorf("commands:\n%s", got)
	}
	if !strings.Contains(got, "GRANT pg_monitor") && a.pgConfDir() != "" {
		t.Errorf("no PostgreSQL role for the exporter:\n%s", got)
	}

	// The real tools check what was rendered.
	promtool := testenv.Tool(t, "promtool", "apt-get install prometheus (make deps)")
	amtool := testenv.Tool(t, "amtool", "apt-get install prometheus-alertmanager (make deps)")
	cfg := read(t, a, PromConfig)
	cfg = strings.ReplaceAll(cfg, PromRules, a.Host.Path(PromRules))
	cfg = strings.ReplaceAll(cfg, PromCustomRules, a.Host.Path(PromCustomRules))
	checked := filepath.Join(t.TempDir(), "prometheus.yml")
	os.WriteFile(checked, []byte(cfg), 0o644)
	// A custom rule file in the rules directory is loaded too.
	put(t, a, "/app/etc/prometheus-rules.d/site.rules.yml", []byte("groups:\n  - name: site\n    rules:\n      - alert: SiteDown\n        expr: up == 0\n"), 0o644)
	for _, c := range [][]string{
		{promtool, "check", "config", checked},
		{promtool, "check", "rules", a.Host.Path(PromRules)},
		{amtool, "check-config", a.Host.Path(AlertConfig)},
	} {
		out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
		if c[2] == "config" && !strings.Contains(string(out), "site.rules.yml") {
			t.Errorf("custom rules not loaded:\n%s", out)
		}
	}

	// Prometheus reads rule files only when it starts or reloads: the new
	// custom rule file is checked with promtool and restarts Prometheus
	// (not Alertmanager).
	n := len(rec.Recorded())
	if err := a.stepMetrics(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	again := strings.Join(rec.Recorded()[n:], "\n")
	if !strings.Contains(again, "promtool check rules /app/etc/prometheus-rules.d/site.rules.yml") ||
		!strings.Contains(again, "restart prometheus.service\n") {
		t.Errorf("a new custom rule file: commands\n%s", again)
	}

	// Unchanged: nothing is restarted again, nothing checked.
	n = len(rec.Recorded())
	if err := a.stepMetrics(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	if again := strings.Join(rec.Recorded()[n:], "\n"); strings.Contains(again, "restart") || strings.Contains(again, "promtool") {
		t.Errorf("a run without changes restarted or checked:\n%s", again)
	}

	// A broken custom rule is an error naming the files, with promtool's
	// words; prometheus.yml is left to be rewritten (and checked) next time.
	put(t, a, "/app/etc/prometheus-rules.d/site.rules.yml", []byte("groups: [{name: x, rules: [{alert: A, expr: 'up =='}]}]\n"), 0o644)
	rec.Responses["promtool check rules"] = host.Response{Stdout: "FAILED: parse error", Err: fmt.Errorf("exit status 1")}
	err := a.stepMetrics(context.Background(), e)
	if err == nil || !strings.Contains(err.Error(), "/app/etc/prometheus-rules.d/*.rules.yml") || !strings.Contains(err.Error(), "FAILED: parse error") {
		t.Errorf("broken custom rule: %v", err)
	}
	if a.Host.Exists(PromConfig) {
		t.Error("prometheus.yml kept after a failed check: the next run would not check again")
	}
}

// A promtool run over a custom rule file that does not parse fails (what
// the agent's check relies on).
func TestPromtoolRefusesBrokenRules(t *testing.T) {
	promtool := testenv.Tool(t, "promtool", "apt-get install prometheus (make deps)")
	f := filepath.Join(t.TempDir(), "x.rules.yml")
	os.WriteFile(f, []byte("groups: [{name: x, rules: [{alert: A, expr: 'up =='}]}]\n"), 0o644)
	out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "x.rules.yml") {
		t.Errorf("promtool check rules of a broken file: %v\n%s", err, out)
	}
}

// The alert rules fire as meant, checked by promtool's rule unit tests.
func TestAlertRulesFire(t *testing.T) {
	promtool := testenv.Tool(t, "promtool", "apt-get install prometheus (make deps)")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "rules.yml"), alertRules, 0o644)
	test := `rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'node_filesystem_avail_bytes{mountpoint="/volatile",fstype="ext4"}'
        values: '5x10'
      - series: 'node_filesystem_size_bytes{mountpoint="/volatile",fstype="ext4"}'
        values: '100x10'
      # the last success 27 hours before the test's time 0
      - series: 'appliance_backup_last_success_time_seconds'
        values: '-97200x40'
      - series: 'appliance_failed'
        values: '0 0 1 1 1'
      - series: 'appliance_update_last_success'
        values: '1 1 0 0 0'
      # two CPUs, load15 5: 2.5 per CPU
      - series: 'node_load15{instance="n",job="node"}'
        values: '5x30'
      - series: 'node_cpu_seconds_total{instance="n",job="node",cpu="0",mode="idle"}'
        values: '0+60x30'
      - series: 'node_cpu_seconds_total{instance="n",job="node",cpu="1",mode="idle"}'
        values: '0+60x30'
      - series: 'node_memory_MemAvailable_bytes{instance="n",job="node"}'
        values: '5x30'
      - series: 'node_memory_MemTotal_bytes{instance="n",job="node"}'
        values: '100x30'
    alert_rule_test:
      - eval_time: 3m
        alertname: NodeFilesystemFree
        exp_alerts:
          - exp_labels: {severity: critical, mountpoint: /volatile, fstype: ext4}
            exp_annotations: {summary: 'less than 10% free on /volatile'}
      - eval_time: 4m
        alertname: ApplianceFailed
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: {summary: 'the appliance is failed: see the status page and journalctl -u appliance'}
      - eval_time: 4m
        alertname: UpdateFailed
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: {summary: 'the last appliance update failed'}
      - eval_time: 5m
        alertname: BackupTooOld
        exp_alerts: []
      - eval_time: 10m
        alertname: NodeLoadHigh
        exp_alerts: []
      - eval_time: 16m
        alertname: NodeLoadHigh
        exp_alerts:
          - exp_labels: {severity: warning, instance: n, job: node}
            exp_annotations: {summary: 'load15 per CPU is 2.5'}
      - eval_time: 5m
        alertname: NodeMemoryUsageHigh
        exp_alerts: []
      - eval_time: 11m
        alertname: NodeMemoryUsageHigh
        exp_alerts:
          - exp_labels: {severity: warning, instance: n, job: node}
            exp_annotations: {summary: 'memory 95% used'}
      - eval_time: 30m
        alertname: BackupTooOld
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: {summary: 'the last successful backup is older than 26 hours'}
`
	os.WriteFile(filepath.Join(dir, "test.yml"), []byte(test), 0o644)
	cmd := exec.Command(promtool, "test", "rules", "test.yml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// The other rules fire as meant (promtool's rule unit tests, one group of
// series each): NodeRebootsTooOften after a fourth boot in a day, not the
// third; BackupMissing only after 26 hours of uptime without any backup
// metric, and not when a backup reported; ContainerDown after 5 minutes.
func TestAlertRulesFireRebootsBackupMissingContainerDown(t *testing.T) {
	promtool := testenv.Tool(t, "promtool", "apt-get install prometheus (make deps)")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "rules.yml"), alertRules, 0o644)
	test := `rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # a boot (new boot time) every minute
      - series: 'node_boot_time_seconds{instance="n",job="node"}'
        values: '0 60 120 180 240x20'
    alert_rule_test:
      - eval_time: 3m
        alertname: NodeRebootsTooOften
        exp_alerts: []
      - eval_time: 4m
        alertname: NodeRebootsTooOften
        exp_alerts:
          - exp_labels: {severity: warning, instance: n, job: node}
            exp_annotations: {summary: 'n rebooted 4 times in a day'}
      - eval_time: 4m
        alertname: BackupMissing
        exp_alerts: []
  - interval: 1m
    input_series:
      # up 25 h 50 min at time 0: 26 h after 10 min, then 10 min pending
      - series: 'node_boot_time_seconds{instance="n",job="node"}'
        values: '-93000x40'
    alert_rule_test:
      - eval_time: 20m
        alertname: BackupMissing
        exp_alerts: []
      - eval_time: 22m
        alertname: BackupMissing
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: {summary: 'no backup has ever reported in 26 hours of uptime'}
  - interval: 1m
    input_series:
      - series: 'node_boot_time_seconds{instance="n",job="node"}'
        values: '-93000x40'
      - series: 'appliance_backup_last_success_time_seconds'
        values: '0x40'
    alert_rule_test:
      - eval_time: 22m
        alertname: BackupMissing
        exp_alerts: []
  - interval: 1m
    input_series:
      - series: 'appliance_container_running{name="ecs-web-1"}'
        values: '1 1 0x20'
      - series: 'appliance_container_running{name="ecs-redis-1"}'
        values: '1x22'
    alert_rule_test:
      - eval_time: 6m
        alertname: ContainerDown
        exp_alerts: []
      - eval_time: 8m
        alertname: ContainerDown
        exp_alerts:
          - exp_labels: {severity: warning, name: ecs-web-1}
            exp_annotations: {summary: 'container ecs-web-1 is not running'}
`
	os.WriteFile(filepath.Join(dir, "test.yml"), []byte(test), 0o644)
	cmd := exec.Command(promtool, "test", "rules", "test.yml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// fakeEngine serves the two Docker API calls CollectMetrics makes on a
// unix socket (the engine cannot run on the build host).
func fakeEngine(t *testing.T, sock string, containers []map[string]any) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1.41/containers/json", func(w http.ResponseWriter, _ *http.Request) { json.NewEncoder(w).Encode(containers) })
	mux.HandleFunc("/v1.41/containers/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"cpu_stats":{"cpu_usage":{"total_usage":2500000000}},"memory_stats":{"usage":1048576},"networks":{"eth0":{"rx_bytes":10,"tx_bytes":20}}}`)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

func startDaemon(t *testing.T, ready string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", ready); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not listen on %s", name, ready)
}

// Containers from the engine, a real redis and a real memcached: the
// textfile is valid (promtool check metrics) and carries their numbers.
func TestCollectMetrics(t *testing.T) {
	redis := testenv.Tool(t, "redis-server", "apt-get install redis-server (make deps)")
	memcached := testenv.Tool(t, "memcached", "apt-get install memcached (make deps)")
	promtool := testenv.Tool(t, "promtool", "apt-get install prometheus (make deps)")
	startDaemon(t, "127.0.0.31:6379", redis, "--bind", "127.0.0.31", "--port", "6379", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	startDaemon(t, "127.0.0.32:11211", memcached, "-l", "127.0.0.32", "-p", "11211", "-U", "0", "-u", "nobody")

	a, _ := testAgent(t)
	sock := filepath.Join(t.TempDir(), "docker.sock")
	old := DockerSocket
	DockerSocket = sock
	defer func() { DockerSocket = old }()
	if err := os.MkdirAll(filepath.Dir(a.Host.Path(sock)), 0o755); err != nil {
		t.Fatal(err)
	}
	fakeEngine(t, a.Host.Path(sock), []map[string]any{
		{"Id": "r1", "Names": []string{"/ecs-redis-1"}, "Image": "redis", "State": "running",
			"Labels":          map[string]string{"com.docker.compose.service": "redis"},
			"NetworkSettings": map[string]any{"Networks": map[string]any{"ecs_default": map[string]string{"IPAddress": "127.0.0.31"}}}},
		{"Id": "m1", "Names": []string{"/ecs-memcached-1"}, "Image": "memcached", "State": "running",
			"Labels":          map[string]string{"com.docker.compose.service": "memcached"},
			"NetworkSettings": map[string]any{"Networks": map[string]any{"ecs_default": map[string]string{"IPAddress": "127.0.0.32"}}}},
		{"Id": "w1", "Names": []string{"/ecs-web-1"}, "Image": "ecs", "State": "exited",
			"Labels": map[string]string{"com.docker.compose.service": "ecs.web"}},
	})
	if err := a.CollectMetrics(context.Background()); err != nil {
		t.Fatal(err)
	}
	out := read(t, a, ContainerMetrics)
	for _, want := range []string{
		`appliance_docker_up 1`,
		`appliance_container_running{image="ecs",name="ecs-web-1",service="ecs.web"} 0`,
		`appliance_container_running{image="redis",name="ecs-redis-1",service="redis"} 1`,
		`appliance_container_cpu_seconds_total{image="redis",name="ecs-redis-1",service="redis"} 2.5`,
		`appliance_redis_up{addr="127.0.0.31:6379"} 1`,
		`appliance_memcached_up{addr="127.0.0.32:11211"} 1`,
		`appliance_memcached_limit_bytes{addr="127.0.0.32:11211"}`,
		`appliance_redis_connected_clients{addr="127.0.0.31:6379"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in:\n%s", want, out)
		}
	}
	if st := read(t, a, StateMetrics); !strings.Contains(st, "appliance_failed 0") {
		t.Errorf("state:\n%s", st)
	}
	for _, f := range []string{ContainerMetrics, StateMetrics} {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(read(t, a, f))
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics %s: %v\n%s", f, err, b)
		}
	}
}
