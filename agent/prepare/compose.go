package prepare

import (
	"io"
	"os"
	"strings"
)

// ComposeTool is how the agent runs Compose.
type ComposeTool struct {
	// Name and Args start the command: "docker" ["compose"] for the Compose
	// v2 CLI plugin, "docker-compose" [] for a standalone binary.
	Name string
	Args []string
	// V2 is Compose v2 (Go; compose-go's env_file syntax); false is the
	// Python docker-compose 1.x of Debian 12, which is still run there.
	V2 bool
}

// composePlugins are where Debian's docker-compose (v2) and Docker's own
// packages install the Compose CLI plugin.
var composePlugins = []string{
	"/usr/libexec/docker/cli-plugins/docker-compose",
	"/usr/lib/docker/cli-plugins/docker-compose",
	"/usr/local/lib/docker/cli-plugins/docker-compose",
}

// composeBinaries are the standalone docker-compose binaries looked at.
var composeBinaries = []string{"/usr/bin/docker-compose", "/usr/local/bin/docker-compose"}

// Compose finds Compose from the file system alone (no process is
// started: under emulation each costs): the v2 CLI plugin, else a
// standalone docker-compose, v2 when it is a binary and v1 when it is a
// script. Without either, "docker-compose" from $PATH, taken as v1 when a
// script.
func (a *Agent) Compose() ComposeTool {
	for _, p := range composePlugins {
		if fi, err := os.Stat(a.Host.Path(p)); err == nil && fi.Mode().IsRegular() {
			return ComposeTool{Name: "docker", Args: []string{"compose"}, V2: true}
		}
	}
	for _, p := range composeBinaries {
		if _, err := os.Stat(a.Host.Path(p)); err == nil {
			return ComposeTool{Name: "docker-compose", V2: !isScript(a.Host.Path(p))}
		}
	}
	return ComposeTool{Name: "docker-compose"}
}

// composeCommand returns the command line that runs compose with args on
// the appliance's project and compose file, with the Compose found by
// Compose(): the one place that builds it, for the appliance command's
// `up` (runStack) and the migrations' `run`.
func (a *Agent) composeCommand(args ...string) (string, []string) {
	return a.Compose().Command(append([]string{"-p", a.composeProject(), "-f", a.Host.Path(ComposeFile)}, args...)...)
}

// isScript reports whether file starts with "#!".
func isScript(file string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 2)
	n, _ := io.ReadFull(f, b)
	return n == 2 && string(b) == "#!"
}

// Command returns the full argument list for args.
func (c ComposeTool) Command(args ...string) (string, []string) {
	return c.Name, append(append([]string{}, c.Args...), args...)
}

// EnvFile renders vars in the env_file syntax of this Compose.
func (c ComposeTool) EnvFile(vars []Var) string {
	if c.V2 {
		return ComposeEnvV2(vars)
	}
	return ComposeEnv(vars)
}

// ComposeEnvV2 renders vars in the env_file (and .env) syntax of Compose
// v2 (compose-go's dotenv): NAME="value" with \, " and $ escaped by a
// backslash (a literal $ would start an interpolation), newlines kept as
// they are (a double-quoted value may span lines).
func ComposeEnvV2(vars []Var) string {
	var b strings.Builder
	esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`)
	for _, v := range vars {
		b.WriteString(v.Name + `="` + esc.Replace(v.Value) + "\"\n")
	}
	return b.String()
}
