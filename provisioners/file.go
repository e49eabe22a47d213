package provisioners

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File places a local file or directory tree (or inline content) in the
// image, with an owner and mode.
type File struct {
	// Source is a local file or directory (relative to the template).
	Source string `yaml:"source"`
	// Content is inline file content, instead of Source.
	Content *string `yaml:"content"`
	// Destination is the absolute guest path of the file or directory.
	Destination string `yaml:"destination"`
	// Owner is "user[:group]" in the guest (default root:root).
	Owner string `yaml:"owner"`
	// Mode is the octal mode of files (default: the source file's mode,
	// 0644 for content).
	Mode string `yaml:"mode"`
	// DirMode is the octal mode of directories of a tree (default 0755).
	DirMode string `yaml:"dir_mode"`

	owner         Owner
	mode, dirMode fs.FileMode
	isDir         bool
}

// Type implements Provisioner.
func (*File) Type() string { return "file" }

// Check implements Provisioner.
func (f *File) Check(dir string) []FieldError {
	var errs []FieldError
	switch {
	case f.Source == "" && f.Content == nil:
		errs = append(errs, fieldErr("source", "required (or content)"))
	case f.Source != "" && f.Content != nil:
		errs = append(errs, fieldErr("content", "give source or content, not both"))
	case f.Source != "":
		f.Source = absPath(dir, f.Source)
		fi, err := os.Stat(f.Source)
		if err != nil {
			errs = append(errs, fieldErr("source", "%v", cleanErr(err)))
		} else {
			f.isDir = fi.IsDir()
		}
	}
	if m := validGuestPath(f.Destination); m != "" {
		errs = append(errs, fieldErr("destination", "%s", m))
	}
	var err error
	if f.owner, err = ParseOwner(f.Owner); err != nil {
		errs = append(errs, fieldErr("owner", "%v", err))
	}
	if f.Mode != "" {
		if f.mode, err = ParseMode(f.Mode); err != nil {
			errs = append(errs, fieldErr("mode", "%v", err))
		}
	}
	if f.DirMode != "" {
		if f.dirMode, err = ParseMode(f.DirMode); err != nil {
			errs = append(errs, fieldErr("dir_mode", "%v", err))
		}
	}
	return errs
}

// CheckProduction implements Provisioner: nothing a production variant refuses.
func (*File) CheckProduction() []FieldError { return nil }

// Requires implements Provisioner: it only places files.
func (*File) Requires() Requirement { return Requirement{Need: NeedFiles} }

// Inputs implements Provisioner.
func (f *File) Inputs() []string {
	if f.Source == "" {
		return nil
	}
	return []string{f.Source}
}

// Place implements Placer.
func (f *File) Place(ctx context.Context, a *Archive) error {
	if f.Content != nil {
		mode := f.mode
		if mode == 0 {
			mode = 0o644
		}
		return a.Bytes(f.Destination, []byte(*f.Content), mode, f.owner)
	}
	if f.isDir {
		return a.LocalTree(f.Source, f.Destination, f.mode, f.dirMode, f.owner)
	}
	return a.LocalFile(f.Source, f.Destination, f.mode, f.owner)
}

func absPath(dir, p string) string {
	if filepath.IsAbs(p) || dir == "" {
		return filepath.Clean(p)
	}
	return filepath.Join(dir, p)
}

// cleanErr drops the "stat " prefix of *fs.PathError messages.
func cleanErr(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}
