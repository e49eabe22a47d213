// Package buildinfo tells which build of ecs-image or ecs-agent is running:
// the version, commit and date the Makefile links in (-ldflags -X), or,
// for a `go install` or plain `go build` where nothing was linked in, what
// the Go toolchain recorded in the binary (debug.ReadBuildInfo: the module
// version, vcs.revision, vcs.time, vcs.modified).
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Info describes one build.
type Info struct {
	Version   string // v1.2.3, v1.2.3-4-gabcdef0 (git describe), a Go pseudo-version, or "dev"
	Commit    string // the git revision, or "unknown"
	Modified  bool   // built from a work tree with uncommitted changes
	Date      string // the commit's date (RFC 3339) when known, else ""
	GoVersion string // go1.26.8
	Platform  string // linux/amd64
	CGO       string // CGO_ENABLED as built ("0", "1"), or "" when unknown
}

// Unset values of the link-time variables.
const (
	unsetVersion = "dev"
	unsetCommit  = "unknown"
)

// Get combines the link-time values (empty or "dev"/"unknown" when not
// set) with the binary's build information.
func Get(version, commit, date string) Info {
	bi, _ := debug.ReadBuildInfo()
	return get(version, commit, date, bi)
}

func get(version, commit, date string, bi *debug.BuildInfo) Info {
	info := Info{
		Version: version, Commit: commit, Date: date,
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH,
	}
	if bi != nil {
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		info.CGO = settings["CGO_ENABLED"]
		if info.Version == "" || info.Version == unsetVersion {
			if v := bi.Main.Version; v != "" && v != "(devel)" {
				info.Version = v
			}
		}
		if info.Commit == "" || info.Commit == unsetCommit {
			switch {
			case settings["vcs.revision"] != "":
				info.Commit = settings["vcs.revision"]
				info.Modified = settings["vcs.modified"] == "true"
				if info.Date == "" {
					info.Date = settings["vcs.time"]
				}
			default:
				// go install module@version records no VCS settings, but
				// a pseudo-version ends with the commit (Go also stamps
				// one, +dirty when modified, on a go build in a work tree).
				if c := pseudoCommit(bi.Main.Version); c != "" {
					info.Commit = c
				}
			}
		}
	}
	if strings.HasSuffix(info.Version, "-dirty") || strings.HasSuffix(info.Version, "+dirty") {
		info.Modified = true
	}
	if info.Version == "" {
		info.Version = unsetVersion
	}
	if info.Commit == "" {
		info.Commit = unsetCommit
	}
	return info
}

// pseudoCommit returns the commit of a pseudo-version
// (v0.0.0-20261206014253-6d61cfd0a1b2 → 6d61cfd0a1b2), else "".
func pseudoCommit(v string) string {
	v = strings.TrimSuffix(strings.TrimSuffix(v, "+dirty"), "+incompatible")
	i := strings.LastIndex(v, "-")
	if i < 0 {
		return ""
	}
	c := v[i+1:]
	if len(c) != 12 || strings.Trim(c, "0123456789abcdef") != "" {
		return ""
	}
	ts := v[:i]
	if j := strings.LastIndexAny(ts, "-."); j >= 0 {
		ts = ts[j+1:]
	}
	if len(ts) != 14 || strings.Trim(ts, "0123456789") != "" {
		return ""
	}
	return c
}

// String is the multi-line report of `NAME version` and `NAME --version`.
func (i Info) String(name string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s\n", name, i.Version)
	commit := i.Commit
	if i.Modified {
		commit += " (modified)"
	}
	fmt.Fprintf(&b, "  commit: %s\n", commit)
	if i.Date != "" {
		fmt.Fprintf(&b, "  date:   %s\n", i.Date)
	}
	fmt.Fprintf(&b, "  go:     %s %s", i.GoVersion, i.Platform)
	if i.CGO != "" {
		fmt.Fprintf(&b, " (CGO_ENABLED=%s)", i.CGO)
	}
	b.WriteString("\n")
	return b.String()
}
