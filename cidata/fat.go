package cidata

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/filesystem/fat12"
)

const fatSector = 512

// buildFAT makes a FAT12 image labelled s.Label holding s.Files at its
// root. FAT12 is what mkfs.fat picks for an image of this size; the size
// grows with the content (1 MiB at least). go-diskfs is asked for a
// reproducible file system (volume serial 0), then normalizeFAT sets the
// timestamps and a serial derived from the content.
func buildFAT(s *Seed) ([]byte, error) {
	need := 0
	for _, f := range s.Files {
		if strings.Contains(f.Path, "/") {
			return nil, fmt.Errorf("vfat seed: %s: only files at the root are supported", f.Path)
		}
		need += (len(f.Data) + 2047) / 2048 * 2048
	}
	const unit = 64 << 10
	size := max(1<<20, (need+(128<<10)+unit-1)/unit*unit)
	mem := newMemStorage(size)
	fsys, err := fat12.Create(mem, int64(size), 0, fatSector, s.Label, true)
	if err != nil {
		return nil, fmt.Errorf("fat12: %w", err)
	}
	for _, f := range s.Files {
		fh, err := fsys.OpenFile(path.Join("/", f.Path), os.O_CREATE|os.O_RDWR)
		if err != nil {
			return nil, fmt.Errorf("fat12: %s: %w", f.Path, err)
		}
		if _, err := fh.Write(f.Data); err != nil {
			return nil, fmt.Errorf("fat12: %s: %w", f.Path, err)
		}
		if err := fh.Close(); err != nil {
			return nil, fmt.Errorf("fat12: %s: %w", f.Path, err)
		}
	}
	img := mem.buf[:size]
	serial := sha256.Sum256([]byte(s.InstanceID))
	if err := normalizeFAT(img, s.ModTime, binary.LittleEndian.Uint32(serial[:4])); err != nil {
		return nil, fmt.Errorf("fat12: normalising: %w", err)
	}
	return img, nil
}

// normalizeFAT sets the volume serial number of a FAT12 image and the
// creation, modification and access stamps of every root directory entry
// (files and the volume label, which go-diskfs stamps with the clock).
func normalizeFAT(img []byte, t time.Time, serial uint32) error {
	if len(img) < fatSector || img[510] != 0x55 || img[511] != 0xaa {
		return errors.New("no boot sector")
	}
	bps := int(binary.LittleEndian.Uint16(img[11:13]))
	reserved := int(binary.LittleEndian.Uint16(img[14:16]))
	nfats := int(img[16])
	rootEntries := int(binary.LittleEndian.Uint16(img[17:19]))
	spf := int(binary.LittleEndian.Uint16(img[22:24]))
	if bps != fatSector || rootEntries == 0 || spf == 0 || string(img[54:62]) != "FAT12   " {
		return errors.New("not a FAT12 boot sector")
	}
	if img[38] == 0x29 { // extended boot signature: serial, label and type follow
		binary.LittleEndian.PutUint32(img[39:43], serial)
	}
	date, clock := fatDateTime(t)
	root := (reserved + nfats*spf) * bps
	if root+rootEntries*32 > len(img) {
		return errors.New("root directory outside the image")
	}
	fats := make([][]byte, nfats)
	for i := range fats {
		off := (reserved + i*spf) * bps
		fats[i] = img[off : off+spf*bps]
	}
	used := map[uint32]bool{}
	for i := range rootEntries {
		e := img[root+i*32 : root+i*32+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xe5 || e[11] == 0x0f { // deleted, long-name slot
			continue
		}
		if e[11]&0x10 != 0 {
			return errors.New("subdirectories are not supported")
		}
		e[13] = 0 // creation time, 10 ms units
		binary.LittleEndian.PutUint16(e[14:16], clock)
		binary.LittleEndian.PutUint16(e[16:18], date)
		binary.LittleEndian.PutUint16(e[18:20], date) // last access date
		binary.LittleEndian.PutUint16(e[22:24], clock)
		binary.LittleEndian.PutUint16(e[24:26], date)
		// Follow the file's cluster chain.
		for c, n := uint32(binary.LittleEndian.Uint16(e[26:28])), 0; c >= 2 && c < 0xff0; n++ {
			if n > spf*bps || used[c] {
				return errors.New("cluster chain loops")
			}
			used[c] = true
			c = fat12Get(fats[0], c)
		}
	}
	// go-diskfs's FAT12 writer marks cluster 2 as allocated without any
	// file using it; fsck.fat reports such clusters. Free every allocated
	// cluster no file uses, in all FAT copies.
	maxCluster := uint32(spf*bps*2/3) - 1
	if total := int(binary.LittleEndian.Uint16(img[19:21])); total > 0 {
		spc := int(img[13])
		data := total - reserved - nfats*spf - (rootEntries*32+bps-1)/bps
		maxCluster = min(maxCluster, uint32(data/spc)+1)
	}
	for c := uint32(2); c <= maxCluster; c++ {
		if fat12Get(fats[0], c) != 0 && !used[c] {
			for _, f := range fats {
				fat12Set(f, c, 0)
			}
		}
	}
	return nil
}

// fat12Get returns the FAT12 entry of cluster c.
func fat12Get(fat []byte, c uint32) uint32 {
	o := c * 3 / 2
	v := uint32(fat[o]) | uint32(fat[o+1])<<8
	if c&1 != 0 {
		return v >> 4
	}
	return v & 0xfff
}

// fat12Set sets the FAT12 entry of cluster c to v.
func fat12Set(fat []byte, c, v uint32) {
	o := c * 3 / 2
	if c&1 != 0 {
		fat[o] = fat[o]&0x0f | byte(v<<4)
		fat[o+1] = byte(v >> 4)
	} else {
		fat[o] = byte(v)
		fat[o+1] = fat[o+1]&0xf0 | byte(v>>8)&0x0f
	}
}

// fatDateTime returns the FAT date and time of t (UTC), clamped to the
// FAT epoch 1980-01-01.
func fatDateTime(t time.Time) (date, clock uint16) {
	t = t.UTC()
	if t.Year() < 1980 {
		t = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	date = uint16(t.Year()-1980)<<9 | uint16(t.Month())<<5 | uint16(t.Day())
	clock = uint16(t.Hour())<<11 | uint16(t.Minute())<<5 | uint16(t.Second()/2)
	return date, clock
}
