package prepare

import (
	"fmt"
	"sort"
	"strings"

	"github.com/ecs-image/ecs-image/env"
)

// Flattened returns the flattened environment of doc (keys ecs,appliance,
// no prefix) exactly as env.Flatten produces it: shell syntax that systemd's
// EnvironmentFile= also reads.
func Flattened(doc *env.Doc) string {
	out, _ := env.Flatten(doc, strings.Split(FlattenKeys, ","), "", "")
	return out
}

// Var is one flattened variable with its value unquoted.
type Var struct{ Name, Value string }

// ParseShellAssignments reads NAME=VALUE lines as written by env.Flatten
// (values bare, single-quoted, or shlex.quote-style concatenations such as
// 'it'"'"'s'; quoted values may span lines) and returns the unquoted values.
func ParseShellAssignments(s string) ([]Var, error) {
	var vars []Var
	i := 0
	line := 1
	for i < len(s) {
		if s[i] == '\n' {
			i++
			line++
			continue
		}
		eq := strings.IndexByte(s[i:], '=')
		nl := strings.IndexByte(s[i:], '\n')
		if eq < 0 || (nl >= 0 && nl < eq) {
			return nil, fmt.Errorf("line %d: no '='", line)
		}
		name := strings.TrimPrefix(s[i:i+eq], "export ")
		i += eq + 1
		var val strings.Builder
	value:
		for i < len(s) {
			switch c := s[i]; c {
			case '\n':
				break value
			case '\'':
				end := strings.IndexByte(s[i+1:], '\'')
				if end < 0 {
					return nil, fmt.Errorf("line %d: %s: unterminated single quote", line, name)
				}
				seg := s[i+1 : i+1+end]
				line += strings.Count(seg, "\n")
				val.WriteString(seg)
				i += end + 2
			case '"':
				i++
				for {
					if i >= len(s) {
						return nil, fmt.Errorf("line %d: %s: unterminated double quote", line, name)
					}
					if s[i] == '"' {
						i++
						break
					}
					if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\\\"$`\n", s[i+1]) >= 0 {
						i++
					}
					if s[i] == '\n' {
						line++
					}
					val.WriteByte(s[i])
					i++
				}
			case '\\':
				if i+1 < len(s) {
					val.WriteByte(s[i+1])
					i += 2
				} else {
					i++
				}
			default:
				val.WriteByte(c)
				i++
			}
		}
		vars = append(vars, Var{name, val.String()})
	}
	return vars, nil
}

// ComposeEnv renders vars in the env_file syntax of docker-compose 1.29
// (python-dotenv): NAME='value' with \ and ' escaped by a backslash; quoted
// values may span lines.
func ComposeEnv(vars []Var) string {
	var b strings.Builder
	for _, v := range vars {
		esc := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v.Value)
		fmt.Fprintf(&b, "%s='%s'\n", v.Name, esc)
	}
	return b.String()
}

// VarMap turns vars into a map.
func VarMap(vars []Var) map[string]string {
	m := make(map[string]string, len(vars))
	for _, v := range vars {
		m[v.Name] = v.Value
	}
	return m
}

// SortedNames returns the names of m, sorted.
func SortedNames(m map[string]string) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}
