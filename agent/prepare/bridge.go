package prepare

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"strings"
)

// DefaultBridgeCIDR is docker0's address and network when
// /etc/docker/daemon.json sets no "bip".
const DefaultBridgeCIDR = "172.17.0.1/16"

// DockerDaemonConfig is dockerd's configuration file.
const DockerDaemonConfig = "/etc/docker/daemon.json"

// dockerBridge returns the host's address on docker's default bridge and
// the bridge's network (CIDR): "bip" of daemon.json, else Docker's
// default. The ecs containers run on this bridge (network_mode: bridge, as
// in the original appliance) and reach PostgreSQL and postfix at its
// address; nothing else may.
func (a *Agent) dockerBridge() (ip, subnet string) {
	cidr := DefaultBridgeCIDR
	if data, err := a.Host.ReadFile(DockerDaemonConfig); err == nil {
		var cfg struct {
			BIP string `json:"bip"`
		}
		if json.Unmarshal(data, &cfg) == nil && cfg.BIP != "" {
			if i, _, err := net.ParseCIDR(cfg.BIP); err == nil && i.To4() != nil {
				cidr = cfg.BIP
			} else {
				a.logf("prepare-appliance: %s: bip %q is not an IPv4 CIDR; using %s", DockerDaemonConfig, cfg.BIP, DefaultBridgeCIDR)
			}
		}
	}
	i, n, _ := net.ParseCIDR(cidr)
	return i.String(), n.String()
}

// NonlocalBindConf lets PostgreSQL and postfix bind the bridge address
// before dockerd has created docker0 (at boot they start before it).
const NonlocalBindConf = "/etc/sysctl.d/60-ecs-nonlocal-bind.conf"

// stepNonlocalBind sets net.ipv4.ip_nonlocal_bind (now, and at every boot
// by systemd-sysctl) so that services can listen on the docker bridge
// address whether or not docker0 exists yet.
func (a *Agent) stepNonlocalBind(ctx context.Context, e *Env) error {
	const setting = "net.ipv4.ip_nonlocal_bind"
	if _, err := a.Host.WriteFile(NonlocalBindConf, []byte("# Written by ecs-agent: PostgreSQL and postfix listen on the docker bridge\n# address, which exists only once dockerd runs.\n"+setting+" = 1\n"), 0o644); err != nil {
		return err
	}
	const proc = "/proc/sys/net/ipv4/ip_nonlocal_bind"
	if cur, err := a.Host.ReadFile(proc); err == nil && strings.TrimSpace(string(cur)) == "1" {
		return nil
	}
	// Written directly (a process less on the first boot's path), else
	// by sysctl.
	if err := os.WriteFile(a.Host.Path(proc), []byte("1\n"), 0o644); err == nil {
		return nil
	}
	_, err := a.Host.Run(ctx, "sysctl", "-q", "-w", setting+"=1")
	return err
}

// hbaDisabled prefixes the pg_hba.conf rules the agent turned off.
const hbaDisabled = "#ecs-agent: "

// disableHostRules comments out the TCP rules of pg_hba.conf outside the
// agent's managed block (the package's 127.0.0.1/32 and ::1/128 rules):
// PostgreSQL admits TCP clients from the docker bridge only, and local
// clients over its Unix socket.
func disableHostRules(hba string) string {
	lines := strings.SplitAfter(hba, "\n")
	managed := false
	for i, l := range lines {
		switch strings.TrimSpace(l) {
		case "# BEGIN ecs-agent pg_hba":
			managed = true
		case "# END ecs-agent pg_hba":
			managed = false
		}
		f := strings.Fields(l)
		if managed || len(f) == 0 {
			continue
		}
		switch f[0] {
		case "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc":
			lines[i] = hbaDisabled + l
		}
	}
	return strings.Join(lines, "")
}
