package prepare

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/contract"
)

// PrepareAppliance configures the host services from the active env.yml.
// The steps up to nginx (the status page) and the extra files and packages
// run in order; then PostgreSQL, mail (postfix, opendkim, then stunnel,
// which must not take port 25 first), the deploy API and the preloading of
// the container images run concurrently: each waits mostly for its own
// service to start, which under emulation takes seconds to tens of seconds.
func (a *Agent) PrepareAppliance(ctx context.Context) error {
	a.tlsChanged, a.pgMoved = false, false
	return a.runChain(ctx, "prepare-appliance", []Step{
		{Name: "storage", Run: a.stepStorage},
		{Name: "layout", Run: a.stepLayout},
		// The PostgreSQL cluster's copy to /data (first boot: seconds of
		// I/O) beside the host's set-up, which does not touch it.
		{Name: "host", Branches: [][]Step{
			{
				{Name: "hostname", Run: a.stepHostname},
				{Name: "ssh", Run: a.stepSSH},
				{Name: "tls", Run: a.stepTLS},
				{Name: "client-ca", Run: a.stepClientCA},
				{Name: "nginx", Run: a.stepNginx},
				{Name: "extra-files", Run: a.stepExtraFiles},
				{Name: "extra-packages", Run: a.stepExtraPackages},
				{Name: "nonlocal-bind", Run: a.stepNonlocalBind},
			},
			{{Name: "postgresql-data", Run: a.stepPostgresData}},
		}},
		{Name: "services", Branches: [][]Step{
			{{Name: "postgresql", Run: a.stepPostgres}, {Name: "metrics", Run: a.stepMetrics}},
			{{Name: "mail", Run: a.stepMail}, {Name: "stunnel", Run: a.stepStunnel}},
			{{Name: "deploy-api", Run: a.stepDeployAPI}},
			{{Name: "vault-keys", Run: a.stepVaultKeys}},
			{{Name: "images", Run: a.stepPreloadImages}},
			{{Name: "timers", Run: a.stepTimers}},
		}},
	})
}

func (a *Agent) systemctl(ctx context.Context, args ...string) error {
	_, err := a.Host.Run(ctx, "systemctl", args...)
	return err
}

// reloadOrStart reloads unit when its configuration changed, else makes
// sure it runs.
func (a *Agent) reloadOrStart(ctx context.Context, unit string, changed bool) error {
	if changed {
		return a.systemctl(ctx, "reload-or-restart", unit)
	}
	return a.systemctl(ctx, "start", unit)
}

