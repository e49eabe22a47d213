package prepare

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/testenv"
)

// The whole alert chain on the host, with the real programs the image
// carries: Debian's node exporter (with the appliance's arguments) sees a
// real small ext4 filesystem filled up under /mnt; Prometheus (with the
// appliance's prometheus.yml and ecs-alert.rules.yml, rendered by the
// agent's code) fires NodeFilesystemFree and a custom rule from the custom
// rules directory; Alertmanager (with the appliance's alertmanager.yml)
// mails both to root@localhost over plain SMTP, as it does to the
// appliance's postfix. The mail sink is a small SMTP server in the test (in
// the VM it is postfix: TestAppliance's metrics check). Only the addresses
// and the timings are the test's own: intervals of 1 s and
// NodeFilesystemFree's `for` shortened in the rules' copy, Prometheus'
// resend delay 2 s, so that the chain takes seconds instead of minutes.
func TestAlertMailedEndToEnd(t *testing.T) {
	nodeExporter := testenv.Tool(t, "prometheus-node-exporter", "apt-get install prometheus-node-exporter (make deps)")
	prometheus := testenv.Tool(t, "prometheus", "apt-get install prometheus (make deps)")
	alertmanager := testenv.Tool(t, "prometheus-alertmanager", "apt-get install prometheus-alertmanager (make deps)")
	mkfs := testenv.Tool(t, "mkfs.ext4", "apt-get install e2fsprogs (make deps)")
	testenv.Root(t, "mounting a small filesystem for NodeFilesystemFree")
	dir := t.TempDir()

	// A real filesystem, full, where the manual mounts the backup target
	// (/mnt; Debian's exporter leaves /mnt out by default).
	mnt := mountFullExt4(t, mkfs, dir)

	sink := startSMTPSink(t)
	nodeAddr, promAddr, amAddr := freeAddr(t), freeAddr(t), freeAddr(t)

	textfiles := filepath.Join(dir, "textfile")
	os.MkdirAll(textfiles, 0o755)
	args := exporters[0].Args
	for old, new := range map[string]string{"127.0.0.1:9100": nodeAddr, MetricsDir: textfiles} {
		if !strings.Contains(args, old) {
			t.Fatalf("the node exporter's arguments lack %s: %s", old, args)
		}
		args = strings.ReplaceAll(args, old, new)
	}
	startLogged(t, nodeAddr, nodeExporter, strings.Fields(args)...)

	// The appliance's rules, NodeFilesystemFree's `for` shortened, and a
	// custom rule in the custom rules directory.
	const forProd = "        for: 1m\n        labels: {severity: critical}\n        annotations:\n          summary: 'less than 10% free on {{ $labels.mountpoint }}'"
	if strings.Count(string(alertRules), forProd) != 1 {
		t.Fatalf("NodeFilesystemFree's for: 1m not found in the rules:\n%s", alertRules)
	}
	rules := filepath.Join(dir, "ecs-alert.rules.yml")
	os.WriteFile(rules, []byte(strings.Replace(string(alertRules), forProd, strings.Replace(forProd, "for: 1m", "for: 2s", 1), 1)), 0o644)
	customDir := filepath.Join(dir, "prometheus-rules.d")
	os.MkdirAll(customDir, 0o755)
	os.WriteFile(filepath.Join(customDir, "site.rules.yml"), []byte(`groups:
  - name: site
    rules:
      - alert: SiteAlwaysFiring
        expr: vector(1)
        labels: {severity: warning}
        annotations: {summary: 'a custom rule from prometheus-rules.d'}
`), 0o644)

	c := applianceServerConfig("alert.ecs.test")
	c.AlertmanagerAddr = amAddr
	c.RulesFile = rules
	c.CustomRules = filepath.Join(customDir, filepath.Base(PromCustomRules))
	c.Targets = []metricService{{Job: "node", Addr: nodeAddr}}
	c.Smarthost = sink.addr
	c.alertTimings = alertTimings{Scrape: "1s", Evaluation: "1s", GroupWait: "1s", GroupInterval: "1s", RepeatInterval: "1h"}
	if c.MailTo != "root@localhost" || !strings.HasSuffix(applianceServerConfig("x").Smarthost, fmt.Sprintf(":%d", PostfixPort)) {
		t.Fatalf("the appliance's alert mail does not go to root through postfix: %+v", applianceServerConfig("x"))
	}
	prom, am, err := renderServerConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	promConf, amConf := filepath.Join(dir, "prometheus.yml"), filepath.Join(dir, "alertmanager.yml")
	os.WriteFile(promConf, prom, 0o644)
	os.WriteFile(amConf, am, 0o644)

	// Alertmanager with the appliance's arguments but its addresses.
	amArgs := strings.ReplaceAll(servers[1].Args, servers[1].Addr, amAddr)
	amArgs = strings.ReplaceAll(amArgs, AlertConfig, amConf)
	startLogged(t, amAddr, alertmanager, append(strings.Fields(amArgs), "--storage.path="+filepath.Join(dir, "am"))...)
	promArgs := strings.ReplaceAll(servers[0].Args, servers[0].Addr, promAddr)
	promArgs = strings.ReplaceAll(promArgs, PromConfig, promConf)
	// An alert that fires before Prometheus has found Alertmanager is sent
	// again after --rules.alert.resend-delay (1 m by default): 2 s here.
	startLogged(t, promAddr, prometheus, append(strings.Fields(promArgs),
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--rules.alert.resend-delay=2s")...)

	want := map[string]string{"NodeFilesystemFree": mnt, "SiteAlwaysFiring": "a custom rule from prometheus-rules.d"}
	start := time.Now()
	deadline := start.Add(90 * time.Second)
	for len(want) > 0 && time.Now().Before(deadline) {
		select {
		case m := <-sink.mails:
			if m.from != "alertmanager@alert.ecs.test" || len(m.to) != 1 || m.to[0] != "root@localhost" || m.helo != "alert.ecs.test" {
				t.Errorf("mail envelope: HELO %q, MAIL FROM %q, RCPT TO %q", m.helo, m.from, m.to)
			}
			for name, text := range want {
				if strings.Contains(m.data, name) && strings.Contains(m.data, text) {
					t.Logf("%s mailed to root %.1f s after Prometheus started (%d bytes)", name, time.Since(start).Seconds(), len(m.data))
					delete(want, name)
				}
			}
		case <-time.After(time.Second):
		}
	}
	if len(want) > 0 {
		t.Errorf("no mail for %v within 90 s; Prometheus' alerts: %s\nAlertmanager's: %s",
			want, httpGet(t, "http://"+promAddr+"/api/v1/alerts"), httpGet(t, "http://"+amAddr+"/api/v2/alerts"))
	}

	// Every metric the node rules read comes from the exporter as the
	// appliance runs it (NodeLoadHigh needs the cpu collector).
	for _, q := range []string{"node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_memory_MemAvailable_bytes",
		"node_memory_MemTotal_bytes", "node_load15", `node_cpu_seconds_total{mode="idle"}`, "node_boot_time_seconds"} {
		body := httpGet(t, "http://"+promAddr+"/api/v1/query?query="+url.QueryEscape("count("+q+")"))
		var r struct {
			Data struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if json.Unmarshal([]byte(body), &r) != nil || len(r.Data.Result) == 0 {
			t.Errorf("%s: not exported by the node exporter as the appliance runs it: %s", q, body)
		}
	}
}

// mountFullExt4 mounts a new 8 MiB ext4 filesystem in a new directory under
// /mnt and fills it; it is unmounted when the test ends.
func mountFullExt4(t *testing.T, mkfs, dir string) string {
	t.Helper()
	img := filepath.Join(dir, "fill.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	mnt, err := os.MkdirTemp("/mnt", "ecs-alert-test-")
	if err != nil {
		testenv.Missing(t, "a mount point under /mnt: %v", err)
	}
	t.Cleanup(func() { os.Remove(mnt) })
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		testenv.Missing(t, "loop-mounting a filesystem image: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	f, err := os.Create(filepath.Join(mnt, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := 0; i < 16; i++ {
		if _, err := f.Write(buf); err != nil {
			break // full
		}
	}
	f.Close()
	return mnt
}

// startLogged starts a daemon, waits until it listens on addr, and logs its
// output when the test fails.
func startLogged(t *testing.T, addr, name string, args ...string) {
	t.Helper()
	var out syncBuffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("%s %s:\n%s", filepath.Base(name), strings.Join(args, " "), out.String())
		}
	})
	for i := 0; i < 300; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("%s exited:\n%s", name, out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not listen on %s:\n%s", name, addr, out.String())
}

func httpGet(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// smtpMail is one message the sink received.
type smtpMail struct {
	helo, from string
	to         []string
	data       string
}

type smtpSink struct {
	addr  string
	mails chan smtpMail
}

// startSMTPSink serves plain SMTP (no STARTTLS, no AUTH) on the loopback
// and passes every message it accepts on mails.
func startSMTPSink(t *testing.T) *smtpSink {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s := &smtpSink{addr: l.Addr().String(), mails: make(chan smtpMail, 32)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

func (s *smtpSink) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	reply := func(line string) { fmt.Fprintf(c, "%s\r\n", line) }
	reply("220 sink ESMTP")
	var m smtpMail
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		arg := strings.TrimSpace(strings.TrimPrefix(line, line[:len(verb)]))
		switch verb {
		case "EHLO", "HELO":
			m.helo = arg
			if verb == "EHLO" {
				reply("250-sink")
				reply("250 8BITMIME")
			} else {
				reply("250 sink")
			}
		case "MAIL":
			m.from = angle(arg)
			reply("250 ok")
		case "RCPT":
			m.to = append(m.to, angle(arg))
			reply("250 ok")
		case "DATA":
			reply("354 go on")
			var data strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if strings.TrimRight(l, "\r\n") == "." {
					break
				}
				data.WriteString(strings.TrimPrefix(l, "."))
			}
			// Undo the quoted-printable soft line breaks and "=" escapes.
			m.data = strings.NewReplacer("=\r\n", "", "=\n", "", "=3D", "=").Replace(data.String())
			s.mails <- m
			m = smtpMail{helo: m.helo}
			reply("250 queued")
		case "RSET":
			m = smtpMail{helo: m.helo}
			reply("250 ok")
		case "NOOP":
			reply("250 ok")
		case "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 not implemented")
		}
	}
}

// angle is the address in <...> of a MAIL FROM or RCPT TO argument.
func angle(arg string) string {
	i, j := strings.IndexByte(arg, '<'), strings.IndexByte(arg, '>')
	if i < 0 || j < i {
		return arg
	}
	return arg[i+1 : j]
}
