package images

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"4G": 4 << 30, "4GiB": 4 << 30, "4gib": 4 << 30, "4GB": 4 << 30, "512M": 512 << 20, "1.5G": 3 << 29,
		"1024": 1024, "2t": 2 << 40, " 20G ": 20 << 30, "1K": 1024, "0.5K": 512, "1024T": 1 << 50,
	} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "iB", "-1G", "0", "0G", "4X", "four", "lots", "1.1K", "0.3", "1025T", "1e3", "0x10", "1_000", "Inf", "NaN", "1P"} {
		if n, err := ParseSize(bad); err == nil {
			t.Errorf("%q accepted: %d", bad, n)
		}
	}
	for _, n := range []int64{4 << 30, 512 << 20, 1000} {
		if back, err := ParseSize(formatSize(n)); err != nil || back != n {
			t.Errorf("formatSize(%d) = %s: %d %v", n, formatSize(n), back, err)
		}
	}
}