// stepLayout creates the runtime layout of the manual (§6.4): /data and
// /volatile trees, /app/etc and friends as symlinks into them (an existing
// real directory, e.g. one baked into the image, is kept).
func (a *Agent) stepLayout(ctx context.Context, e *Env) error {
	dirs := append(append([]string{contract.DataDir, contract.VolatileDir}, contract.DataDirs...), contract.VolatileDirs...)
	for _, d := range append(dirs, AppDir) {
		if err := a.Host.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, l := range contract.Links {
		if st, err := os.Lstat(a.Host.Path(l.Link)); err == nil && st.IsDir() {
			continue // a real directory baked into the image
		}
		if _, err := a.Host.Symlink(l.Target, l.Link); err != nil {
			return err
		}
	}
	for _, d := range []string{TagsDir, FlagsDir, HooksDir} {
		if err := a.Host.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// stepHostname sets the hostname to appliance.domain: /etc/hostname,
// a managed /etc/hosts line, and the running hostname when it changed.
func (a *Agent) stepHostname(ctx context.Context, e *Env) error {
	fqdn := e.Doc.Domain()
	if !validHostname(fqdn) {
		return fmt.Errorf("appliance.domain %q is not a valid host name", fqdn)
	}
	short, _, _ := strings.Cut(fqdn, ".")
	changed, err := a.Host.WriteFile("/etc/hostname", []byte(fqdn+"\n"), 0o644)
	if err != nil {
		return err
	}
	hosts, _ := a.Host.ReadFile("/etc/hosts")
	line := "127.0.1.1\t" + fqdn
	if short != fqdn {
		line += " " + short
	}
	newHosts := replaceManagedBlock(string(hosts), "hosts", line+"\n")
	if _, err := a.Host.WriteFile("/etc/hosts", []byte(newHosts), 0o644); err != nil {
		return err
	}
	if changed {
		// /etc/hostname is the static name; hostname(1) sets the running
		// kernel's. hostnamectl would do the same through D-Bus activation
		// of systemd-hostnamed, seconds slower under emulation.
		if _, err := a.Host.Run(ctx, "hostname", fqdn); err != nil {
			return err
		}
	}
	return nil
}

func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// replaceManagedBlock replaces (or appends) the "# BEGIN ecs-agent <name>"
// … "# END ecs-agent <name>" block of text with body.
func replaceManagedBlock(text, name, body string) string {
	begin := "# BEGIN ecs-agent " + name + "\n"
	end := "# END ecs-agent " + name + "\n"
	block := begin + body + end
	if i := strings.Index(text, begin); i >= 0 {
		if j := strings.Index(text[i:], end); j >= 0 {
			return text[:i] + block + text[i+j+len(end):]
		}
	}
	if text != "" && !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	return text + block
}

func (a *Agent) stepNginx(ctx context.Context, e *Env) error {
	names := []string{e.Doc.Domain()}
	for _, h := range strings.Fields(e.Str("appliance.allowed_hosts")) {
		if validHostname(h) && !contains(names, h) {
			names = append(names, h)
		}
	}
	var clientCA, clientCRL string
	if a.Host.Exists(ClientCACert) && a.Host.Exists(ClientCACRL) {
		clientCA, clientCRL = ClientCACert, ClientCACRL
	}
	verify := "optional"
	if e.Bool("appliance.ssl.client_certs_mandatory", false) {
		verify = "on"
	}
	conf, err := render("nginx-site.conf.tmpl", map[string]any{
		"ClientCA":     clientCA,
		"ClientCRL":    clientCRL,
		"VerifyClient": verify,
		"StatusPage":   status.StatusPage,
		"StateFile":    status.StateFile,
		"WebRoot":      path.Dir(status.StatusPage),
		"WebPort":      a.webPort(),
		"Proxies":      a.stackProxies(),
		"ServerNames":  strings.Join(names, " "),
		"Cert":         ServerCert,
		"Key":          ServerKey,
		"MaxBody":      "200m",
		"ACMEWebroot":  ACMEWebroot,
		"Syslog":       NginxSyslog,
	})
	if err != nil {
		return err
	}
	changed, err := a.Host.WriteFile(NginxSite, conf, 0o644)
	if err != nil {
		return err
	}
	if a.Host.Exists(FallbackEnabled) {
		if err := a.removeFallbackSite(); err != nil {
			return err
		}
		changed = true
	}
	lchanged, err := a.Host.Symlink(NginxSite, NginxEnabled)
	if err != nil {
		return err
	}
	if a.Host.Exists("/etc/nginx/sites-enabled/default") {
		if err := a.Host.Remove("/etc/nginx/sites-enabled/default"); err != nil {
			return err
		}
		changed = true
	}
	if changed || lchanged {
		if _, err := a.Host.Run(ctx, "nginx", "-t", "-q"); err != nil {
			return fmt.Errorf("nginx configuration test: %w", err)
		}
	}
	return a.reloadOrStart(ctx, "nginx.service", changed || lchanged || a.tlsChanged)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ExtraFile is one entry of appliance.extra.files.
type ExtraFile struct {
	Path        string `yaml:"path"`
	Contents    string `yaml:"contents"`
	Owner       string `yaml:"owner"`
	Permissions string `yaml:"permissions"`
}

func (a *Agent) stepExtraFiles(ctx context.Context, e *Env) error {
	var files []ExtraFile
	if err := e.Decode("appliance.extra.files", &files); err != nil {
		return err
	}
	for i, f := range files {
		where := fmt.Sprintf("appliance.extra.files[%d]", i)
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || strings.Contains(f.Path, "..") {
			return fmt.Errorf("%s.path: %q must be a clean absolute path", where, f.Path)
		}
		mode := fs.FileMode(0o644)
		if f.Permissions != "" {
			m, err := strconv.ParseUint(f.Permissions, 8, 32)
			if err != nil || m > 0o7777 {
				return fmt.Errorf("%s.permissions: %q is not an octal mode", where, f.Permissions)
			}
			mode = fs.FileMode(m)
		}
		changed, err := a.Host.WriteFile(f.Path, []byte(f.Contents), mode)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if f.Owner != "" && changed {
			if strings.ContainsAny(f.Owner, " \t\n") || strings.HasPrefix(f.Owner, "-") {
				return fmt.Errorf("%s.owner: %q is not user[:group]", where, f.Owner)
			}
			if _, err := a.Host.Run(ctx, "chown", f.Owner, f.Path); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
	}
	return nil
}

func (a *Agent) stepExtraPackages(ctx context.Context, e *Env) error {
	var pkgs []string
	if err := e.Decode("appliance.extra.packages", &pkgs); err != nil {
		return err
	}
	var missing []string
	for _, p := range pkgs {
		if p == "" || strings.HasPrefix(p, "-") || strings.ContainsAny(p, " \t\n/") {
			return fmt.Errorf("appliance.extra.packages: %q is not a package name", p)
		}
		out, err := a.Host.Run(ctx, "dpkg-query", "-W", "-f=${Status}", p)
		if err != nil || !strings.Contains(string(out), "install ok installed") {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	a.logf("prepare-appliance/extra-packages: installing %s", strings.Join(missing, " "))
	aptEnv := []string{"DEBIAN_FRONTEND=noninteractive"}
	if _, err := a.Host.RunCmd(ctx, host.Cmd{Name: "apt-get", Args: []string{"update", "-q"}, Env: aptEnv}); err != nil {
		return err
	}
	args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)
	_, err := a.Host.RunCmd(ctx, host.Cmd{Name: "apt-get", Args: args, Env: aptEnv})
	return err
}

// PGTuning is PostgreSQL's configuration derived from the machine size.
type PGTuning struct {
	MemMB, Cores                      int64
	MaxConnections                    int64
	SharedBuffersMB, EffectiveCacheMB int64
	MaintenanceWorkMB, WorkMemMB      int64
	MaxWorkers, ParallelPerGather     int64
}

// TunePostgres sizes PostgreSQL for a machine with memBytes of RAM and cores CPUs.
func TunePostgres(memBytes int64, cores int) PGTuning {
	mb := memBytes >> 20
	c := int64(max(cores, 1))
	t := PGTuning{MemMB: mb, Cores: c, MaxConnections: 100}
	t.SharedBuffersMB = clamp(mb/4, 128, 8192)
	t.EffectiveCacheMB = max(mb*3/4, 256)
	t.MaintenanceWorkMB = clamp(mb/16, 64, 2048)
	t.WorkMemMB = clamp((mb-t.SharedBuffersMB)/(t.MaxConnections*3), 4, 256)
	t.MaxWorkers = max(c, 8)
	t.ParallelPerGather = max(c/2, 1)
	return t
}

func clamp(v, lo, hi int64) int64 { return min(max(v, lo), hi) }

// pgConfDir returns the conf.d directory of the newest installed cluster
// configuration (/etc/postgresql/<version>/main/conf.d), or "".
func (a *Agent) pgConfDir() string {
	matches, _ := filepath.Glob(a.Host.Path("/etc/postgresql/*/main"))
	best, bestV := "", -1.0
	for _, m := range matches {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(m)), 64)
		if err == nil && v > bestV {
			best, bestV = filepath.Base(filepath.Dir(m)), v
		}
	}
	if best == "" {
		return ""
	}
	return "/etc/postgresql/" + best + "/main"
}

// pgTool returns how to run the PostgreSQL client program name for the
// cluster configured in confDir (/etc/postgresql/<version>/main): the
// version's own binary, when installed, and the cluster's port. Debian's
// /usr/bin/psql and pg_isready are pg_wrapper, a Perl script that finds the
// cluster first: about a second per call under emulation, on the first
// boot's critical path. Without the versioned binary, the wrapper.
func (a *Agent) pgTool(confDir, name string) (string, []string) {
	version := path.Base(path.Dir(confDir))
	bin := path.Join("/usr/lib/postgresql", version, "bin", name)
	if fi, err := os.Stat(a.Host.Path(bin)); err != nil || fi.IsDir() {
		return name, nil
	}
	port := "5432"
	if conf, err := a.Host.ReadFile(confDir + "/postgresql.conf"); err == nil {
		if m := pgPortRE().FindSubmatch(conf); m != nil {
			port = string(m[1])
		}
	}
	return bin, []string{"-p", port}
}

var pgPortRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?m)^[ \t]*port[ \t]*=[ \t]*'?([0-9]+)'?`) })

// Database names: the role is fixed, the database is ecs.database
// (default DBName), as in the original appliance.
const (
	DBName = "ecs"
	DBRole = "ecs"
)

var dbNameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`) })

