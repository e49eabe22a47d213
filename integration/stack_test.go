//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/smtp"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/boottest"
	"github.com/ecs-image/ecs-image/integration/testimage"
)

// storageDisks makes the ecs-data and ecs-volatile volumes (ext4, labelled,
// made on the host without loop devices) and returns the QEMU arguments
// that attach them (vdb, vdc).
func storageDisks(t *testing.T, dir string) []string {
	t.Helper()
	var args []string
	for _, d := range []struct{ label, size string }{{"ecs-data", "1G"}, {"ecs-volatile", "3G"}} {
		f := filepath.Join(dir, d.label+".raw")
		if out, err := exec.Command("mke2fs", "-q", "-t", "ext4", "-L", d.label, "-F", f, d.size).CombinedOutput(); err != nil {
			t.Fatalf("mke2fs %s: %v\n%s", d.label, err, out)
		}
		args = append(args, "-drive", "file="+f+",format=raw,if=virtio")
	}
	return args
}

// stackServices are the declared stack's services (templates/files/ecs/docker-compose.yml).
var stackServices = []string{"ecs.web", "ecs.worker", "ecs.beat", "ecs.smtpd", "redis", "memcached", "pdfas", "mocca"}

// httpsDo sends one request to the guest's nginx (forwarded port).
func httpsDo(port int, host, method, path string, body []byte) (int, string, error) {
	tr := boottest.Transport(boottest.Loopback(port), host)
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(method, "https://"+host+path, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), nil
}

// sendMail delivers one message through stunnel: SMTPS (465) or SMTP with
// STARTTLS (25), both handed to the smtpd stand-in.
func sendMail(port int, implicitTLS bool, host, subject string) error {
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	tc := &tls.Config{InsecureSkipVerify: true, ServerName: host}
	var c *smtp.Client
	if implicitTLS {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", addr, tc)
		if err != nil {
			return err
		}
		conn.SetDeadline(time.Now().Add(time.Minute))
		if c, err = smtp.NewClient(conn, host); err != nil {
			return err
		}
	} else {
		conn, err := net.DialTimeout("tcp", addr, 30*time.Second)
		if err != nil {
			return err
		}
		conn.SetDeadline(time.Now().Add(time.Minute))
		if c, err = smtp.NewClient(conn, host); err != nil {
			return err
		}
		if err := c.StartTLS(tc); err != nil {
			return fmt.Errorf("STARTTLS: %w", err)
		}
	}
	defer c.Close()
	if err := c.Mail("sender@example.org"); err != nil {
		return err
	}
	if err := c.Rcpt("ecs@" + host); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "From: sender@example.org\r\nTo: ecs@%s\r\nSubject: %s\r\n\r\nhello\r\n", host, subject)
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// waitHealth polls the web stand-in's /health through nginx until every
// backend answers.
func waitHealth(t *testing.T, port int, host string) map[string]any {
	t.Helper()
	var last string
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(3 * time.Second) {
		status, body, err := httpsDo(port, host, "GET", "/health", nil)
		last = fmt.Sprintf("%d %v %s", status, err, body)
		if err == nil && status == 200 {
			var h map[string]any
			if json.Unmarshal([]byte(body), &h) == nil {
				return h
			}
		}
	}
	t.Fatalf("/health: %s", last)
	return nil
}

