package cidata

import (
	"encoding/binary"
	"fmt"
	"time"
)

const isoBlock = 2048

// eachRecord calls fn for every directory record in the extent at block loc.
func eachRecord(img []byte, loc, size uint32, fn func(r []byte) error) error {
	start := int(loc) * isoBlock
	end := start + int(size)
	if start < 0 || end > len(img) || end < start {
		return fmt.Errorf("directory extent %d+%d outside the image", loc, size)
	}
	for off := start; off < end; {
		n := int(img[off])
		if n == 0 {
			off = (off/isoBlock + 1) * isoBlock // records do not cross blocks
			continue
		}
		if n < 34 || off+n > end {
			return fmt.Errorf("bad directory record at byte %d", off)
		}
		if err := fn(img[off : off+n]); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// putBoth32 writes v in ISO 9660 both-byte-order form (LE then BE).
func putBoth32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b[0:4], v)
	binary.BigEndian.PutUint32(b[4:8], v)
}

// dirDate is the 7-byte ISO 9660 directory record date of t (UTC).
func dirDate(t time.Time) [7]byte {
	return [7]byte{byte(t.Year() - 1900), byte(t.Month()), byte(t.Day()), byte(t.Hour()), byte(t.Minute()), byte(t.Second()), 0}
}

// volDate is the 17-byte volume descriptor date of t (UTC).
func volDate(t time.Time) [17]byte {
	var b [17]byte
	copy(b[:16], fmt.Sprintf("%04d%02d%02d%02d%02d%02d00", t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second()))
	return b
}

func isDotRecord(r []byte) bool { return r[32] == 1 && (r[33] == 0 || r[33] == 1) }
