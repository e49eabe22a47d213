package env

import (
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// The appliance's own tooling (salt, flatten_yaml.py) reads env.yml with
// PyYAML's safe_load, which implements YAML 1.1: "yes", "on" and "off" are
// booleans, "010" is octal, "1:30" is base 60, "2001-12-14" is a date and
// "1e5" is a string. yaml.v3 resolves plain scalars by YAML 1.2 rules, so
// this file re-resolves every scalar the way PyYAML does. Both validation
// (types) and Flatten (printed values) use it.

// kind is the Python type PyYAML's safe_load constructs for a node.
type kind int

const (
	kNull kind = iota
	kBool
	kInt
	kFloat
	kStr
	kDate      // datetime.date
	kTimestamp // datetime.datetime
	kMap
	kSeq
	kMerge // the "<<" merge key
)

func (k kind) String() string {
	switch k {
	case kNull:
		return "null"
	case kBool:
		return "boolean"
	case kInt:
		return "integer"
	case kFloat:
		return "float"
	case kStr:
		return "string"
	case kDate:
		return "date"
	case kTimestamp:
		return "timestamp"
	case kMap:
		return "mapping"
	case kSeq:
		return "list"
	case kMerge:
		return "merge key"
	}
	return "unknown"
}

// scalar is a resolved scalar: its Python type and str() of its value
// (bool is given as "true"/"false", null as "").
type scalar struct {
	kind kind
	text string
}

// PyYAML's timestamp resolver (yaml/resolver.py); the others are in match.go.
var (
	reTimestamp = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]` +
			`|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?` +
			`(?:[Tt]|[ \t]+)[0-9][0-9]?` +
			`:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?` +
			`(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$`)
	})
	// the constructor's regexp, with groups
	reTimestampParts = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^([0-9][0-9][0-9][0-9])-([0-9][0-9]?)-([0-9][0-9]?)` +
			`(?:(?:[Tt]|[ \t]+)([0-9][0-9]?):([0-9][0-9]):([0-9][0-9])(?:\.([0-9]*))?` +
			`(?:[ \t]*(Z|([-+])([0-9][0-9]?)(?::([0-9][0-9]))?))?)?$`)
	})
)

// isPlain reports whether n is an untagged plain scalar, the only kind
// PyYAML resolves implicitly.
func isPlain(n *yaml.Node) bool {
	return n.Style&(yaml.TaggedStyle|yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) == 0
}

// implicitTag returns the YAML 1.1 tag PyYAML gives a plain scalar.
func implicitTag(v string) string {
	if v == "" {
		return "!!null"
	}
	switch c := v[0]; {
	case c == 'y' || c == 'Y' || c == 'n' || c == 'N' || c == 't' || c == 'T' || c == 'f' || c == 'F' || c == 'o' || c == 'O':
		if isYAMLBool(v) {
			return "!!bool"
		}
		if (c == 'n' || c == 'N') && isYAMLNull(v) {
			return "!!null"
		}
	case c == '~':
		if v == "~" {
			return "!!null"
		}
	case c == '<':
		if v == "<<" {
			return "!!merge"
		}
	case c == '=':
		if v == "=" {
			return "!!value"
		}
	case c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9'):
		if isYAMLFloat(v) {
			return "!!float"
		}
		if c != '.' && isYAMLInt(v) {
			return "!!int"
		}
		if c >= '0' && c <= '9' && reTimestamp().MatchString(v) {
			return "!!timestamp"
		}
	}
	return "!!str"
}