// checkStack: the stack's services, volumes, data placement, uploads and
// mail, and that they survive `systemctl restart appliance`.
// It returns the uploaded document.
func checkStack(t *testing.T, run func(*testing.T, string) string, vm *applianceVM, domain string) []byte {
	port := vm.m.HostPort(443)
	doc := []byte("%PDF-1.4 ecs stand-in upload " + time.Now().UTC().Format(time.RFC3339Nano) + "\n")
	sum := sha256.Sum256(doc)
	docSum := hex.EncodeToString(sum[:])

	// Where the first boot's time went (logged for docs/e2e.md): the agent's
	// steps and systemd's view of the boot.
	t.Run("first-boot-where-time-goes", func(t *testing.T) {
		t.Log(run(t, `systemd-analyze 2>&1 | head -3; echo
journalctl -b -o short-monotonic --no-pager -u docker -u prepare-env -u prepare-appliance -u prepare-ecs -u appliance 2>/dev/null | grep -E 'done in|activated|concurrently|ECS-APPLIANCE|docker load|Started|Stopp|declared stack|verified|loaded|API listen|/storage: |/postgresql: |/migrate: |waiting for' | cut -c1-200 | head -100; echo
# dockerd's own start (its steps under emulation).
journalctl -b -o short-monotonic --no-pager -u docker -u containerd 2>/dev/null | grep -vE 'level=debug|loading plugin|skip loading' | cut -c1-180 | head -40; echo
journalctl -b -o short-monotonic --no-pager -u postgresql@17-main -u postgresql 2>/dev/null | cut -c1-160 | head -20; echo
# The containers' creation and start (UTC), against the guest clock (uptime).
for c in $(docker ps -aq); do docker inspect --format '{{.Name}} created {{.Created}} started {{.State.StartedAt}}' $c; done; date -u +'now %FT%T.%N'; cat /proc/uptime
systemctl show -p ActiveEnterTimestampMonotonic basic.target; echo
journalctl -b -o short-monotonic --no-pager -u appliance 2>/dev/null | grep -iE ' (Created|Started|Running|Container)' | head -30 | cut -c1-160
systemd-analyze blame 2>/dev/null | head -15; echo
# CPU per unit at prepare-env's end and at ready (the agent's report):
# under TCG the guest's two vCPUs are the limit.
journalctl -b --no-pager -o short-monotonic -u prepare-env -u appliance 2>/dev/null | grep 'CPU since'; echo
journalctl -b -o short-monotonic --no-pager -u cloud-init-main -u cloud-init-network -u cloud-config -u cloud-final 2>/dev/null | grep -E 'Start|Finish' | cut -c1-160
cloud-init analyze blame 2>/dev/null | head -25; echo
# One iptables run as dockerd makes ~45 of them at its start (seconds).
for i in 1 2 3; do s=$(date +%s%N); iptables -w -t filter -C FORWARD -j DOCKER-USER 2>/dev/null; echo "iptables run: $(( ($(date +%s%N) - s) / 1000000 )) ms"; done; true`))
	})

	t.Run("stack-services-running", func(t *testing.T) {
		// Ready means the web service answers; the agent starts it (and
		// what it links) first and the rest of the stack right after, so
		// the others are given a minute to be running.
		var out string
		var notRunning []string
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(2 * time.Second) {
			out = run(t, "docker ps --format '{{.Label \"com.docker.compose.service\"}} {{.State}}'")
			notRunning = nil
			for _, s := range stackServices {
				if !strings.Contains(out, s+" running\n") {
					notRunning = append(notRunning, s)
				}
			}
			if len(notRunning) == 0 || time.Now().After(deadline) {
				break
			}
		}
		for _, s := range notRunning {
			t.Errorf("service %s is not running within a minute:\n%s", s, out)
		}
		if v := run(t, "docker compose version --short 2>/dev/null || docker-compose version --short"); !strings.HasPrefix(strings.TrimSpace(v), "2.") {
			t.Errorf("Compose %q, want v2", v)
		}
	})

	t.Run("stack-web-reaches-postgres-redis-memcached", func(t *testing.T) {
		h := waitHealth(t, port, domain)
		if h["postgres"] != "ok" || h["redis"] != "ok" || h["memcached"] != "ok" || h["database"] != "ecs" {
			t.Errorf("/health: %v", h)
		}
		if h["collation"] != "de_DE.UTF-8" {
			t.Errorf("the database's collation is %v, want de_DE.UTF-8", h["collation"])
		}
	})

	t.Run("stack-data-on-the-volumes", func(t *testing.T) {
		out := run(t, `findmnt -n -o SOURCE /data; findmnt -n -o SOURCE /volatile
runuser -u postgres -- psql -tAc 'SHOW data_directory'
runuser -u postgres -- psql -tAc "SELECT datcollate FROM pg_database WHERE datname='ecs'"
docker info --format '{{.DockerRootDir}}'
readlink /app/etc /app/ecs-ca /app/ecs-gpg`)
		want := "/dev/vdb\n/dev/vdc\n/data/postgresql/17/main\nde_DE.UTF-8\n/volatile/docker\n/data/etc\n/data/ecs-ca\n/data/ecs-gpg\n"
		if out != want {
			t.Errorf("data placement:\n%s\nwant\n%s", out, want)
		}
	})

	t.Run("stack-volume-table", func(t *testing.T) {
		mounts := func(svc string) string {
			return run(t, fmt.Sprintf(`docker inspect --format '{{range .Mounts}}{{.Source}}:{{.Destination}}:{{.RW}} {{end}}' $(docker ps -q --filter label=com.docker.compose.service=%s)`, svc))
		}
		for _, svc := range []string{"ecs.web", "ecs.worker"} {
			m := mounts(svc)
			for _, v := range []string{"/data/ecs-storage-vault:/app/ecs-storage-vault:true", "/data/ecs-ca:/app/ecs-ca:true",
				"/data/ecs-gpg:/app/ecs-gpg:true", "/volatile/ecs-cache:/app/ecs-cache:true"} {
				if !strings.Contains(m, v) {
					t.Errorf("%s mounts %q, want %s", svc, m, v)
				}
			}
		}
		for _, svc := range []string{"pdfas", "mocca"} {
			if m := mounts(svc); !strings.Contains(m, "/app/etc/server.cert.pem:/app/import/server.cert.pem:false") {
				t.Errorf("%s mounts %q, want the certificate read-only", svc, m)
			}
		}
		if m := mounts("redis"); !strings.Contains(m, "/volatile/redis:/data:true") {
			t.Errorf("redis mounts %q", m)
		}
		t.Logf("ecs.web: %s", mounts("ecs.web"))
	})

	t.Run("stack-pdfas-mocca-behind-nginx", func(t *testing.T) {
		for _, p := range []string{"/pdf-as-web/", "/bkuonline/"} {
			status, body, err := httpsDo(port, domain, "GET", p, nil)
			if err != nil || status != 200 || !strings.Contains(body, "hostname="+domain+" cert="+domain) {
				t.Errorf("GET %s: %d %v %q", p, status, err, body)
			}
		}
	})

	t.Run("stack-upload-lands-on-ecs-data", func(t *testing.T) {
		status, body, err := httpsDo(port, domain, "PUT", "/upload/e2e-doc.pdf", doc)
		if err != nil || status != 200 || !strings.Contains(body, docSum) {
			t.Fatalf("upload: %d %v %q", status, err, body)
		}
		out := run(t, "sha256sum /data/ecs-storage-vault/e2e-doc.pdf | cut -d' ' -f1; findmnt -n -o SOURCE -T /data/ecs-storage-vault/e2e-doc.pdf")
		if out != docSum+"\n/dev/vdb\n" {
			t.Errorf("on the guest: %q, want %s on /dev/vdb", out, docSum)
		}
	})

	t.Run("stack-mail-reaches-smtpd", func(t *testing.T) {
		if err := sendMail(vm.m.HostPort(465), true, domain, "e2e smtps"); err != nil {
			t.Errorf("SMTPS (465): %v", err)
		}
		if err := sendMail(vm.m.HostPort(25), false, domain, "e2e starttls"); err != nil {
			t.Errorf("SMTP with STARTTLS (25): %v", err)
		}
		_, body, err := httpsDo(port, domain, "GET", "/mails", nil)
		if err != nil || !strings.Contains(body, "Subject: e2e smtps") || !strings.Contains(body, "Subject: e2e starttls") {
			t.Errorf("/mails: %v %s", err, body)
		}
	})

	t.Run("stack-survives-restart", func(t *testing.T) {
		run(t, "systemctl restart appliance.service")
		waitHealth(t, port, domain)
		// The containers stopped on their SIGTERM: none was denied it
		// (AppArmor: docker-default must admit runc's signals) or killed
		// after the 10 s grace.
		if out := run(t, `journalctl -b --no-pager -o cat -u docker | grep -c 'failed to exit within' || true; journalctl -b -k --no-pager -o cat | grep -c 'apparmor="DENIED" operation="signal"' || true`); out != "0\n0\n" {
			t.Errorf("containers did not stop on SIGTERM (dockerd's kills after the grace, AppArmor's signal denials): %q", out)
		}
		status, body, err := httpsDo(port, domain, "GET", "/vault/e2e-doc.pdf", nil)
		if err != nil || status != 200 || body != string(doc) {
			t.Errorf("the upload after a restart: %d %v %q", status, err, body)
		}
		if _, body, err := httpsDo(port, domain, "GET", "/mails", nil); err != nil || !strings.Contains(body, "Subject: e2e smtps") {
			t.Errorf("the mail after a restart: %v %s", err, body)
		}
	})
	return doc
}

