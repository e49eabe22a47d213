package cidata

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/diskfs/go-diskfs/backend"
)

// memStorage is a growable in-memory backend.Storage for go-diskfs, so that
// images are assembled in RAM and reach the disk in one write.
type memStorage struct {
	buf []byte
	off int64
}

var _ backend.Storage = (*memStorage)(nil)

// newMemStorage returns an empty storage with room for capacity bytes.
func newMemStorage(capacity int) *memStorage {
	return &memStorage{buf: make([]byte, 0, capacity)}
}

func (m *memStorage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("memStorage: negative offset")
	}
	if off >= int64(len(m.buf)) {
		return 0, io.EOF
	}
	n := copy(p, m.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memStorage) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("memStorage: negative offset")
	}
	end := off + int64(len(p))
	if end > int64(len(m.buf)) {
		if end <= int64(cap(m.buf)) {
			m.buf = m.buf[:end]
		} else {
			nb := make([]byte, end, max(end, 2*int64(cap(m.buf))))
			copy(nb, m.buf)
			m.buf = nb
		}
	}
	return copy(m.buf[off:], p), nil
}

func (m *memStorage) Read(p []byte) (int, error) {
	n, err := m.ReadAt(p, m.off)
	m.off += int64(n)
	return n, err
}

func (m *memStorage) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += m.off
	case io.SeekEnd:
		offset += int64(len(m.buf))
	default:
		return 0, errors.New("memStorage: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("memStorage: negative position")
	}
	m.off = offset
	return offset, nil
}

func (m *memStorage) Stat() (fs.FileInfo, error)              { return memInfo{size: int64(len(m.buf))}, nil }
func (m *memStorage) Close() error                            { return nil }
func (m *memStorage) Sys() (*os.File, error)                  { return nil, backend.ErrNotSuitable }
func (m *memStorage) Writable() (backend.WritableFile, error) { return m, nil }
func (m *memStorage) Path() string                            { return "" }

// memInfo is the fs.FileInfo of a memStorage.
type memInfo struct{ size int64 }

func (memInfo) Name() string       { return "memory" }
func (i memInfo) Size() int64      { return i.size }
func (memInfo) Mode() fs.FileMode  { return 0o600 }
func (memInfo) ModTime() time.Time { return time.Time{} }
func (memInfo) IsDir() bool        { return false }
func (memInfo) Sys() any           { return nil }
