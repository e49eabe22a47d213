// Package cmddoc writes what a distribution package ships besides the
// binaries: man pages generated from the cobra commands (one page per
// command, section 1) and the bash, zsh and fish completion scripts.
// ecs-image and ecs-agent expose it as a hidden command (`__gendocs DIR`)
// that `make deb` runs.
package cmddoc

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

// Command returns the hidden command `__gendocs DIR` for root: it writes
// DIR/man1/*.1 and DIR/completion/{bash,zsh,fish}. date (RFC 3339, e.g.
// the commit's, for reproducible pages) dates the pages; when empty,
// $SOURCE_DATE_EPOCH, else today.
func Command(root *cobra.Command, source, date string) *cobra.Command {
	return &cobra.Command{
		Use:    "__gendocs DIR",
		Short:  "Write man pages and shell completion scripts (for packaging)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var t time.Time
			if date != "" {
				var err error
				if t, err = time.Parse(time.RFC3339, date); err != nil {
					return fmt.Errorf("build date %q: %v", date, err)
				}
			}
			return Write(root, args[0], source, t)
		},
	}
}

// Write writes root's man pages to dir/man1 and its completion scripts to
// dir/completion.
func Write(root *cobra.Command, dir, source string, date time.Time) error {
	if date.IsZero() {
		date = time.Now()
		if e := os.Getenv("SOURCE_DATE_EPOCH"); e != "" {
			sec, err := strconv.ParseInt(e, 10, 64)
			if err != nil {
				return fmt.Errorf("SOURCE_DATE_EPOCH: %v", err)
			}
			date = time.Unix(sec, 0)
		}
	}
	date = date.UTC()
	man := filepath.Join(dir, "man1")
	comp := filepath.Join(dir, "completion")
	for _, d := range []string{man, comp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The default help and completion commands exist once Execute ran;
	// add them now so that their pages are written too.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	root.DisableAutoGenTag = true
	if err := manTree(root, man, source, root.Name()+" manual", date); err != nil {
		return fmt.Errorf("man pages: %v", err)
	}
	for _, c := range []struct {
		file string
		gen  func(string) error
	}{
		{"bash", func(p string) error { return root.GenBashCompletionFileV2(p, true) }},
		{"zsh", root.GenZshCompletionFile},
		{"fish", func(p string) error { return root.GenFishCompletionFile(p, true) }},
	} {
		if err := c.gen(filepath.Join(comp, c.file)); err != nil {
			return fmt.Errorf("%s completion: %v", c.file, err)
		}
	}
	return nil
}
