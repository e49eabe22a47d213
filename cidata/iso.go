package cidata

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

const isoBlock = 2048

// scratchDir is where go-diskfs's ISO9660 writer gets its workspace: RAM
// (/dev/shm) when possible, else the system temporary directory.
var scratchDir = sync.OnceValue(func() string {
	if d, err := os.MkdirTemp("/dev/shm", "ecs-cidata-probe-"); err == nil {
		os.Remove(d)
		return "/dev/shm"
	}
	return os.TempDir()
})

// buildISO writes the seed's files into a private scratch directory, lets
// go-diskfs finalize an ISO9660 image with Rock Ridge and Joliet into
// memory, then normalises what go-diskfs takes from the clock and the
// scratch files (see normalizeISO).
func buildISO(s *Seed) ([]byte, error) {
	ws, err := os.MkdirTemp(scratchDir(), "ecs-cidata-")
	if err != nil {
		return nil, fmt.Errorf("scratch directory: %w", err)
	}
	defer os.RemoveAll(ws)
	for _, f := range s.Files {
		p := filepath.Join(ws, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, f.Data, 0o600); err != nil {
			return nil, err
		}
	}
	size := 64 * isoBlock
	for _, f := range s.Files {
		size += (len(f.Data) + isoBlock - 1) / isoBlock * isoBlock
	}
	mem := newMemStorage(size)
	fsys, err := iso9660.Create(mem, 0, 0, isoBlock, ws)
	if err != nil {
		return nil, fmt.Errorf("iso9660: %w", err)
	}
	err = fsys.Finalize(iso9660.FinalizeOptions{
		RockRidge:           true,
		Joliet:              true,
		VolumeIdentifier:    s.Label,
		PublisherIdentifier: "ECS-IMAGE",
	})
	if err != nil {
		return nil, fmt.Errorf("iso9660: %w", err)
	}
	img := mem.buf
	if len(img) < 17*isoBlock {
		return nil, errors.New("iso9660: image too short")
	}
	// The image ends where the PVD says; go-diskfs may stop writing a few
	// bytes short of the last block (the Joliet path table).
	vs := int(binary.LittleEndian.Uint32(img[16*isoBlock+80:])) * isoBlock
	if vs < len(img) {
		img = img[:vs]
	} else {
		img = append(img, make([]byte, vs-len(img))...)
	}
	if err := normalizeISO(img, s.ModTime); err != nil {
		return nil, fmt.Errorf("iso9660: normalising: %w", err)
	}
	return img, nil
}

// normalizeISO makes a go-diskfs ISO9660 image reproducible and repairs
// two defects. go-diskfs
// stamps the volume descriptors with time.Now() (and sets the expiration
// date to that same instant), and copies modification, access and change
// times, owner, group, mode and link count of the scratch files into the
// directory records and their Rock Ridge PX/TF entries; the change time
// cannot be set from user space at all. This pass rewrites all of them:
//
//   - primary and Joliet volume descriptors: creation and modification
//     date = t, expiration and effective date "not specified";
//   - every directory record of the ISO9660 and the Joliet tree: recording
//     date = t (UTC);
//   - Rock Ridge PX: mode 0444 for files, 0555 for directories, one link
//     per file and 2+subdirectories per directory, uid and gid 0;
//   - Rock Ridge TF: every stamp = t;
//   - directory sizes rounded up to whole blocks (see roundDirSize);
//   - the Joliet tree's links to subdirectories (see fixJolietDirs);
//   - the Rock Ridge extension reference (see rewriteER).
//
// Serial numbers in PX are assigned by go-diskfs in walk order and are
// already deterministic.
func normalizeISO(img []byte, t time.Time) error {
	t = t.UTC()
	rec := dirDate(t)
	long := volDate(t)
	var unset [17]byte
	for i := range 16 {
		unset[i] = '0'
	}

	type tree struct{ loc, size uint32 }
	var trees []tree
	var pvd, joliet []byte
	for sector := 16; ; sector++ {
		off := sector * isoBlock
		if off+isoBlock > len(img) {
			return errors.New("no volume descriptor set terminator")
		}
		vd := img[off : off+isoBlock]
		if string(vd[1:6]) != "CD001" {
			return fmt.Errorf("sector %d: not a volume descriptor", sector)
		}
		if vd[0] == 255 {
			break
		}
		switch {
		case vd[0] == 1 && pvd == nil:
			pvd = vd
		case vd[0] == 2 && vd[88] == 0x25 && vd[89] == 0x2f && joliet == nil:
			joliet = vd
		default:
			continue
		}
		copy(vd[813:830], long[:])
		copy(vd[830:847], long[:])
		copy(vd[847:864], unset[:])
		copy(vd[864:881], unset[:])
		root := vd[156 : 156+34]
		copy(root[18:25], rec[:])
		roundDirSize(root)
		trees = append(trees, tree{binary.LittleEndian.Uint32(root[2:6]), binary.LittleEndian.Uint32(root[10:14])})
	}

	if pvd != nil && joliet != nil {
		if err := fixJolietDirs(img, pvd, joliet); err != nil {
			return err
		}
	}
	for i, tr := range trees {
		// First pass: count the subdirectories of every directory extent.
		subdirs := map[uint32]uint32{}
		var count func(loc, size uint32, depth int) error
		count = func(loc, size uint32, depth int) error {
			if depth > 64 {
				return errors.New("directory tree too deep")
			}
			return eachRecord(img, loc, size, func(r []byte) error {
				if r[25]&2 == 0 || isDotRecord(r) {
					return nil
				}
				subdirs[loc]++
				return count(binary.LittleEndian.Uint32(r[2:6]), binary.LittleEndian.Uint32(r[10:14]), depth+1)
			})
		}
		if err := count(tr.loc, tr.size, 0); err != nil {
			return err
		}
		// Second pass: patch every record.
		ceRefs := map[int]int{}
		var patch func(loc, size uint32) error
		patch = func(loc, size uint32) error {
			return eachRecord(img, loc, size, func(r []byte) error {
				copy(r[18:25], rec[:])
				isDir := r[25]&2 != 0
				target := binary.LittleEndian.Uint32(r[2:6])
				nlink := uint32(1)
				if isDir {
					nlink = 2 + subdirs[target]
					roundDirSize(r)
				}
				if err := patchSUSP(img, r, isDir, nlink, rec, ceRefs); err != nil {
					return err
				}
				if isDir && !isDotRecord(r) {
					return patch(target, binary.LittleEndian.Uint32(r[10:14]))
				}
				return nil
			})
		}
		if err := patch(tr.loc, tr.size); err != nil {
			return err
		}
		if i == 0 {
			if err := rewriteER(img, tr.loc, ceRefs); err != nil {
				return err
			}
		}
	}
	return nil
}

