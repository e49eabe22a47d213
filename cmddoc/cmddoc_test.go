package cmddoc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func TestWrite(t *testing.T) {
	root := &cobra.Command{Use: "tool", Short: "A tool"}
	sub := &cobra.Command{Use: "run FILE", Short: "Run a file", Long: "Run runs FILE.", Run: func(*cobra.Command, []string) {}}
	sub.Flags().String("mode", "fast", "how to run")
	root.AddCommand(sub, Command(root, "tool v1.0.0", "2026-12-06T01:02:03Z"))
	dir := t.TempDir()
	root.SetArgs([]string{"__gendocs", dir})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	page, err := os.ReadFile(filepath.Join(dir, "man1", "tool-run.1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`.TH "TOOL-RUN" "1" "Dec 2026" "tool v1.0.0" "tool manual"`, "Run runs FILE.", "--mode"} {
		if !strings.Contains(string(page), w) {
			t.Errorf("tool-run.1 lacks %q:\n%s", w, page)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "man1", "tool-__gendocs.1")); err == nil {
		t.Error("the hidden command has a page")
	}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		data, err := os.ReadFile(filepath.Join(dir, "completion", sh))
		if err != nil || !strings.Contains(string(data), "__complete") {
			t.Errorf("%s completion: %v", sh, err)
		}
	}
	if err := Write(root, t.TempDir(), "x", time.Time{}); err != nil {
		t.Errorf("undated: %v", err)
	}
}

func TestManPage(t *testing.T) {
	root := &cobra.Command{Use: "tool", Short: "A tool"}
	sub := &cobra.Command{Use: "run", Short: "Run", Example: "  tool run", Run: func(*cobra.Command, []string) {},
		Long: "First \\ paragraph\n.starts with a dot.\n\nTable:\n  a   one\n  b   two"}
	sub.Flags().BoolP("fast", "f", false, "go fast")
	root.AddCommand(sub)
	page := string(manPage(sub, "tool 1", "tool manual", time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)))
	for _, w := range []string{
		`.TH "TOOL-RUN" "1" "Jan 2026" "tool 1" "tool manual"`,
		"tool-run \\- Run\n",
		"First \\e paragraph\n\\&.starts with a dot.\n",
		".PP\n.nf\nTable:\n  a   one\n  b   two\n.fi\n",
		"\\fB-f\\fP, \\fB--fast\\fP[=false]\n.RS\ngo fast\n.RE\n",
		"\\fB-h\\fP, \\fB--help\\fP",
		".SH EXAMPLE\n",
		".SH SEE ALSO\n\\fBtool(1)\\fP\n",
	} {
		if !strings.Contains(page, w) {
			t.Errorf("page lacks %q:\n%s", w, page)
		}
	}
}
