package env

// Hand-written matchers for the patterns every env.yml check needs, so
// that a check compiles no regular expression (compiling those five took
// ≈0.25 ms of `ecs-image cidata`'s ≈3 ms of work). match_test.go holds the
// regular expressions they replace and checks them against each other.

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlnum(c byte) bool { return isDigit(c) || c|0x20 >= 'a' && c|0x20 <= 'z' }
func isHex(c byte) bool   { return isDigit(c) || c|0x20 >= 'a' && c|0x20 <= 'f' }

// the ...U matchers also take the digit separator "_"
func isDigitU(c byte) bool   { return isDigit(c) || c == '_' }
func isOctalU(c byte) bool   { return c >= '0' && c <= '7' || c == '_' }
func isBinaryU(c byte) bool  { return c == '0' || c == '1' || c == '_' }
func isHexU(c byte) bool     { return isHex(c) || c == '_' }
func isHostChar(c byte) bool { return isAlnum(c) || c == '_' || c == '.' || c == '-' }

// span returns the index of the first byte from i on that ok refuses.
func span(s string, i int, ok func(byte) bool) int {
	for i < len(s) && ok(s[i]) {
		i++
	}
	return i
}

// all reports whether s is non-empty and ok accepts every byte of it.
func all(s string, ok func(byte) bool) bool { return s != "" && span(s, 0, ok) == len(s) }

// isDNSLabel: ^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$
func isDNSLabel(s string) bool {
	return len(s) >= 1 && len(s) <= 63 && isAlnum(s[0]) && isAlnum(s[len(s)-1]) &&
		all(s, func(c byte) bool { return isAlnum(c) || c == '-' })
}

// isAllowedHost: ^(?:\*|\.?[A-Za-z0-9_.-]+(?::[0-9]+)?|\[[0-9A-Fa-f:.]+\](?::[0-9]+)?)$
func isAllowedHost(s string) bool {
	if s == "*" {
		return true
	}
	var i int
	if s != "" && s[0] == '[' {
		i = span(s, 1, func(c byte) bool { return isHex(c) || c == ':' || c == '.' })
		if i == 1 || i >= len(s) || s[i] != ']' {
			return false
		}
		i++
	} else if i = span(s, 0, isHostChar); i == 0 {
		return false
	}
	return i == len(s) || s[i] == ':' && all(s[i+1:], isDigit)
}

// isYAMLBool: PyYAML's bool resolver.
func isYAMLBool(s string) bool {
	switch s {
	case "yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE",
		"false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF":
		return true
	}
	return false
}

// isYAMLNull: PyYAML's null resolver, ^(?:~|null|Null|NULL|)$.
func isYAMLNull(s string) bool {
	switch s {
	case "", "~", "null", "Null", "NULL":
		return true
	}
	return false
}

// sexagesimal returns the end of one or more ":[0-5]?[0-9]" groups from i
// (i itself when there is none). Taking two digits whenever the first is
// 0-5 is what the regular expression does: after one digit, a second one
// could only be followed by the next group or the end.
func sexagesimal(s string, i int) int {
	for i+1 < len(s) && s[i] == ':' && isDigit(s[i+1]) {
		if i+2 < len(s) && s[i+1] <= '5' && isDigit(s[i+2]) {
			i += 3
		} else {
			i += 2
		}
	}
	return i
}

// isYAMLFloat: PyYAML's float resolver,
//
//	^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
//	|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
//	|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
//	|[-+]?\.(?:inf|Inf|INF)
//	|\.(?:nan|NaN|NAN))$
func isYAMLFloat(s string) bool {
	switch s {
	case ".nan", ".NaN", ".NAN":
		return true
	}
	t := s
	signed := t != "" && (t[0] == '-' || t[0] == '+')
	if signed {
		t = t[1:]
	}
	switch t {
	case ".inf", ".Inf", ".INF":
		return true
	case "":
		return false
	}
	exponent := func(r string) bool {
		return r == "" || len(r) >= 3 && (r[0] == 'e' || r[0] == 'E') && (r[1] == '-' || r[1] == '+') && all(r[2:], isDigit)
	}
	if t[0] == '.' {
		return !signed && len(t) > 1 && isDigit(t[1]) && exponent(t[span(t, 2, isDigitU):])
	}
	if !isDigit(t[0]) {
		return false
	}
	i := span(t, 1, isDigitU)
	if i < len(t) && t[i] == '.' {
		return exponent(t[span(t, i+1, isDigitU):])
	}
	j := sexagesimal(t, i)
	return j > i && j < len(t) && t[j] == '.' && span(t, j+1, isDigitU) == len(t)
}

// isYAMLInt: PyYAML's int resolver,
//
//	^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)
//	|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$
func isYAMLInt(s string) bool {
	if s != "" && (s[0] == '-' || s[0] == '+') {
		s = s[1:]
	}
	switch {
	case s == "":
		return false
	case s[0] == '0':
		switch {
		case len(s) == 1:
			return true
		case s[1] == 'b':
			return all(s[2:], isBinaryU)
		case s[1] == 'x':
			return all(s[2:], isHexU)
		}
		return all(s[1:], isOctalU)
	case isDigit(s[0]):
		i := span(s, 1, isDigitU)
		return i == len(s) || sexagesimal(s, i) == len(s)
	}
	return false
}
