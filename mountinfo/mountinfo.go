// Package mountinfo reads the kernel's table of mounts
// (/proc/self/mountinfo, proc(5)) and undoes the octal escapes it and
// fstab(5) use for blanks in paths.
package mountinfo

import (
	"os"
	"strconv"
	"strings"
)

// Path is the calling process's mount table.
const Path = "/proc/self/mountinfo"

// Mount is one line of the table.
type Mount struct {
	// Point is where the file system is mounted.
	Point string
	// Source is the mounted device or the file system's source string.
	Source string
	// FSType is the file system type, such as ext4.
	FSType string
}

// Parse returns the mounts in data, in table order (later mounts on the
// same point hide earlier ones). Malformed lines are skipped.
func Parse(data []byte) []Mount {
	var out []Mount
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 2 {
			continue
		}
		out = append(out, Mount{Point: Unescape(f[4]), FSType: g[0], Source: Unescape(g[1])})
	}
	return out
}

// Read parses the calling process's mount table.
func Read() ([]Mount, error) {
	data, err := os.ReadFile(Path)
	if err != nil {
		return nil, err
	}
	return Parse(data), nil
}

// Unescape undoes the \ooo escapes of mountinfo and fstab (\040 = space).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
