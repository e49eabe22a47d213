package cmddoc

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Man pages are written here rather than with cobra/doc: its GenMan
// renders through go-md2man and blackfriday, whose package initialisation
// (tables and maps built at init) every run of ecs-image and ecs-agent
// paid, whatever the command.

// manTree writes one page per available command of root (the root
// included) to dir.
func manTree(cmd *cobra.Command, dir, source, manual string, date time.Time) error {
	for _, c := range cmd.Commands() {
		if !c.IsAvailableCommand() || c.IsAdditionalHelpTopicCommand() {
			continue
		}
		if err := manTree(c, dir, source, manual, date); err != nil {
			return err
		}
	}
	name := strings.ReplaceAll(cmd.CommandPath(), " ", "-")
	return os.WriteFile(filepath.Join(dir, name+".1"), manPage(cmd, source, manual, date), 0o644)
}

// manPage renders one command as a section 1 roff page.
func manPage(cmd *cobra.Command, source, manual string, date time.Time) []byte {
	cmd.InitDefaultHelpFlag()
	var b bytes.Buffer
	name := strings.ReplaceAll(cmd.CommandPath(), " ", "-")
	fmt.Fprintf(&b, ".nh\n.TH %q \"1\" %q %q %q\n\n", strings.ToUpper(name), date.Format("Jan 2006"), source, manual)
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n\n", name, roffText(cmd.Short))
	fmt.Fprintf(&b, ".SH SYNOPSIS\n\\fB%s\\fP\n\n", roffText(cmd.UseLine()))
	long := cmd.Long
	if long == "" {
		long = cmd.Short
	}
	b.WriteString(".SH DESCRIPTION\n")
	roffParagraphs(&b, long)
	writeFlags(&b, "OPTIONS", cmd.NonInheritedFlags())
	writeFlags(&b, "OPTIONS INHERITED FROM PARENT COMMANDS", cmd.InheritedFlags())
	if cmd.Example != "" {
		fmt.Fprintf(&b, ".SH EXAMPLE\n.PP\n.nf\n.RS\n%s\n.RE\n.fi\n\n", roffText(strings.TrimRight(cmd.Example, "\n")))
	}
	var see []string
	if cmd.HasParent() {
		see = append(see, strings.ReplaceAll(cmd.Parent().CommandPath(), " ", "-"))
	}
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() && !c.IsAdditionalHelpTopicCommand() {
			see = append(see, strings.ReplaceAll(c.CommandPath(), " ", "-"))
		}
	}
	if len(see) > 0 {
		slices.Sort(see)
		b.WriteString(".SH SEE ALSO\n")
		for i, s := range see {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "\\fB%s(1)\\fP", roffText(s))
		}
		b.WriteString("\n")
	}
	return b.Bytes()
}

// roffParagraphs writes text's paragraphs (separated by blank lines):
// filled, or as they are when a line of the paragraph is indented (tables,
// lists, examples).
func roffParagraphs(b *bytes.Buffer, text string) {
	for i, para := range strings.Split(strings.TrimSpace(text), "\n\n") {
		para = strings.Trim(para, "\n")
		if para == "" {
			continue
		}
		if i > 0 {
			b.WriteString(".PP\n")
		}
		pre := false
		for _, l := range strings.Split(para, "\n") {
			if strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t") {
				pre = true
			}
		}
		if pre {
			fmt.Fprintf(b, ".nf\n%s\n.fi\n", roffText(para))
		} else {
			fmt.Fprintf(b, "%s\n", roffText(para))
		}
	}
	b.WriteString("\n")
}

func writeFlags(b *bytes.Buffer, title string, flags *pflag.FlagSet) {
	var items []string
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		s := ""
		if f.Shorthand != "" && f.ShorthandDeprecated == "" {
			s = fmt.Sprintf("\\fB-%s\\fP, ", f.Shorthand)
		}
		s += fmt.Sprintf("\\fB--%s\\fP", f.Name)
		def := f.DefValue
		if f.Value.Type() == "string" {
			def = fmt.Sprintf("%q", def)
		}
		if f.NoOptDefVal != "" {
			s += "[=" + roffText(def) + "]"
		} else {
			s += "=" + roffText(def)
		}
		items = append(items, s+"\n.RS\n"+roffText(f.Usage)+"\n.RE\n")
	})
	if len(items) == 0 {
		return
	}
	fmt.Fprintf(b, ".SH %s\n%s\n", title, strings.Join(items, ".PP\n"))
}

// roffText escapes text for roff: backslashes, and a control character (.
// or ') at the start of a line.
func roffText(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}
