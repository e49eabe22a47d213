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
