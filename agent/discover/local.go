package discover

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/ecs-image/ecs-image/agent/host"
)

func readLocal(h *host.Host, path, prefix string) ([]byte, string, error) {
	f, err := os.Open(h.Path(path))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", errAbsent
	}
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	return data, prefix + path, nil
}
