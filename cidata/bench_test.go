package cidata

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkBuild measures seeds per second built in memory from one env.yml
// (validation included).
func BenchmarkBuild(b *testing.B) {
	data := testEnv(b)
	for _, f := range Formats {
		b.Run(string(f), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := Build(Options{Format: f, UserData: data}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "seeds/s")
		})
	}
}

// BenchmarkWriteDistinct writes one seed file per distinct env.yml (the
// env file is read and validated each time), as a batch of sites would.
func BenchmarkWriteDistinct(b *testing.B) {
	base := testEnv(b)
	dir := b.TempDir()
	const n = 1000
	envs := make([]string, n)
	for i := range envs {
		envs[i] = filepath.Join(dir, fmt.Sprintf("env%04d.yml", i))
		data := bytes.Replace(base, []byte(testDomain), fmt.Appendf(nil, "seed%04d.example.org", i), 1)
		if err := os.WriteFile(envs[i], data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	i := 0
	for b.Loop() {
		p := envs[i%n]
		data, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		if err := Write(p+".iso", Options{UserData: data, UserDataName: p}); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "seeds/s")
}
