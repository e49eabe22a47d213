package prepare

import (
	"fmt"
	"strings"
)

// Postfix's main.cf and master.cf, edited as postconf -e, -M#, -MX and -Me
// would edit them, without running postconf (about a second of CPU per run
// under emulation). Both files are made of logical lines: a line that
// starts with non-whitespace text, continued by the lines after it that
// start with whitespace; comment lines (first non-whitespace character #)
// inside a logical line are skipped by Postfix and kept here.

// cfGroup is a logical line (its lines, newlines stripped), or a blank or
// comment line on its own (key "").
type cfGroup struct {
	key   string
	lines []string
}

// splitCf splits a Postfix configuration file into groups; keyOf returns
// the key of a logical line's first line.
func splitCf(text string, keyOf func(first string) string) []cfGroup {
	if text == "" {
		return nil
	}
	var groups []cfGroup
	open := -1 // the logical line continuation lines join
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		t := strings.TrimSpace(l)
		switch {
		case t == "":
			groups, open = append(groups, cfGroup{lines: []string{l}}), -1
		case l[0] == ' ' || l[0] == '\t':
			if open >= 0 {
				groups[open].lines = append(groups[open].lines, l)
			} else {
				groups = append(groups, cfGroup{lines: []string{l}})
			}
		case l[0] == '#':
			if open >= 0 {
				groups[open].lines = append(groups[open].lines, l)
			} else {
				groups = append(groups, cfGroup{lines: []string{l}})
			}
		default:
			groups = append(groups, cfGroup{key: keyOf(l), lines: []string{l}})
			open = len(groups) - 1
		}
	}
	return groups
}

func joinCf(groups []cfGroup) string {
	var b strings.Builder
	for _, g := range groups {
		for _, l := range g.lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func mainCfKey(first string) string {
	k, _, _ := strings.Cut(first, "=")
	return strings.TrimSpace(k)
}

// editMainCf sets each "name=value" of settings as postconf -e does: the
// parameter's first definition is replaced by "name = value", later ones
// (which would win) are removed, and a parameter not defined yet is
// appended.
func editMainCf(text string, settings []string) string {
	groups := splitCf(text, mainCfKey)
	for _, s := range settings {
		name, value, _ := strings.Cut(s, "=")
		line := fmt.Sprintf("%s = %s", name, value)
		found := false
		for i := 0; i < len(groups); i++ {
			if groups[i].key != name {
				continue
			}
			if !found {
				groups[i] = cfGroup{key: name, lines: []string{line}}
				found = true
				continue
			}
			groups = append(groups[:i], groups[i+1:]...)
			i--
		}
		if !found {
			groups = append(groups, cfGroup{key: name, lines: []string{line}})
		}
	}
	return joinCf(groups)
}

// masterCfKey is a master.cf entry's service/type.
func masterCfKey(first string) string {
	f := strings.Fields(first)
	if len(f) < 2 {
		return ""
	}
	return f[0] + "/" + f[1]
}

// masterCfEdit is one edit of master.cf.
type masterCfEdit struct {
	key string // service/type
	op  byte   // '#' comment out, 'X' remove, 'e' set to entry
	// entry is the whole entry for 'e': service type private unpriv
	// chroot wakeup maxproc command [args].
	entry string
}

// editMasterCf applies edits as postconf -M#, -MX and -Me do: every
// logical line of the service is commented out line by line, removed, or
// replaced by the entry (appended when there is none).
func editMasterCf(text string, edits []masterCfEdit) string {
	groups := splitCf(text, masterCfKey)
	for _, e := range edits {
		found := false
		for i := 0; i < len(groups); i++ {
			if groups[i].key != e.key {
				continue
			}
			switch e.op {
			case '#':
				var lines []string
				for _, l := range groups[i].lines {
					lines = append(lines, "#"+l)
				}
				groups[i] = cfGroup{lines: lines}
			case 'X':
				groups = append(groups[:i], groups[i+1:]...)
				i--
			case 'e':
				if found {
					groups = append(groups[:i], groups[i+1:]...)
					i--
					continue
				}
				groups[i] = cfGroup{key: e.key, lines: []string{masterEntry(e.entry)}}
				found = true
			}
		}
		if e.op == 'e' && !found {
			groups = append(groups, cfGroup{key: e.key, lines: []string{masterEntry(e.entry)}})
		}
	}
	return joinCf(groups)
}

// masterEntry lays out a master.cf entry in the file's columns.
func masterEntry(entry string) string {
	f := strings.Fields(entry)
	if len(f) < 8 {
		return strings.Join(f, " ")
	}
	return strings.TrimRight(fmt.Sprintf("%-9s %-5s %-7s %-7s %-7s %-7s %-7s %s", f[0], f[1], f[2], f[3], f[4], f[5], f[6], strings.Join(f[7:], " ")), " ")
}