// checkStackDeploy pushes a new web image (the stand-in, version 2) with
// the deploy API's stack deployment "ecs" and checks that the stack runs
// it and kept the upload and the mail.
func checkStackDeploy(t *testing.T, vm *applianceVM, domain string, doc []byte, deploy func(tarball string)) {
	port := vm.m.HostPort(443)
	t.Run("stack-survives-deploy-of-a-new-web-image", func(t *testing.T) {
		bin, err := testimage.BuildStandin(context.Background(), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		tarball := filepath.Join(t.TempDir(), "ecs-standin-v2.tar")
		if err := testimage.Write(tarball, bin, testimage.Standins("2")[0].Options); err != nil {
			t.Fatal(err)
		}
		deploy(tarball)
		var body string
		for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(3 * time.Second) {
			var status int
			status, body, err = httpsDo(port, domain, "GET", "/", nil)
			if err == nil && status == 200 && strings.Contains(body, "version=2") {
				break
			}
		}
		if !strings.Contains(body, "ecs-standin web version=2") {
			t.Fatalf("the new web image does not answer: %q", body)
		}
		h := waitHealth(t, port, domain)
		if h["version"] != "2" || h["postgres"] != "ok" || h["redis"] != "ok" || h["memcached"] != "ok" {
			t.Errorf("/health after the deploy: %v", h)
		}
		if status, got, err := httpsDo(port, domain, "GET", "/vault/e2e-doc.pdf", nil); err != nil || status != 200 || got != string(doc) {
			t.Errorf("the upload after the deploy: %d %v %q", status, err, got)
		}
		if _, got, err := httpsDo(port, domain, "GET", "/mails", nil); err != nil || !strings.Contains(got, "Subject: e2e smtps") {
			t.Errorf("the mail after the deploy: %v %s", err, got)
		}
	})
}
