package prepare

import (
	"context"
	"fmt"
	"path"
	"regexp"
	"strings"
	"sync"

	"github.com/ecs-image/ecs-image/contract"
)

// DBLocale is the database's locale (administration manual: createdb -l
// de_DE.utf8), used when the image generated it (/etc/locale.gen).
const DBLocale = "de_DE.UTF-8"

var dataDirRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?m)^[ \t]*data_directory[ \t]*=[ \t]*'([^']*)'.*$`) })

// pgDataDir moves the cluster configured in confDir
// (/etc/postgresql/<version>/main) to /data/postgresql/<version>/main, on
// the ecs-data volume when one is attached: at the first boot (or with a
// new, empty volume) the image's cluster is copied there, and
// postgresql.conf's data_directory points to it. An existing cluster on
// /data is used as it is. It returns whether the configuration changed.
func (a *Agent) pgDataDir(ctx context.Context, confDir string) (bool, error) {
	version := path.Base(path.Dir(confDir))
	target := path.Join(contract.PostgreSQLDir, version, "main")
	confFile := confDir + "/postgresql.conf"
	conf, err := a.Host.ReadFile(confFile)
	m := dataDirRE().FindSubmatchIndex(conf)
	if err != nil || m == nil {
		a.logf("prepare-appliance/postgresql: no data_directory in %s; the cluster stays where it is", confFile)
		return false, nil
	}
	current := string(conf[m[2]:m[3]])
	if !a.Host.Exists(target + "/PG_VERSION") {
		if current == target || !a.Host.Exists(current+"/PG_VERSION") {
			a.logf("prepare-appliance/postgresql: no cluster in %s to move to %s; left to PostgreSQL", current, target)
			return false, nil
		}
		// The cluster must not run while it is copied (it does not at the
		// first boot: the image leaves postgresql disabled).
		if a.Host.Exists(fmt.Sprintf("/run/postgresql/%s-main.pid", version)) {
			if err := a.systemctl(ctx, "stop", "postgresql@"+version+"-main.service"); err != nil {
				return false, err
			}
		}
		if err := a.Host.MkdirAll(path.Dir(target), 0o755); err != nil {
			return false, err
		}
		tmp := target + ".copying"
		if _, err := a.Host.Run(ctx, "rm", "-rf", a.Host.Path(tmp)); err != nil {
			return false, err
		}
		// Sparse: the WAL segment initdb left is mostly zeros (16 MiB
		// written to the volume at every first boot otherwise).
		if _, err := a.Host.Run(ctx, "cp", "-a", "--sparse=always", a.Host.Path(current), a.Host.Path(tmp)); err != nil {
			return false, fmt.Errorf("copying the PostgreSQL cluster to %s: %w", target, err)
		}
		if _, err := a.Host.Run(ctx, "mv", "-T", a.Host.Path(tmp), a.Host.Path(target)); err != nil {
			return false, err
		}
		a.logf("prepare-appliance/postgresql: cluster %s/main copied from %s to %s", version, current, target)
	}
	if current == target {
		return false, nil
	}
	line := fmt.Sprintf("data_directory = '%s'\t\t# ecs-agent: the runtime layout's /data/postgresql", target)
	newConf := append(append(append([]byte{}, conf[:m[0]]...), line...), conf[m[1]:]...)
	if _, err := a.Host.WriteFile(confFile, newConf, 0o644); err != nil {
		return false, err
	}
	return true, nil
}

// dbLocaleSQL is the locale clause of CREATE DATABASE: DBLocale when the
// image generates it, else the cluster's default (logged).
func (a *Agent) dbLocaleSQL() string {
	gen, _ := a.Host.ReadFile("/etc/locale.gen")
	for _, l := range strings.Split(string(gen), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == DBLocale {
			return fmt.Sprintf(" LC_COLLATE ''%[1]s'' LC_CTYPE ''%[1]s''", DBLocale)
		}
	}
	a.logf("prepare-appliance/postgresql: %s is not generated in this image (/etc/locale.gen); the database gets the cluster's locale", DBLocale)
	return ""
}
