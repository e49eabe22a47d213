// Package provisioners holds the steps that change a build's disk: each
// provisioner type (file, shell, packages, containers, agent) is one type
// behind the Provisioner interface. Provisioners that only place files
// (Placer) write a tar archive, which the builder either streams into a
// running guest (`sudo tar -x`) or unpacks offline with its helper VM, so a
// stage made only of them never needs a full boot. The others (Runner) need
// a booted guest reachable over SSH.
package provisioners

import (
	"context"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"
)

// Provisioner is one entry of a stage's provisioner list.
type Provisioner interface {
	// Type is the template's "type" value.
	Type() string
	// Check validates the decoded configuration. dir is the template's
	// directory; relative local paths are resolved against it (Check
	// rewrites them to absolute paths).
	Check(dir string) []FieldError
	// Inputs lists the local files and directories whose content the
	// provisioner uses; the stage cache key hashes them.
	Inputs() []string
	// Requires says where the provisioner can run: NeedFiles for a Placer,
	// a higher Need for a Runner.
	Requires() Requirement
	// CheckProduction is the provisioner's part of the production rule:
	// what a production variant must not build from its configuration
	// (a stack's registry images without a digest); nil when nothing.
	// The template checks it for every stage of a production variant.
	CheckProduction() []FieldError
}

// Placer is a provisioner that only places files in the image.
type Placer interface {
	Provisioner
	// Place writes what the provisioner installs into a.
	Place(ctx context.Context, a *Archive) error
}

// Runner is a provisioner that needs a booted guest.
type Runner interface {
	Provisioner
	// Run provisions the guest.
	Run(ctx context.Context, e *Env) error
}

// Need is what a provisioner needs of the system it changes, from the
// least to the most. The builder chooses a stage's mode from its
// provisioners' needs.
type Need int

const (
	// NeedFiles: it only places files (a Placer), so it runs offline, in a
	// chroot on the build host or in the booted image.
	NeedFiles Need = iota
	// NeedChroot: it runs commands (a Runner) that do the same in a chroot
	// on the build host as in the booted image — installing packages:
	// services are enabled but not started, which the generalised image
	// does not keep anyway. A stage made of such provisioners (and file
	// placers) runs in a chroot by default.
	NeedChroot
	// NeedBoot: its commands may need the running system (shell), so it
	// runs booted unless the stage asks for a chroot.
	NeedBoot
	// NeedRunning: it needs the running system and never runs in a chroot
	// (Requirement.Why says why).
	NeedRunning
)

// Requirement is what a provisioner declares about where it can run.
type Requirement struct {
	Need Need
	// Why says why the provisioner needs the running system (NeedRunning).
	Why string
}

// NeedsBoot reports whether the provisioner runs commands (a booted guest
// or a chroot), rather than only placing files.
func (r Requirement) NeedsBoot() bool { return r.Need > NeedFiles }

// ChrootSafe reports whether the provisioner does the same in a chroot on
// the build host as in the booted image, so that a stage made only of such
// provisioners runs in a chroot when its mode is auto.
func (r Requirement) ChrootSafe() bool { return r.Need <= NeedChroot }

// NeedsRunningSystem says why the provisioner cannot run in a chroot (""
// if it can).
func (r Requirement) NeedsRunningSystem() string {
	if r.Need < NeedRunning {
		return ""
	}
	if r.Why == "" {
		return "needs the running system"
	}
	return r.Why
}

// Guest is a running build VM (or a chroot into its disk).
type Guest interface {
	// Run runs a shell command line in the guest as the build user. stdin
	// may be nil. Every line of output (stdout and stderr) is passed to out
	// as it arrives. A non-zero exit status is an error.
	Run(ctx context.Context, command string, stdin io.Reader, out func(line string)) error
}

// Env is what a Runner gets: the guest, a logger and the build variables.
type Env struct {
	Guest Guest
	Log   logrus.FieldLogger
	// Vars are exported to shell provisioners (ECS_IMAGE_VARIANT, ...).
	Vars map[string]string
}

// FieldError is a problem with one field of a provisioner's configuration.
type FieldError struct {
	// Field is the key path inside the provisioner, e.g. "source" or
	// "images[1].path"; empty for the provisioner as a whole.
	Field string
	Msg   string
}

func fieldErr(field, format string, args ...any) FieldError {
	return FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// New returns an empty provisioner of type t for the template decoder to
// fill, or nil when t is unknown.
func New(t string) Provisioner {
	switch t {
	case "file":
		return &File{}
	case "shell":
		return &Shell{}
	case "packages":
		return &Packages{}
	case "containers":
		return &Containers{}
	case "stack":
		return &Stack{}
	case "agent":
		return &Agent{}
	}
	return nil
}

// Types lists the provisioner types.
func Types() []string { return []string{"agent", "containers", "file", "packages", "shell", "stack"} }

// RunPlacer installs what p places into a booted guest: its archive is
// streamed to `sudo tar -x` in the guest's root directory.
func RunPlacer(ctx context.Context, p Placer, e *Env) error {
	pr, pw := io.Pipe()
	go func() {
		a := NewArchive(pw)
		err := p.Place(ctx, a)
		if err == nil {
			err = a.Close()
		}
		pw.CloseWithError(err)
	}()
	// GNU tar on the guest, as root: owners by name, modes as archived.
	cmd := "sudo -n tar --extract --preserve-permissions --same-owner --keep-directory-symlink --file - --directory /"
	err := e.Guest.Run(ctx, cmd, pr, func(l string) { e.Log.Info(l) })
	pr.CloseWithError(io.ErrClosedPipe)
	return err
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:@+,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// envAssignments renders vars as sorted, quoted NAME=value words.
func envAssignments(vars ...map[string]string) []string {
	all := map[string]string{}
	for _, m := range vars {
		for k, v := range m {
			all[k] = v
		}
	}
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k + "=" + shellQuote(all[k])
	}
	return out
}

// validGuestPath checks an absolute guest path.
func validGuestPath(p string) string {
	switch {
	case p == "":
		return "required"
	case !strings.HasPrefix(p, "/"):
		return fmt.Sprintf("%q is not an absolute path", p)
	case path.Clean(p) != p && path.Clean(p)+"/" != p:
		return fmt.Sprintf("%q is not a clean path (want %q)", p, path.Clean(p))
	case path.Clean(p) == "/":
		return "must not be /"
	case strings.ContainsAny(p, "\n\x00"):
		return "contains a newline or NUL"
	}
	return ""
}
