package images

import (
	"io"
	"os"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestMain(m *testing.M) {
	if os.Getenv("ECS_TEST_LOG") == "" {
		logrus.SetOutput(io.Discard)
	}
	os.Exit(m.Run())
}