// dbName returns the database name of ecs.database, default DBName.
func dbName(e *Env) (string, error) {
	n := e.Str("ecs.database")
	if n == "" {
		return DBName, nil
	}
	if !dbNameRE().MatchString(n) {
		return "", fmt.Errorf("ecs.database: %q is not a database name (lower-case letters, digits, _)", n)
	}
	return n, nil
}

// stepPostgresData moves the cluster's data to /data/postgresql
// (pgDataDir); stepPostgres then (re)starts the server.
func (a *Agent) stepPostgresData(ctx context.Context, e *Env) error {
	dir := a.pgConfDir()
	if dir == "" {
		return nil
	}
	moved, err := a.pgDataDir(ctx, dir)
	a.pgMoved = a.pgMoved || moved
	return err
}

func (a *Agent) stepPostgres(ctx context.Context, e *Env) error {
	dir := a.pgConfDir()
	if dir == "" {
		a.logf("prepare-appliance/postgresql: PostgreSQL is not installed (no /etc/postgresql/*/main); skipped")
		return nil
	}
	db, err := dbName(e)
	if err != nil {
		return err
	}
	moved := a.pgMoved
	bridgeIP, bridgeNet := a.dockerBridge()
	conf, err := render("postgresql.conf.tmpl", struct {
		PGTuning
		BridgeIP string
	}{TunePostgres(a.memBytes(), a.cores()), bridgeIP})
	if err != nil {
		return err
	}
	changed, err := a.Host.WriteFile(dir+"/conf.d/ecs-agent.conf", conf, 0o644)
	if err != nil {
		return err
	}
	block, err := render("pg_hba.block.tmpl", map[string]string{"Database": db, "Role": DBRole, "BridgeNet": bridgeNet})
	if err != nil {
		return err
	}
	hba, err := a.Host.ReadFile(dir + "/pg_hba.conf")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	hchanged, err := a.Host.WriteFile(dir+"/pg_hba.conf", []byte(replaceManagedBlock(disableHostRules(string(hba)), "pg_hba", string(block))), 0o640)
	if err != nil {
		return err
	}
	if changed || hchanged || moved {
		if err := a.systemctl(ctx, "restart", "postgresql.service"); err != nil {
			return err
		}
	} else if err := a.systemctl(ctx, "start", "postgresql.service"); err != nil {
		return err
	}
	// postgresql.service only fronts the cluster units: wait for the
	// server to accept connections (found by the VM test).
	if err := a.waitPostgres(ctx, dir, 2*time.Minute); err != nil {
		return err
	}
	pw, err := a.databasePassword()
	if err != nil {
		return err
	}
	// The password goes to psql on stdin, never on a command line.
	sql := fmt.Sprintf(`SELECT 'CREATE ROLE %[1]s LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%[1]s')\gexec
ALTER ROLE %[1]s WITH LOGIN PASSWORD '%[3]s';
SELECT 'CREATE DATABASE %[2]s OWNER %[1]s TEMPLATE template0 ENCODING ''UTF8''%[4]s' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '%[2]s')\gexec
`, DBRole, db, pw, a.dbLocaleSQL())
	psql, conn := a.pgTool(dir, "psql")
	args := append(append([]string{"-u", "postgres", "--", psql}, conn...), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres")
	if _, err := a.Host.RunCmd(ctx, host.Cmd{Name: "runuser", Args: args, Stdin: strings.NewReader(sql)}); err != nil {
		return fmt.Errorf("creating role and database %s: %w", db, err)
	}
	url := fmt.Sprintf("DATABASE_URL=postgres://%s:%s@host.docker.internal:5432/%s\n", DBRole, pw, db)
	_, err = a.Host.WriteFile(DatabaseEnv, []byte(url), 0o600)
	return err
}

// databasePassword returns the password kept in the database URL env
// file, or a new random one.
func (a *Agent) databasePassword() (string, error) {
	if data, err := a.Host.ReadFile(DatabaseEnv); err == nil {
		s := strings.TrimSpace(string(data))
		if i := strings.Index(s, "://"+DBRole+":"); i >= 0 {
			rest := s[i+len("://"+DBRole+":"):]
			if j := strings.IndexByte(rest, '@'); j > 0 && isHex(rest[:j]) {
				return rest[:j], nil
			}
		}
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil && s != ""
}

// waitPostgres polls pg_isready until the local server accepts connections.
// The poll is short: the first check often comes just before the server
// accepts connections, and the step is on the first boot's critical path.
func (a *Agent) waitPostgres(ctx context.Context, confDir string, limit time.Duration) error {
	isready, conn := a.pgTool(confDir, "pg_isready")
	args := append(conn, "-q")
	deadline := time.Now().Add(limit)
	for {
		_, err := a.Host.Run(ctx, isready, args...)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("PostgreSQL does not accept connections after %s: %w", limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
