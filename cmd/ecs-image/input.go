package main

import (
	"fmt"
	"io"
	"os"
)

// inputLimit bounds every input file a flag names (--extra, --recipients,
// --meta-data, --env, -e, ...), as env validate bounds an env.yml: 1 MiB.
const inputLimit = 1 << 20

// readInput reads the file named by flag, at most inputLimit bytes: a
// regular file or a pipe (a device such as /dev/zero is refused, and a
// larger input is refused with a clear error instead of exhausting memory).
// "" reads nothing.
func readInput(flag, name string) ([]byte, error) {
	if name == "" {
		return nil, nil
	}
	st, err := os.Stat(name)
	if err != nil {
		return nil, badInputf("--%s: %v", flag, err)
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeNamedPipe == 0 {
		return nil, badInputf("--%s: %s is not a regular file", flag, name)
	}
	if st.Mode().IsRegular() && st.Size() > inputLimit {
		return nil, badInputf("--%s: %s is %d bytes, more than the limit of %d", flag, name, st.Size(), inputLimit)
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, badInputf("--%s: %v", flag, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, inputLimit+1))
	if err != nil {
		return nil, fmt.Errorf("--%s: %s: %w", flag, name, err)
	}
	if len(data) > inputLimit {
		return nil, badInputf("--%s: %s is more than the limit of %d bytes", flag, name, inputLimit)
	}
	return data, nil
}
