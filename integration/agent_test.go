//go:build integration

package integration

import (
	"archive/tar"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/boottest"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/integration/testimage"
)

// TestAgentInGuest runs the real ecs-agent inside the local Debian base
// (real systemd, real devices, real serial console), without the appliance
// packages: prepare-env finds the cidata seed cloud-init used, systemd reads
// the flattened env file, the unit chain reaches standby and failed states
// (OnFailure handler, console markers on the host's serial log), and the
// push-deploy API answers the host's `ecs-image deploy` over mutual TLS.
// The full appliance (nginx, PostgreSQL, Docker) is the end-to-end suite's.
func TestAgentInGuest(t *testing.T) {
	const domain = "agent-it.example.org"
	// The data volume of the manual §2.3: an ext4 filesystem labelled
	// ecs-data, made on the host without loop devices, attached as vdb.
	dataDisk := filepath.Join(t.TempDir(), "ecs-data.raw")
	if out, err := exec.CommandContext(t.Context(), "mke2fs", "-q", "-t", "ext4", "-L", "ecs-data", "-F", dataDisk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
	g := bootBase(t, bootOptions{
		Name: "agent-it", Size: 6 << 30, Timeout: 25 * time.Minute, Forwards: []int{8866},
		Env: true, UserData: "appliance:\n  domain: " + domain + "\necs:\n  settings: |\n    SECRET_KEY = 'a$b\"c'\n    DEBUG = False\n",
		ExtraArgs: []string{"-drive", "file=" + dataDisk + ",format=raw,if=virtio"},
	})
	ctx, c, m, dir, serial := g.Ctx, g.C, g.M, g.Dir, g.Serial
	root := func(cmd string) string { t.Helper(); return g.Root(t, cmd) }
	put := func(remote, content string, mode os.FileMode) { t.Helper(); g.Put(t, remote, content, mode) }
	waitSerial := func(marker string) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			data, _ := os.ReadFile(serial)
			if strings.Contains(string(data), marker) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %q on the serial console; tail:\n%s", marker, m.SerialTail(30))
			}
			time.Sleep(time.Second)
		}
	}

	// Install like the builder's agent provisioner; systemd checks the units.
	if err := c.Upload(ctx, ecsAgentPath(), "/usr/local/bin/ecs-agent", communicator.UploadOptions{Mode: 0o755, Sudo: true}); err != nil {
		t.Fatal(err)
	}
	root("ecs-agent install-units && systemctl daemon-reload")
	if out, err := c.Output(ctx, "cd /etc/systemd/system && systemd-analyze verify prepare-env.service prepare-appliance.service prepare-ecs.service appliance.service appliance-cleanup.service ecs-agent-deploy.service 'appliance-failed@x.service' 2>&1", true); err != nil || strings.Contains(out, "/etc/systemd/system/") {
		t.Errorf("systemd-analyze verify in the guest: %v\n%s", err, out)
	}
	if out := root("systemctl is-enabled appliance.service ecs-agent-deploy.service"); out != "enabled\nenabled\n" {
		t.Errorf("is-enabled: %q", out)
	}

	// prepare-env finds the seed on the CD-ROM, by label, without mounting.
	start := time.Now()
	root("ecs-agent version")
	t.Logf("ecs-agent version took %s (TCG)", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if out, err := c.Output(ctx, "ecs-agent prepare-env 2>&1", true); err != nil {
		t.Fatalf("prepare-env: %v\n%s", err, out)
	} else {
		t.Logf("prepare-env took %s (TCG):\n%s", time.Since(start).Round(time.Millisecond), out)
	}
	if src := root("cat /run/active-env.source"); !strings.HasPrefix(src, "cidata:/dev/") || !strings.Contains(src, "(iso9660)") {
		t.Errorf("source %q", src)
	}
	if out := root("stat -c %a /run/active-env.yml /run/active-env.env"); out != "600\n600\n" {
		t.Errorf("modes %q", out)
	}
	if got := root("cat /run/active-env.yml"); got != g.UserData {
		t.Errorf("active env differs from the seed's user-data:\n%s", got)
	}
	if out := root("grep -c ' /media\\| /mnt' /proc/mounts || true"); strings.TrimSpace(out) != "0" {
		t.Errorf("something is mounted: %s", out)
	}
	// systemd's EnvironmentFile= reads the flattened env like bash does.
	want := "SECRET_KEY = 'a$b\"c'\nDEBUG = False"
	if got := root(`systemd-run --quiet --wait --pipe -p EnvironmentFile=/run/active-env.env /bin/sh -c 'printf %s "$ECS_SETTINGS"'`); got != want {
		t.Errorf("systemd EnvironmentFile: %q, want %q", got, want)
	}
	if got := root(`bash -c 'set -a; . /run/active-env.env; printf %s "$ECS_SETTINGS"'`); got != want {
		t.Errorf("bash: %q, want %q", got, want)
	}

	// Storage (manual §2.3). A volume asked for but missing fails the chain
	// naming its label, before anything is mounted; storage.setup is ignored
	// with a warning.
	storageEnv := "#cloud-config\nappliance:\n  domain: " + domain + "\n  storage:\n    setup: |\n      proxy_cache: true\n" +
		"    ignore:\n      data: false\n      volatile: %s\n"
	put("/app/env.yml", strings.Replace(storageEnv, "%s", "false", 1), 0o600)
	out, err := c.Output(ctx, "ecs-agent prepare-env 2>&1 && ecs-agent prepare-appliance 2>&1", true)
	if err == nil || !strings.Contains(out, "prepare-env: appliance.storage.setup: not supported by this image") {
		t.Errorf("prepare-appliance without ecs-volatile: %v\n%s", err, out)
	}
	waitSerial(boottest.Failed + ": prepare-appliance/storage: appliance.storage.ignore.volatile is false, but no filesystem labelled ecs-volatile was found")
	if out := root("ecs-agent status; findmnt -n /data || echo not-mounted"); !strings.Contains(out, "labelled ecs-volatile") || !strings.HasSuffix(out, "not-mounted\n") {
		t.Errorf("after the missing volume: %s", out)
	}
	root("rm /run/appliance-failed")
	// ecs-data is mounted on /data before the layout is made on it. (The
	// bare base has no nginx: the chain then stops at the nginx step.)
	put("/app/env.yml", strings.Replace(storageEnv, "%s", "true", 1), 0o600)
	out, err = c.Output(ctx, "ecs-agent prepare-env 2>&1 && ecs-agent prepare-appliance 2>&1", true)
	if !strings.Contains(out, "mounted /dev/vdb (label ecs-data) on /data") || !strings.Contains(out, "prepare-appliance/tls: running") {
		t.Errorf("prepare-appliance with ecs-data: %v\n%s", err, out)
	}
	if got := root("findmnt -n -o SOURCE,FSTYPE,LABEL /data; findmnt -n -o TARGET -T /app/etc/server.cert.pem; grep -c '^LABEL=ecs-data\t/data\t' /etc/fstab"); strings.Join(strings.Fields(got), " ") != "/dev/vdb ext4 ecs-data /data 1" {
		t.Errorf("/data: %q", got)
	}
	root("rm -f /run/appliance-failed")

	// A compose stack that keeps failing: appliance.service's restart
	// settings (a copy without the prepare units, faster restarts) give up
	// after the third failed run, with the reason on the console.
	put("/usr/local/bin/docker-compose", "#!/bin/sh\necho 'ERROR: simulated compose failure' >&2\nexit 1\n", 0o755)
	put("/app/docker-compose.yml", "services:\n  web:\n    ports: [\"127.0.0.1:18000:8000\"]\n", 0o644)
	root("sed -e '/^Requires=/d' -e '/^Wants=/d' -e '/^After=/d' -e '/^OnFailure=/d' -e 's/^RestartSec=.*/RestartSec=1/' " +
		"/etc/systemd/system/appliance.service > /run/systemd/system/appliance-it.service && systemctl daemon-reload && " +
		"systemctl start --no-block appliance-it.service")
	start = time.Now()
	waitSerial(boottest.Failed + ": appliance: 3 consecutive failed runs, giving up; last: before ready: docker-compose: exit status 1: ERROR: simulated compose failure")
	t.Logf("compose failures recorded after %s (TCG)", time.Since(start).Round(time.Second))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
		got := root("systemctl show -p ActiveState -p NRestarts -p ExecMainStatus appliance-it.service")
		if strings.Contains(got, "ActiveState=failed") {
			if !strings.Contains(got, "NRestarts=2") || !strings.Contains(got, "ExecMainStatus=3") {
				t.Errorf("appliance-it.service: %q", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("appliance-it.service still restarting: %q", got)
		}
	}
	if out := root("cat /run/appliance-failed; ecs-agent status"); !strings.Contains(out, "simulated compose failure") || !strings.Contains(out, `"state": "failed"`) {
		t.Errorf("failed state: %s", out)
	}
	root("rm /run/appliance-failed /run/systemd/system/appliance-it.service /usr/local/bin/docker-compose /app/docker-compose.yml && " +
		"systemctl daemon-reload && systemctl reset-failed")

	// Standby through the real unit chain: /app/env.yml wins over the seed.
	root("mkdir -p /app && printf '#cloud-config\\nappliance:\\n  domain: " + domain + "\\n  standby: true\\n' > /app/env.yml")
	root("systemctl start appliance.service")
	waitSerial(boottest.Standby)
	if out := root("ecs-agent status"); !strings.Contains(out, `"state": "standby"`) {
		t.Errorf("status in standby: %s", out)
	}
	if out, _ := c.Output(ctx, "systemctl is-active prepare-env.service appliance.service", true); out != "active\ninactive\n" {
		t.Errorf("units in standby: %q", out)
	}

	// An invalid env.yml: the chain fails, the OnFailure handler records it.
	root("printf '#cloud-config\\nappliance:\\n  standby: false\\n' > /app/env.yml")
	if out, err := c.Output(ctx, "systemctl restart appliance.service", true); err == nil || !strings.Contains(err.Error(), "appliance.service") {
		t.Errorf("restart with an invalid env.yml: %v (want systemctl's failure naming appliance.service)\n%s", err, out)
	}
	waitSerial(boottest.Failed + ": prepare-env: invalid env.yml")
	out = root("cat /run/appliance-failed; ecs-agent status")
	if !strings.Contains(out, "appliance.domain") || !strings.Contains(out, `"state": "failed"`) {
		t.Errorf("failed state: %s", out)
	}
	if out := root("systemctl list-units --all --no-legend 'appliance-failed@*'"); !strings.Contains(out, "appliance-failed@prepare-env.service.service") {
		t.Errorf("OnFailure handler did not run: %q", out)
	}
	// The flag blocks restarts until removed (exit 3 from prepare-env).
	if code, _ := c.Run(ctx, "ecs-agent prepare-env", communicator.RunOptions{Sudo: true}); code != 3 {
		t.Errorf("prepare-env with the failed flag: exit %d", code)
	}
	root("rm /run/appliance-failed /app/env.yml")

	// Push-deploy API: the installed unit, mutual TLS from the host.
	pkiDir := filepath.Join(dir, "pki")
	os.MkdirAll(pkiDir, 0o700)
	clientCA, clientCAKey := itCA(t, "deploy clients")
	serverCA, serverCAKey := itCA(t, "appliance servers")
	srvCert, srvKey := itIssue(t, serverCA, serverCAKey, domain, true)
	cliCert, cliKey := itIssue(t, clientCA, clientCAKey, "operator", false)
	otherCA, otherCAKey := itCA(t, "intruders")
	badCert, badKey := itIssue(t, otherCA, otherCAKey, "intruder", false)
	files := map[string][]byte{
		"server.crt": srvCert, "server.key": srvKey, "ca.crt": itPEM(clientCA),
		"config.json": []byte(`{"deployments": [{"name": "website", "args": ["-p", "8080:80"]}]}`),
	}
	for name, data := range files {
		p := filepath.Join(pkiDir, name)
		os.WriteFile(p, data, 0o600)
		if err := c.Upload(ctx, p, "/etc/ecs-agent/"+name, communicator.UploadOptions{Mode: 0o600, Sudo: true}); err != nil {
			t.Fatal(err)
		}
	}
	local := func(name string, data []byte) string {
		p := filepath.Join(pkiDir, "local-"+name)
		os.WriteFile(p, data, 0o600)
		return p
	}
	serverCAFile := local("server-ca.crt", itPEM(serverCA))
	good := []string{"--cert", local("client.crt", cliCert), "--key", local("client.key", cliKey), "--ca", serverCAFile, "--server-name", domain}
	bad := []string{"--cert", local("bad.crt", badCert), "--key", local("bad.key", badKey), "--ca", serverCAFile, "--server-name", domain}
	root("systemctl start ecs-agent-deploy.service")
	hostAddr := "127.0.0.1:" + strconv.Itoa(m.HostPort(8866))
	var list string
	deadline := time.Now().Add(time.Minute)
	for {
		o, e, err := ecsImageRun(append([]string{"deploy", hostAddr, "-", "--action", "status"}, good...)...)
		if err == nil {
			list = o
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deploy status: %v\n%s\n%s", err, e, root("journalctl -u ecs-agent-deploy --no-pager | tail -20"))
		}
		time.Sleep(2 * time.Second)
	}
	var sts []map[string]any
	if err := json.Unmarshal([]byte(list), &sts); err != nil || len(sts) != 1 || sts[0]["name"] != "website" || sts[0]["container"] != "ed_website" {
		t.Errorf("deployments: %v %s", err, list)
	}
	if _, e, err := ecsImageRun(append([]string{"deploy", hostAddr, "-", "--action", "status"}, bad...)...); exitCode(err) != 1 || !strings.Contains(e, "remote error: tls: certificate required") {
		// The client offers only a certificate whose issuer the server
		// names as acceptable: none here, so the server ends the handshake.
		t.Errorf("a client certificate from another CA: %v, want exit 1 on the server's TLS alert certificate required:\n%s", err, e)
	}
	// A traversal tarball is refused by the agent before Docker is involved.
	var evil bytes.Buffer
	tw := tar.NewWriter(&evil)
	tw.WriteHeader(&tar.Header{Name: "../../etc/cron.d/x", Mode: 0o644, Size: 1})
	tw.Write([]byte("x"))
	tw.Close()
	evilPath := local("evil.tar", evil.Bytes())
	_, e, err := ecsImageRun(append([]string{"deploy", hostAddr, "website", evilPath}, good...)...)
	if exitCode(err) != 2 || !strings.Contains(e, "bad image archive") || !strings.Contains(e, "cron.d/x") || !strings.Contains(e, "in path") {
		t.Errorf("traversal upload: %v, want exit 2 and the agent's refusal of the entry (bad image archive: entry \"../../etc/cron.d/x\": \"..\" in path):\n%s", err, e)
	}
	if out := root("journalctl -u ecs-agent-deploy --no-pager"); !strings.Contains(out, `client "operator"`) {
		t.Errorf("audit log lacks the client CN:\n%s", out)
	}
}

func itCA(t *testing.T, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func itIssue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{cn}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func itPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// TestAgentFullChain installs the appliance's host packages into the local
// Debian base from the mirror, bakes the test container image like the
// builder does (/app/images + manifest.json) and boots the real chain with
// systemd: nginx (503 page, then proxy), PostgreSQL (tuned, role and
// database), postfix + opendkim, stunnel, docker load + docker-compose up,
// the ready marker, the compose env_file as Debian's docker-compose reads
// it, and a push-deploy of a new image version from the host.
//
// It installs the full host package set (~8 min of apt under TCG on an idle
// machine, far more on a loaded one), so it runs only with ECS_IT_AGENT_FULL=1;
// TestAppliance covers the same chain on a built appliance.
func TestAgentFullChain(t *testing.T) {
	if os.Getenv("ECS_IT_AGENT_FULL") != "1" {
		t.Skip("set ECS_IT_AGENT_FULL=1 to install the appliance package set into the base and run the whole chain")
	}
	const domain = "chain-it.example.org"
	clientCA, clientCAKey := itCA(t, "deploy clients")
	cliCert, cliKey := itIssue(t, clientCA, clientCAKey, "operator", false)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	dkim := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)})
	settings := "DOMAIN = '" + domain + "'\nSECRET_KEY = 'x$y\\'z\"w'\n"
	userData := "appliance:\n  domain: " + domain + "\n  allowed_hosts: " + domain + " localhost\n" +
		"  extra:\n    files:\n      - path: /etc/ecs-extra.conf\n        contents: |\n          hello\n        permissions: \"0640\"\n" +
		"  dkim:\n    key: |\n" + itIndent(string(dkim), 6) +
		"  deploy:\n    client_ca: |\n" + itIndent(string(itPEM(clientCA)), 6) +
		"    deployments:\n      - name: website\n        args: [\"-p\", \"8081:8080\"]\n" +
		"ecs:\n  settings: |\n" + itIndent(settings, 4)
	g := bootBase(t, bootOptions{
		Name: "chain-it", Size: 8 << 30, Timeout: 90 * time.Minute, Memory: 2048, Forwards: []int{443, 8866},
		Env: true, UserData: userData, SSHTimeout: 15 * time.Minute,
	})
	ctx, c, m, dir, serial := g.Ctx, g.C, g.M, g.Dir, g.Serial
	root := func(cmd string) string { t.Helper(); return g.Root(t, cmd) }
	journal := func() string {
		out, _ := c.Output(ctx, "journalctl -b --no-pager -u prepare-env -u prepare-appliance -u prepare-ecs -u appliance -u ecs-agent-deploy | tail -60", true)
		return out
	}

	// Host packages from the Debian mirror, as the template's system stage.
	start := time.Now()
	root("echo 'postfix postfix/main_mailer_type select Internet Site' | debconf-set-selections && " +
		"echo 'postfix postfix/mailname string localhost' | debconf-set-selections && " +
		"DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && " +
		"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx postgresql stunnel4 postfix opendkim docker.io docker-compose curl >/dev/null 2>&1")
	t.Logf("packages installed in %s", time.Since(start).Round(time.Second))

	// The agent and the baked image, as the builder's agent and containers provisioners place them.
	if err := c.Upload(ctx, ecsAgentPath(), "/usr/local/bin/ecs-agent", communicator.UploadOptions{Mode: 0o755, Sudo: true}); err != nil {
		t.Fatal(err)
	}
	root("ecs-agent install-units && systemctl daemon-reload")
	img := filepath.Join(dir, "testapp.tar")
	if err := testimage.Build(ctx, img, testimage.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Upload(ctx, img, "/app/images/testapp.tar", communicator.UploadOptions{Mode: 0o644, Sudo: true}); err != nil {
		t.Fatal(err)
	}
	man := filepath.Join(dir, "manifest.json")
	os.WriteFile(man, []byte(`[{"file": "testapp.tar", "tags": ["`+testimage.DefaultTag+`"]}]`+"\n"), 0o644)
	if err := c.Upload(ctx, man, "/app/images/manifest.json", communicator.UploadOptions{Mode: 0o644, Sudo: true}); err != nil {
		t.Fatal(err)
	}

	// The chain, started like at boot.
	start = time.Now()
	if out, err := c.Output(ctx, "systemctl start appliance.service 2>&1", true); err != nil {
		t.Fatalf("systemctl start appliance: %v\n%s\n%s\nserial:\n%s", err, out, journal(), m.SerialTail(20))
	}
	t.Logf("chain to ready: %s (TCG)", time.Since(start).Round(time.Second))
	if data, _ := os.ReadFile(serial); !strings.Contains(string(data), boottest.Ready) {
		t.Errorf("no ready marker on the serial console")
	}
	if out := root("ecs-agent status"); !strings.Contains(out, `"state": "ready"`) {
		t.Errorf("status: %s", out)
	}
	if out := root("curl -sk https://localhost/"); !strings.HasPrefix(out, "ecs-testapp version=1 host=localhost proto=https") {
		t.Errorf("https://localhost/: %q\n%s", out, journal())
	}
	if out := root("curl -s -o /dev/null -w '%{http_code}' http://localhost/"); out != "301" {
		t.Errorf("http redirect: %s", out)
	}
	if out, _ := c.Output(ctx, "systemctl is-active nginx postgresql stunnel@ecs postfix opendkim ecs-agent-deploy appliance-cleanup 2>&1", true); strings.Count(out, "active\n") != 7 || strings.Contains(out, "inactive") || strings.Contains(out, "failed") {
		t.Errorf("services: %q", out)
	}
	if out := root("ss -ltnH | awk '{print $4}'"); !strings.Contains(out, ":25\n") || !strings.Contains(out, ":465\n") || !strings.Contains(out, ":10025\n") || !strings.Contains(out, ":8891\n") || !strings.Contains(out, "127.0.0.1:18000\n") {
		t.Errorf("listening sockets:\n%s", out)
	}
	// PostgreSQL: tuned, role and database, the URL works.
	conf := root("cat /etc/postgresql/15/main/conf.d/ecs-agent.conf")
	if out := root("runuser -u postgres -- psql -Atc 'show shared_buffers'"); !strings.Contains(conf, "shared_buffers = "+strings.TrimSpace(out)+"\n") {
		t.Errorf("shared_buffers %q not from the agent's tuning:\n%s", out, conf)
	}
	if out := root(`. /app/etc/database_url.env && psql "$(echo $DATABASE_URL | sed s/host.docker.internal/127.0.0.1/)" -Atc 'select current_user, current_database()'`); out != "ecs|ecs\n" {
		t.Errorf("database url: %q", out)
	}
	// The container got the env through docker-compose's env_file.
	envJSON := root("docker inspect ecs_testapp_1 --format '{{json .Config.Env}}'")
	var cenv []string
	json.Unmarshal([]byte(envJSON), &cenv)
	found := map[string]string{}
	for _, kv := range cenv {
		k, v, _ := strings.Cut(kv, "=")
		found[k] = v
	}
	if found["ECS_SETTINGS"] != strings.TrimSpace(settings) || !strings.HasPrefix(found["DATABASE_URL"], "postgres://ecs:") || found["APPLIANCE_DOMAIN"] != domain {
		t.Errorf("container env: ECS_SETTINGS=%q DATABASE_URL set=%v APPLIANCE_DOMAIN=%q", found["ECS_SETTINGS"], found["DATABASE_URL"] != "", found["APPLIANCE_DOMAIN"])
	}
	if out := root("stat -c '%a' /etc/ecs-extra.conf /etc/dkimkeys/dkim.key /app/etc/server.key.pem"); out != "640\n600\n600\n" {
		t.Errorf("modes: %q", out)
	}

	// Push-deploy from the host with the appliance's own certificate as CA.
	srvCert := filepath.Join(dir, "server.cert.pem")
	if err := c.Download(ctx, "/app/etc/server.cert.pem", srvCert); err != nil {
		t.Fatal(err)
	}
	cf, kf := filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	os.WriteFile(cf, cliCert, 0o600)
	os.WriteFile(kf, cliKey, 0o600)
	v2 := filepath.Join(dir, "site-v2.tar")
	if err := testimage.Build(ctx, v2, testimage.Options{Tags: []string{"ecs/site:v2"}, Version: "2"}); err != nil {
		t.Fatal(err)
	}
	hostAddr := "127.0.0.1:" + strconv.Itoa(m.HostPort(8866))
	tlsArgs := []string{"--cert", cf, "--key", kf, "--ca", srvCert, "--server-name", domain}
	out := ecsImage(t, append([]string{"deploy", hostAddr, "website", v2}, tlsArgs...)...)
	if !strings.Contains(out, `"running": true`) {
		t.Errorf("deploy v2: %s", out)
	}
	if out := root("curl -s http://127.0.0.1:8081/"); !strings.HasPrefix(out, "ecs-testapp version=2") {
		t.Errorf("deployed v2 answers %q", out)
	}
	v3 := filepath.Join(dir, "site-v3.tar")
	testimage.Build(ctx, v3, testimage.Options{Tags: []string{"ecs/site:v3"}, Version: "3"})
	ecsImage(t, append([]string{"deploy", hostAddr, "website", v3}, tlsArgs...)...)
	if out := root("curl -s http://127.0.0.1:8081/; docker ps -a --format '{{.Names}}' | grep -c ed_website"); !strings.HasPrefix(out, "ecs-testapp version=3") || !strings.HasSuffix(out, "\n1\n") {
		t.Errorf("after v3: %q", out)
	}

	// Restart: the chain runs again, idempotently, and comes back up.
	root("systemctl restart appliance.service")
	if out := root("curl -sk https://localhost/"); !strings.HasPrefix(out, "ecs-testapp version=1") {
		t.Errorf("after restart: %q", out)
	}
	if data, _ := os.ReadFile(serial); strings.Count(string(data), boottest.Ready) < 2 {
		t.Errorf("no second ready marker")
	}
}

func itIndent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString(pad + l + "\n")
	}
	return b.String()
}
