// Package prepare implements the appliance boot chain run by the agent's
// systemd units: prepare-env (find and activate env.yml), prepare-appliance
// (host services), prepare-ecs (container images and compose file),
// appliance (the compose stack in the foreground), cleanup and the failure
// handler. Every step is idempotent; files are rendered from embedded
// templates and written atomically; external commands go through the
// host's Runner.
package prepare

import "github.com/ecs-image/ecs-image/contract"

// In-appliance paths (all resolved under the agent's --root).
const (
	ActiveEnv        = "/run/active-env.yml"
	ActiveEnvSource  = "/run/active-env.source"
	ActiveEnvShell   = "/run/active-env.env"         // flattened, shell/systemd EnvironmentFile syntax
	ActiveEnvCompose = "/run/active-env.compose.env" // same variables, docker-compose env_file syntax

	AppDir       = contract.AppDir
	AppEtc       = contract.AppEtc
	TagsDir      = "/app/etc/tags"
	FlagsDir     = "/app/etc/flags"
	HooksDir     = "/app/etc/hooks"
	ImagesDir    = contract.ImagesDir
	ImagesIndex  = contract.ImagesIndex
	ComposeFile  = contract.ComposeFile
	ServerCert   = contract.ServerCert
	ServerKey    = contract.ServerKey
	DatabaseEnv  = contract.DatabaseEnv
	DKIMKey      = "/etc/dkimkeys/dkim.key"
	DKIMRecord   = "/app/etc/dkim.dns.txt"
	NginxSite    = "/etc/nginx/sites-available/ecs-appliance"
	NginxEnabled = "/etc/nginx/sites-enabled/ecs-appliance"
	// NginxSyslog is journald's syslog socket: the appliance's site logs
	// there, so `journalctl -u nginx` shows its requests (manual §4.7).
	NginxSyslog = "/dev/log"
	StunnelConf = "/etc/stunnel/ecs.conf"
	// Postfix's configuration files and queue directory.
	PostfixMainCf   = "/etc/postfix/main.cf"
	PostfixMasterCf = "/etc/postfix/master.cf"
	PostfixQueueDir = "/var/spool/postfix"
	// StunnelUnitFile is Debian's stunnel4 template unit; StunnelWantsLink
	// enables its instance stunnel@ecs.service.
	StunnelUnitFile  = "/lib/systemd/system/stunnel@.service"
	StunnelWantsLink = "/etc/systemd/system/multi-user.target.wants/stunnel@ecs.service"
	OpenDKIMConf     = "/etc/opendkim.conf"
	DeployConfig     = "/etc/ecs-agent/config.json"

	// MigrateHook is run by prepare-ecs (when ecs.migrate.auto is not false)
	// with the active environment, after the images are loaded.
	MigrateHook = "/app/etc/hooks/migrate"
	// ForceLoadFlag makes prepare-ecs reload every image; it is removed after use.
	ForceLoadFlag = "/app/etc/flags/force.load.images"

	// WebPort is the loopback port the web container is published on and
	// nginx proxies to.
	WebPort = 18000
	// ComposeProject is the docker-compose project name (containers are
	// named ecs_<service>_1, as in the manual).
	ComposeProject = "ecs"
	// FlattenKeys are the env.yml trees exported to units and containers.
	FlattenKeys = "ecs,appliance"
)
