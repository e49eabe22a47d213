package prepare

import (
	"context"
	"slices"
	"strings"
	"testing"
)

func postconfLines(cmds []string) []string {
	var out []string
	for _, c := range cmds {
		if strings.HasPrefix(c, "postconf ") {
			out = append(out, c)
		}
	}
	return out
}

// PostgreSQL listens on the loopback and the docker bridge address only and
// admits the ecs role from the bridge's network only; postfix relays for
// the loopback and the bridge and listens on 10025 on those two addresses;
// both may bind the bridge address before docker0 exists.
func TestServicesListenOnLoopbackAndBridgeOnly(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	// Debian's pg_hba.conf: its TCP rules are turned off.
	debian := "local   all             postgres                                peer\nlocal   all             all                                     peer\n" +
		"host    all             all             127.0.0.1/32            scram-sha-256\nhost    all             all             ::1/128                 scram-sha-256\n" +
		"local   replication     all                                     peer\nhost    replication     all             127.0.0.1/32            scram-sha-256\n"
	put(t, a, "/etc/postgresql/15/main/pg_hba.conf", []byte(debian), 0o640)
	put(t, a, PostfixMainCf, []byte("# Debian\nmyhostname = debian\nmynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104\n  [::1]/128\ninet_interfaces = all\n"), 0o644)
	put(t, a, PostfixMasterCf, []byte("# service type  private unpriv  chroot  wakeup  maxproc command + args\n"+
		"smtp      inet  n       -       y       -       -       smtpd\n  -o smtpd_sasl_auth_enable=no\n"+
		"pickup    unix  n       -       y       60      1       pickup\n"), 0o644)
	activate(t, a, clientCertEnv)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rec.Recorded(), "systemctl restart postfix.service") {
		t.Errorf("postfix not restarted after its configuration changed: %q", rec.Recorded())
	}
	rec.Commands = nil
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rec.Recorded(), "systemctl start postfix.service") {
		t.Errorf("postfix restarted although its configuration is unchanged: %q", rec.Recorded())
	}
	conf := read(t, a, "/etc/postgresql/15/main/conf.d/ecs-agent.conf")
	if !strings.Contains(conf, "\nlisten_addresses = 'localhost,172.17.0.1'\n") || strings.Contains(conf, "'*'") {
		t.Errorf("postgresql conf:\n%s", conf)
	}
	hba := read(t, a, "/etc/postgresql/15/main/pg_hba.conf")
	var hosts []string
	for _, l := range strings.Split(hba, "\n") {
		if f := strings.Fields(l); len(f) > 0 && (f[0] == "host" || f[0] == "hostssl" || f[0] == "hostnossl") {
			hosts = append(hosts, strings.Join(f, " "))
		}
	}
	if !slices.Equal(hosts, []string{"host ecs ecs 172.17.0.0/16 scram-sha-256"}) {
		t.Errorf("pg_hba host lines %q:\n%s", hosts, hba)
	}
	if strings.Count(hba, "\nlocal ") != 2 || strings.Count(hba, hbaDisabled+"host ") != 3 || strings.Count(hba, hbaDisabled+hbaDisabled) != 0 {
		t.Errorf("pg_hba local rules kept, TCP rules off once:\n%s", hba)
	}
	if pc := postconfLines(rec.Recorded()); len(pc) > 0 {
		t.Errorf("postconf ran (the agent edits main.cf and master.cf itself): %q", pc)
	}
	mainCf, masterCf := read(t, a, PostfixMainCf), read(t, a, PostfixMasterCf)
	if !strings.Contains(mainCf, "\nmynetworks = 127.0.0.0/8 [::1]/128 172.17.0.0/16\n") ||
		strings.Contains(mainCf, "192.168.0.0/16") || strings.Contains(mainCf, "172.16.0.0/12") || strings.Contains(mainCf, "::ffff") {
		t.Errorf("main.cf:\n%s", mainCf)
	}
	for _, want := range []string{
		"\n#smtp      inet  n       -       y       -       -       smtpd\n#  -o smtpd_sasl_auth_enable=no\n",
		"\n127.0.0.1:10025 inet  n       -       y       -       -       smtpd\n172.17.0.1:10025 inet  n       -       y       -       -       smtpd\n",
	} {
		if !strings.Contains(masterCf, want) {
			t.Errorf("master.cf lacks %q:\n%s", want, masterCf)
		}
	}
	if s := read(t, a, NonlocalBindConf); !strings.Contains(s, "\nnet.ipv4.ip_nonlocal_bind = 1\n") {
		t.Errorf("sysctl conf:\n%s", s)
	}
	if !slices.Contains(rec.Recorded(), "sysctl -q -w net.ipv4.ip_nonlocal_bind=1") {
		t.Error("ip_nonlocal_bind not set now")
	}
	// Already set: no sysctl run.
	put(t, a, "/proc/sys/net/ipv4/ip_nonlocal_bind", []byte("1\n"), 0o644)
	rec.Commands = nil
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(rec.Recorded(), func(c string) bool { return strings.HasPrefix(c, "sysctl") }) {
		t.Errorf("sysctl ran again: %q", rec.Recorded())
	}
}

// daemon.json's bip moves the bridge; an open 10025 entry of an earlier
// agent is removed from master.cf.
func TestBridgeFromDaemonJSONAndOldPostfixEntry(t *testing.T) {
	a, _ := testAgent(t)
	fakeSystem(t, a)
	put(t, a, DockerDaemonConfig, []byte(`{"data-root": "/volatile/docker", "bip": "10.99.0.1/24"}`), 0o644)
	put(t, a, PostfixMasterCf, []byte("#smtp      inet  n       -       y       -       -       smtpd\n10025      inet  n       -       y       -       -       smtpd\n"), 0o644)
	activate(t, a, clientCertEnv)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if conf := read(t, a, "/etc/postgresql/15/main/conf.d/ecs-agent.conf"); !strings.Contains(conf, "listen_addresses = 'localhost,10.99.0.1'") {
		t.Errorf("postgresql conf:\n%s", conf)
	}
	if hba := read(t, a, "/etc/postgresql/15/main/pg_hba.conf"); !strings.Contains(hba, " 10.99.0.0/24 ") {
		t.Errorf("pg_hba:\n%s", hba)
	}
	mainCf, masterCf := read(t, a, PostfixMainCf), read(t, a, PostfixMasterCf)
	if !strings.Contains(mainCf, "mynetworks = 127.0.0.0/8 [::1]/128 10.99.0.0/24\n") {
		t.Errorf("main.cf:\n%s", mainCf)
	}
	if want := "#smtp      inet  n       -       y       -       -       smtpd\n127.0.0.1:10025 inet  n       -       y       -       -       smtpd\n10.99.0.1:10025 inet  n       -       y       -       -       smtpd\n"; masterCf != want {
		t.Errorf("master.cf:\n%s\nwant (the open 10025 entry removed):\n%s", masterCf, want)
	}
	if ip, n := a.dockerBridge(); ip != "10.99.0.1" || n != "10.99.0.0/24" {
		t.Errorf("bridge %s %s", ip, n)
	}
	put(t, a, DockerDaemonConfig, []byte(`{"bip": "fd00::1/64"}`), 0o644)
	if ip, n := a.dockerBridge(); ip != "172.17.0.1" || n != "172.17.0.0/16" {
		t.Errorf("IPv6 bip: bridge %s %s", ip, n)
	}
}