// resolve returns what PyYAML's safe_load makes of scalar node n. An error
// means safe_load would refuse the document.
func resolve(n *yaml.Node, isKey bool) (scalar, error) {
	tag := n.Tag
	if n.Style&yaml.TaggedStyle == 0 {
		if isPlain(n) {
			tag = implicitTag(n.Value)
		} else {
			tag = "!!str"
		}
	}
	v := n.Value
	switch tag {
	case "!!str":
		return scalar{kStr, v}, nil
	case "!!null":
		return scalar{kNull, ""}, nil
	case "!!merge":
		if isKey {
			return scalar{kMerge, v}, nil
		}
		return scalar{}, fmt.Errorf("a plain %q cannot be loaded by PyYAML; quote it", v)
	case "!!value":
		// PyYAML turns a "=" key into a string but has no constructor
		// for a "=" value.
		if isKey {
			return scalar{kStr, v}, nil
		}
		return scalar{}, fmt.Errorf("a plain %q cannot be loaded by PyYAML; quote it", v)
	case "!!bool":
		switch strings.ToLower(v) {
		case "yes", "true", "on":
			return scalar{kBool, "true"}, nil
		case "no", "false", "off":
			return scalar{kBool, "false"}, nil
		}
		return scalar{}, fmt.Errorf("%q is not a boolean", v)
	case "!!int":
		if !isYAMLInt(v) {
			return scalar{}, fmt.Errorf("%q is not an integer", v)
		}
		s, ok := pyInt(v)
		if !ok {
			return scalar{}, fmt.Errorf("%q is not an integer", v)
		}
		return scalar{kInt, s}, nil
	case "!!float":
		if !isYAMLFloat(v) && !isYAMLInt(v) {
			return scalar{}, fmt.Errorf("%q is not a float", v)
		}
		f, ok := pyFloat(v)
		if !ok {
			return scalar{}, fmt.Errorf("%q is not a float", v)
		}
		return scalar{kFloat, pyFloatRepr(f)}, nil
	case "!!timestamp":
		return pyTimestamp(v)
	}
	return scalar{}, fmt.Errorf("tag %s is not supported (PyYAML safe_load and ecs-image accept only str, int, float, bool, null, map and seq)", tag)
}

// pyInt mirrors SafeConstructor.construct_yaml_int and returns str(int).
func pyInt(v string) (string, bool) {
	v = strings.ReplaceAll(v, "_", "")
	neg := false
	if v != "" && (v[0] == '-' || v[0] == '+') {
		neg = v[0] == '-'
		v = v[1:]
	}
	n := new(big.Int)
	var ok bool
	switch {
	case v == "0":
		ok = true
	case strings.HasPrefix(v, "0b"):
		_, ok = n.SetString(v[2:], 2)
	case strings.HasPrefix(v, "0x"):
		_, ok = n.SetString(v[2:], 16)
	case strings.HasPrefix(v, "0"):
		_, ok = n.SetString(v, 8)
	case strings.Contains(v, ":"):
		base := big.NewInt(1)
		sixty := big.NewInt(60)
		parts := strings.Split(v, ":")
		ok = true
		for i := len(parts) - 1; i >= 0; i-- {
			d, good := new(big.Int).SetString(parts[i], 10)
			if !good {
				return "", false
			}
			n.Add(n, d.Mul(d, base))
			base.Mul(base, sixty)
		}
	default:
		_, ok = n.SetString(v, 10)
	}
	if !ok {
		return "", false
	}
	if neg {
		n.Neg(n)
	}
	return n.String(), true
}

// pyFloat mirrors SafeConstructor.construct_yaml_float.
func pyFloat(v string) (float64, bool) {
	v = strings.ToLower(strings.ReplaceAll(v, "_", ""))
	sign := 1.0
	if v != "" && (v[0] == '-' || v[0] == '+') {
		if v[0] == '-' {
			sign = -1
		}
		v = v[1:]
	}
	switch {
	case v == ".inf":
		return sign * math.Inf(1), true
	case v == ".nan":
		return math.NaN(), true
	case strings.Contains(v, ":"):
		parts := strings.Split(v, ":")
		base, val := 1.0, 0.0
		for i := len(parts) - 1; i >= 0; i-- {
			d, ok := parseDecimalFloat(parts[i])
			if !ok {
				return 0, false
			}
			val += d * base
			base *= 60
		}
		return sign * val, true
	}
	f, ok := parseDecimalFloat(v)
	return sign * f, ok
}

// parseDecimalFloat parses what Python's float() accepts from the YAML float
// and int patterns: digits with an optional point and exponent.
func parseDecimalFloat(s string) (float64, bool) {
	if s == "" || strings.ContainsAny(s, "xXpP_") || strings.HasPrefix(s, "0b") {
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return f, true // Python overflows to inf and underflows to 0 too
		}
		return 0, false
	}
	return f, true
}

