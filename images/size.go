package images

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize parses a size: a byte count, or a number with a binary unit K,
// M, G or T (1024-based; "iB" or "B" may follow, in any case), like
// "20G", "512M", "1.5GiB" or "10737418240". The size must be a positive
// whole number of bytes, at most 1P. It is the one size parser of the
// builder (template disk_size) and of `base build --size`.
func ParseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	v := f * float64(mult)
	if err != nil || t == "" || !(v >= 1 && v <= 1<<50) || v != math.Trunc(v) || strings.ContainsAny(t, "EXP_") {
		return 0, fmt.Errorf("size %q: want a positive size like 20G or 512M", s)
	}
	return int64(v), nil
}

// formatSize writes n as ParseSize reads it, in the largest whole unit
// (G or M), else in bytes.
func formatSize(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	}
	return strconv.FormatInt(n, 10)
}
