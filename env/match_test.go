package env

import (
	"math/rand"
	"regexp"
	"testing"
)

// The regular expressions match.go replaces (PyYAML's resolvers and the
// schema's), the reference the matchers are checked against.
var matchRefs = []struct {
	name string
	re   *regexp.Regexp
	fn   func(string) bool
}{
	{"label", regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`), isDNSLabel},
	{"allowed host", regexp.MustCompile(`^(?:\*|\.?[A-Za-z0-9_.-]+(?::[0-9]+)?|\[[0-9A-Fa-f:.]+\](?::[0-9]+)?)$`), isAllowedHost},
	{"bool", regexp.MustCompile(`^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$`), isYAMLBool},
	{"null", regexp.MustCompile(`^(?:~|null|Null|NULL|)$`), isYAMLNull},
	{"float", regexp.MustCompile(`^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?` +
		`|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?` +
		`|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*` +
		`|[-+]?\.(?:inf|Inf|INF)` +
		`|\.(?:nan|NaN|NAN))$`), isYAMLFloat},
	{"int", regexp.MustCompile(`^(?:[-+]?0b[0-1_]+` +
		`|[-+]?0[0-7_]+` +
		`|[-+]?(?:0|[1-9][0-9_]*)` +
		`|[-+]?0x[0-9a-fA-F_]+` +
		`|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$`), isYAMLInt},
}

func checkMatchers(t *testing.T, s string) {
	t.Helper()
	for _, m := range matchRefs {
		if want := m.re.MatchString(s); m.fn(s) != want {
			t.Errorf("%s(%q) = %v, the regular expression says %v", m.name, s, !want, want)
		}
	}
}

func TestMatchersAgainstRegexps(t *testing.T) {
	for _, s := range []string{
		"", "0", "-0", "+", "-", "00", "0_", "0b", "0b101", "0b102", "0x", "0x1F_a", "0xg", "08", "07_7",
		"1", "1_000", "1:2", "1:60", "1:59:59", "1:5:", "190:20:30", "1:123", "1:6", "1:06", "1:66", "0:30",
		"1.", "1.5", "-1.5e+3", "1.5e3", "1.5E-03", "1e+3", ".5", "-.5", "+.5e-1", ".", "._", "._1", ".5_",
		".inf", "-.Inf", "+.INF", ".nan", "-.nan", ".NaN", "1:30.5", "1:30:00.", "1:3.0", "1:.5",
		"yes", "Yes", "yES", "on", "OFF", "y", "n", "~", "null", "NULL", "nULL",
		"a", "a-b", "-a", "a-", "A1", strings63("a"), strings63("a") + "a", "a_b",
		"*", "*.x", ".example.org", "example.org:8080", "example.org:", "[::1]", "[::1]:443", "[]", "[::1", "[g]", "a:b", ":80",
	} {
		checkMatchers(t, s)
	}
	rng := rand.New(rand.NewSource(19))
	const alphabet = "0123456789_.:+-eEbxaAfFgGnNiIoOyYtT*[]~ "
	for range 200000 {
		b := make([]byte, rng.Intn(9))
		for i := range b {
			b[i] = alphabet[rng.Intn(len(alphabet))]
		}
		checkMatchers(t, string(b))
		if t.Failed() {
			return
		}
	}
}

func strings63(s string) string {
	b := make([]byte, 0, 63)
	for len(b) < 63 {
		b = append(b, s...)
	}
	return string(b[:63])
}

func FuzzMatchers(f *testing.F) {
	for _, s := range []string{"1:30.5", "0x1F", "[::1]:443", "a-b", ".inf"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkMatchers(t, s) })
}