// pyFloatRepr formats f as Python's repr(float) / str(float) does.
func pyFloatRepr(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	// shortest round-trip digits, as "d.ddde±XX"
	e := strconv.FormatFloat(f, 'e', -1, 64)
	neg := strings.HasPrefix(e, "-")
	e = strings.TrimPrefix(e, "-")
	mant, exps, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(exps)
	digits := strings.Replace(mant, ".", "", 1)
	decpt := exp + 1 // value = 0.digits * 10^decpt
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	if decpt <= -4 || decpt > 16 {
		b.WriteByte(digits[0])
		if len(digits) > 1 {
			b.WriteByte('.')
			b.WriteString(digits[1:])
		}
		x := decpt - 1
		b.WriteByte('e')
		if x < 0 {
			b.WriteByte('-')
			x = -x
		} else {
			b.WriteByte('+')
		}
		if x < 10 {
			b.WriteByte('0')
		}
		b.WriteString(strconv.Itoa(x))
		return b.String()
	}
	switch {
	case decpt <= 0:
		b.WriteString("0.")
		b.WriteString(strings.Repeat("0", -decpt))
		b.WriteString(digits)
	case decpt >= len(digits):
		b.WriteString(digits)
		b.WriteString(strings.Repeat("0", decpt-len(digits)))
		b.WriteString(".0")
	default:
		b.WriteString(digits[:decpt])
		b.WriteByte('.')
		b.WriteString(digits[decpt:])
	}
	return b.String()
}

// pyTimestamp mirrors SafeConstructor.construct_yaml_timestamp (PyYAML >=
// 5.1: offsets give timezone-aware datetimes) and returns str() of the
// resulting datetime.date or datetime.datetime.
func pyTimestamp(v string) (scalar, error) {
	m := reTimestampParts().FindStringSubmatch(v)
	if m == nil {
		return scalar{}, fmt.Errorf("%q is not a timestamp", v)
	}
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	year, month, day := atoi(m[1]), atoi(m[2]), atoi(m[3])
	if year < 1 || month < 1 || month > 12 || day < 1 || day > daysIn(year, month) {
		return scalar{}, fmt.Errorf("%q is read as a date by YAML 1.1 but is not a valid date; quote it", v)
	}
	date := fmt.Sprintf("%04d-%02d-%02d", year, month, day)
	if m[4] == "" {
		return scalar{kDate, date}, nil
	}
	hour, minute, second := atoi(m[4]), atoi(m[5]), atoi(m[6])
	if hour > 23 || minute > 59 || second > 59 {
		return scalar{}, fmt.Errorf("%q is read as a timestamp by YAML 1.1 but is not a valid time; quote it", v)
	}
	s := fmt.Sprintf("%s %02d:%02d:%02d", date, hour, minute, second)
	if frac := m[7]; frac != "" {
		if len(frac) > 6 {
			frac = frac[:6]
		}
		frac += strings.Repeat("0", 6-len(frac))
		if us := atoi(frac); us != 0 {
			s += fmt.Sprintf(".%06d", us)
		}
	}
	switch {
	case m[9] != "":
		off := atoi(m[10])*60 + atoi(m[11]) // Python normalises "+05:99"
		if off >= 24*60 {
			return scalar{}, fmt.Errorf("%q has a timezone offset of 24 hours or more", v)
		}
		sign := m[9]
		if off == 0 {
			sign = "+"
		}
		s += fmt.Sprintf("%s%02d:%02d", sign, off/60, off%60)
	case m[8] == "Z":
		s += "+00:00"
	}
	return scalar{kTimestamp, s}, nil
}

func daysIn(year, month int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// pyStrip strips what Python's str.strip() strips: Unicode whitespace,
// including the ASCII separators 0x1c-0x1f.
func pyStrip(s string) string {
	return strings.TrimFunc(s, isPySpace)
}

func isPySpace(r rune) bool {
	switch {
	case r >= 0x09 && r <= 0x0d, r >= 0x1c && r <= 0x20, r == 0x85, r == 0xa0,
		r == 0x1680, r >= 0x2000 && r <= 0x200a, r == 0x2028, r == 0x2029,
		r == 0x202f, r == 0x205f, r == 0x3000:
		return true
	}
	return false
}

// shellQuote is Python's shlex.quote.
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("_@%+=:,./-", c) >= 0) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}