// Rock Ridge 1.10 extension reference (RRIP, section 5.5): identifier,
// descriptor and source as the specification fixes them.
const (
	rripID  = "RRIP_1991A"
	rripDes = "THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS"
	rripSrc = "PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION."
)

// rewriteER replaces go-diskfs's Rock Ridge 1.12 extension reference
// ("IEEE_P1282") in the root directory's continuation area by the 1.10 one
// ("RRIP_1991A") that mkisofs and xorriso write. Linux accepts either, but
// some readers (github.com/kdomanski/iso9660 among them) only recognise
// RRIP_1991A and would otherwise show 8.3 names. The 44-byte PX entries
// stay as they are: their first 36 bytes are the 1.10 layout and readers
// skip by the entry length, as they do for xorriso's images. The rewrite
// only happens when the continuation block is the root's alone.
func rewriteER(img []byte, rootLoc uint32, ceRefs map[int]int) error {
	start := int(rootLoc) * isoBlock
	r := img[start : start+int(img[start])]
	if len(r) < 34 || !isDotRecord(r) {
		return errors.New("root directory does not start with its '.' record")
	}
	area := r[34:]
	for len(area) >= 4 {
		n := int(area[2])
		if n < 4 || n > len(area) {
			return nil
		}
		if string(area[0:2]) == "CE" && n >= 28 {
			blk := int(binary.LittleEndian.Uint32(area[4:8]))
			off := int(binary.LittleEndian.Uint32(area[12:16]))
			ln := int(binary.LittleEndian.Uint32(area[20:24]))
			s := blk*isoBlock + off
			er := img[s : s+ln]
			if ceRefs[blk] != 1 || ln < 8 || string(er[0:2]) != "ER" || int(er[4]) < len(rockRidge112ID) || string(er[8:8+len(rockRidge112ID)]) != rockRidge112ID {
				return nil
			}
			newLen := 8 + len(rripID) + len(rripDes) + len(rripSrc)
			if off+max(newLen, ln) > isoBlock {
				return nil
			}
			clear(img[s : s+ln])
			e := img[s : s+newLen]
			copy(e, "ER")
			e[2], e[3] = byte(newLen), 1
			e[4], e[5], e[6], e[7] = byte(len(rripID)), byte(len(rripDes)), byte(len(rripSrc)), 1
			copy(e[8:], rripID+rripDes+rripSrc)
			putBoth32(area[20:28], uint32(newLen))
			return nil
		}
		area = area[n:]
	}
	return nil
}

const rockRidge112ID = "IEEE_P1282"

