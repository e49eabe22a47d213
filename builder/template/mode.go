package template

import (
	"fmt"

	"go.yaml.in/yaml/v3"
)

// Mode is where a stage's provisioners run. A template's stage asks for
// ModeAuto (the default), ModeBoot or ModeChroot; the plan resolves it to
// ModeBoot, ModeChroot or ModeOffline (chooseMode), which is what the
// stage run, the stage cache entry, the build manifest and the log record.
type Mode int

const (
	// ModeAuto lets the builder choose: file-only stages in the offline
	// helper, packages and files in a chroot on the build host when it
	// can, anything else in the booted image.
	ModeAuto Mode = iota
	// ModeBoot runs the provisioners in the booted image (QEMU + SSH).
	ModeBoot
	// ModeChroot runs them on the build host, chrooted into the disk.
	ModeChroot
	// ModeOffline places the stage's files with the offline helper VM; it
	// is chosen by the builder, never asked for by a template.
	ModeOffline
)

var modeNames = [...]string{ModeAuto: "auto", ModeBoot: "boot", ModeChroot: "chroot", ModeOffline: "offline"}

// String is the mode's name: auto, boot, chroot or offline.
func (m Mode) String() string {
	if m < 0 || int(m) >= len(modeNames) {
		return fmt.Sprintf("Mode(%d)", int(m))
	}
	return modeNames[m]
}

// NewMode parses a mode's name; "" is ModeAuto.
func NewMode(s string) (Mode, error) {
	if s == "" {
		return ModeAuto, nil
	}
	for m, n := range modeNames {
		if n == s {
			return Mode(m), nil
		}
	}
	return ModeAuto, fmt.Errorf("unknown stage mode %q", s)
}

// MarshalText writes the mode's name (JSON: a string).
func (m Mode) MarshalText() ([]byte, error) {
	if m < 0 || int(m) >= len(modeNames) {
		return nil, fmt.Errorf("invalid stage mode %d", int(m))
	}
	return []byte(m.String()), nil
}

// UnmarshalText reads a mode's name.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := NewMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// UnmarshalYAML reads a template stage's mode: auto, boot or chroot
// (offline is the builder's choice, not the template's).
func (m *Mode) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return fmt.Errorf("want auto, boot or chroot, got %s", kindName(n))
	}
	v, err := NewMode(n.Value)
	if err != nil || v == ModeOffline {
		return fmt.Errorf("%q: want auto, boot or chroot", n.Value)
	}
	*m = v
	return nil
}