// fixJolietDirs repairs the Joliet tree of a go-diskfs image: the records
// of subdirectories in Joliet directories point at the primary tree's
// directory extents (with their sizes) instead of the Joliet ones, so a
// Joliet reader finds 8.3 names below the root (isoinfo -J shows
// "/openstack/___"). The two path tables list the directories in the same
// order, which maps each primary extent to its Joliet extent; the size is
// taken from the Joliet directory's own "." record.
func fixJolietDirs(img, pvd, joliet []byte) error {
	primary, err := pathTableExtents(img, pvd)
	if err != nil {
		return err
	}
	jol, err := pathTableExtents(img, joliet)
	if err != nil {
		return err
	}
	if len(primary) != len(jol) {
		return errors.New("primary and Joliet path tables differ in length")
	}
	remap := map[uint32]uint32{}
	for i := range primary {
		remap[primary[i]] = jol[i]
	}
	seen := map[uint32]bool{}
	var fix func(loc, size uint32) error
	fix = func(loc, size uint32) error {
		if seen[loc] {
			return errors.New("loop in the Joliet directory tree")
		}
		seen[loc] = true
		return eachRecord(img, loc, size, func(r []byte) error {
			if r[25]&2 == 0 || isDotRecord(r) {
				return nil
			}
			target := binary.LittleEndian.Uint32(r[2:6])
			if j, ok := remap[target]; ok && j != target {
				start := int(j) * isoBlock
				if start+34 > len(img) {
					return errors.New("a Joliet directory lies outside the image")
				}
				putBoth32(r[2:10], j)
				copy(r[10:18], img[start+10:start+18]) // size from its "." record
				target = j
			}
			return fix(target, binary.LittleEndian.Uint32(r[10:14]))
		})
	}
	root := joliet[156 : 156+34]
	return fix(binary.LittleEndian.Uint32(root[2:6]), binary.LittleEndian.Uint32(root[10:14]))
}

// pathTableExtents lists the directory extents in the type L path table
// of a volume descriptor, in path table order.
func pathTableExtents(img, vd []byte) ([]uint32, error) {
	size := int(binary.LittleEndian.Uint32(vd[132:136]))
	start := int(binary.LittleEndian.Uint32(vd[140:144])) * isoBlock
	if start+size > len(img) || size < 0 {
		return nil, errors.New("path table outside the image")
	}
	pt := img[start : start+size]
	var out []uint32
	for len(pt) >= 8 {
		n := 8 + int(pt[0]) + int(pt[0])%2
		if n > len(pt) {
			return nil, errors.New("bad path table record")
		}
		out = append(out, binary.LittleEndian.Uint32(pt[2:6]))
		pt = pt[n:]
	}
	return out, nil
}

// roundDirSize rounds the data length of directory record r up to whole
// blocks, as mkisofs and xorriso record it (go-diskfs records the bytes
// used; isovfy reports that as "Directory has unusual size"). The blocks
// are allocated to the directory either way.
func roundDirSize(r []byte) {
	n := binary.LittleEndian.Uint32(r[10:14])
	putBoth32(r[10:18], (n+isoBlock-1)/isoBlock*isoBlock)
}

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

func isDotRecord(r []byte) bool { return r[32] == 1 && (r[33] == 0 || r[33] == 1) }

// patchSUSP rewrites the Rock Ridge PX and TF entries of record r,
// following CE continuation areas.
func patchSUSP(img, r []byte, isDir bool, nlink uint32, date [7]byte, ceRefs map[int]int) error {
	nameLen := int(r[32])
	su := 33 + nameLen
	if nameLen%2 == 0 {
		su++ // padding byte
	}
	area := r[min(su, len(r)):]
	for hops := 0; area != nil; hops++ {
		if hops > 16 {
			return errors.New("too many SUSP continuation areas")
		}
		var next []byte
		for len(area) >= 4 {
			n := int(area[2])
			if n < 4 || n > len(area) {
				break
			}
			e := area[:n]
			switch string(e[0:2]) {
			case "PX":
				if n < 36 {
					return errors.New("short Rock Ridge PX entry")
				}
				mode := uint32(0o100444)
				if isDir {
					mode = 0o40555
				}
				putBoth32(e[4:12], mode)
				putBoth32(e[12:20], nlink)
				putBoth32(e[20:28], 0)
				putBoth32(e[28:36], 0)
			case "TF":
				flags := e[4]
				size := 7
				if flags&0x80 != 0 {
					size = 17
				}
				for p := 5; p+size <= n; p += size {
					if size == 7 {
						copy(e[p:p+7], date[:])
					} else {
						return errors.New("long-form Rock Ridge TF entry not expected")
					}
				}
			case "CE":
				if n < 28 {
					return errors.New("short SUSP CE entry")
				}
				blk := int(binary.LittleEndian.Uint32(e[4:8]))
				off := int(binary.LittleEndian.Uint32(e[12:16]))
				ln := int(binary.LittleEndian.Uint32(e[20:24]))
				s := blk*isoBlock + off
				if s < 0 || s+ln > len(img) {
					return errors.New("SUSP CE area outside the image")
				}
				next = img[s : s+ln]
				ceRefs[blk]++
			case "ST":
				area = area[:0]
				continue
			}
			area = area[n:]
		}
		area = next
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
