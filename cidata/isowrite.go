package cidata

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
)

// This file writes the ISO9660 images of NoCloud and config-2 seeds in
// memory, in one pass, without go-diskfs or a scratch directory. The
// layout is what genisoimage -R -J (cloud-localds) writes for the same
// files: a primary volume descriptor with level-1 names and Rock Ridge
// (RRIP 1.10: RR, PX, TF, NM; SP and a CE to the ER "RRIP_1991A" in the
// root's "." record), a Joliet supplementary volume descriptor (UCS-2,
// level 3) with the names as written (no ";1"), both trees sharing the file data.
// Every date is the seed's ModTime; modes are 0444 for files and 0555 for
// directories, owner and group 0: the image depends on nothing but the
// seed.
//
// Blocks, in order: 16 empty, the primary and Joliet volume descriptors,
// the terminator, the four path tables (primary L and M, Joliet L and M),
// the continuation block holding the ER, the primary directories, the
// Joliet directories, the files' data.

// isoNode is a file or directory of the image being written.
type isoNode struct {
	name     string // as in the seed ("" for the root)
	data     []byte // files only
	dir      bool
	parent   *isoNode
	children []*isoNode
	iso      string // level-1 identifier ("USER_DAT.;1", "OPENSTAC")
	joliet   []byte // UCS-2 big-endian identifier

	loc, size   uint32 // primary extent (directories) or data extent (files)
	jloc, jsize uint32 // Joliet directory extent
	num, jnum   int    // path table numbers (directories; 1-based)
}

// isoWriter holds what is shared while the image is assembled.
type isoWriter struct {
	img  []byte
	date [7]byte
	ceAt uint32 // block of the ER continuation area
}

const (
	rripID  = "RRIP_1991A"
	rripDes = "THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS"
	rripSrc = "PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION."
	erLen   = 8 + len(rripID) + len(rripDes) + len(rripSrc)

	// Rock Ridge RR flags (RRIP 1.09, still written by genisoimage).
	rrPX = 0x01
	rrNM = 0x08
	rrTF = 0x80

	maxISODepth = 7 // ISO 9660 allows 8 levels including the root
)

// buildISO returns the ISO9660 image of s (NoCloud or config-2).
func buildISO(s *Seed) ([]byte, error) {
	root := &isoNode{dir: true}
	for _, f := range s.Files {
		if err := addISOFile(root, f); err != nil {
			return nil, fmt.Errorf("iso9660: %s: %w", f.Path, err)
		}
	}
	if err := assignISONames(root); err != nil {
		return nil, fmt.Errorf("iso9660: %w", err)
	}
	dirs := pathTableOrder(root, func(n *isoNode) string { return n.iso })
	jdirs := pathTableOrder(root, func(n *isoNode) string { return string(n.joliet) })
	for i, d := range dirs {
		d.num = i + 1
	}
	for i, d := range jdirs {
		d.jnum = i + 1
	}

	// Allocate blocks.
	next := uint32(16 + 3) // system area, PVD, Joliet SVD, terminator
	ptSize := pathTableSize(dirs, func(n *isoNode) int { return len(n.iso) })
	jptSize := pathTableSize(jdirs, func(n *isoNode) int { return len(n.joliet) })
	ptBlocks := blocks(ptSize)
	jptBlocks := blocks(jptSize)
	ptL, ptM := next, next+ptBlocks
	next += 2 * ptBlocks
	jptL, jptM := next, next+jptBlocks
	next += 2 * jptBlocks
	w := &isoWriter{date: dirDate(s.ModTime.UTC()), ceAt: next}
	next++
	for _, d := range dirs {
		d.size = blocks(w.dirBytes(d, false)) * isoBlock
		d.loc = next
		next += d.size / isoBlock
	}
	for _, d := range dirs {
		d.jsize = blocks(w.dirBytes(d, true)) * isoBlock
		d.jloc = next
		next += d.jsize / isoBlock
	}
	var files []*isoNode
	walkISO(root, func(n *isoNode) {
		if !n.dir {
			files = append(files, n)
		}
	})
	for _, f := range files {
		if uint64(len(f.data)) > 1<<31 {
			return nil, fmt.Errorf("iso9660: %s: too large", f.name)
		}
		f.loc, f.size = next, uint32(len(f.data))
		next += blocks(len(f.data))
	}
	if next > 1<<20 { // 2 GiB: far beyond any seed
		return nil, errors.New("iso9660: image too large")
	}

	w.img = make([]byte, int(next)*isoBlock)
	img := w.img
	w.volumeDescriptor(img[16*isoBlock:], s, root, false, ptSize, ptL, ptM)
	w.volumeDescriptor(img[17*isoBlock:], s, root, true, jptSize, jptL, jptM)
	term := img[18*isoBlock:]
	term[0], term[6] = 255, 1
	copy(term[1:6], "CD001")
	writePathTables(img, dirs, ptL, ptM, func(n *isoNode) ([]byte, uint32, int) { return []byte(n.iso), n.loc, n.num })
	writePathTables(img, jdirs, jptL, jptM, func(n *isoNode) ([]byte, uint32, int) { return n.joliet, n.jloc, n.jnum })
	er := img[int(w.ceAt)*isoBlock:]
	copy(er, "ER")
	er[2], er[3] = byte(erLen), 1
	er[4], er[5], er[6], er[7] = byte(len(rripID)), byte(len(rripDes)), byte(len(rripSrc)), 1
	copy(er[8:], rripID+rripDes+rripSrc)
	for _, d := range dirs {
		w.writeDir(d, false)
		w.writeDir(d, true)
	}
	for _, f := range files {
		copy(img[int(f.loc)*isoBlock:], f.data)
	}
	return img, nil
}

// addISOFile adds the file f below root, creating its directories.
func addISOFile(root *isoNode, f SeedFile) error {
	parts := strings.Split(f.Path, "/")
	if len(parts) > maxISODepth {
		return errors.New("nested too deep")
	}
	d := root
	for i, p := range parts {
		if p == "" || p == "." || p == ".." || len(p) > 64 {
			return fmt.Errorf("bad name %q", p)
		}
		var c *isoNode
		for _, x := range d.children {
			if x.name == p {
				c = x
			}
		}
		last := i == len(parts)-1
		switch {
		case c == nil:
			c = &isoNode{name: p, dir: !last, parent: d}
			if last {
				c.data = f.Data
			}
			d.children = append(d.children, c)
		case last || !c.dir:
			return errors.New("name used twice")
		}
		d = c
	}
	return nil
}

// assignISONames gives every node its level-1 and Joliet identifiers and
// sorts the children of every directory as ISO 9660 (and Joliet) wants.
func assignISONames(d *isoNode) error {
	seen := map[string]bool{}
	for _, c := range sortedByName(d.children) {
		c.iso = level1Name(c.name, c.dir)
		for i := 0; seen[c.iso]; i++ {
			// genisoimage's way: the end of the name becomes a number
			if i >= 1000 {
				return fmt.Errorf("too many names like %s", c.name)
			}
			c.iso = numberedName(level1Name(c.name, c.dir), i)
		}
		seen[c.iso] = true
		for _, u := range utf16.Encode([]rune(c.name)) { // no ";1", as genisoimage
			c.joliet = binary.BigEndian.AppendUint16(c.joliet, u)
		}
		if c.dir {
			if err := assignISONames(c); err != nil {
				return err
			}
		}
	}
	return nil
}

// level1Name maps a name to an ISO 9660 level-1 identifier as genisoimage
// does: upper case, d-characters only (others become "_"), 8 characters
// of name and 3 of extension (after the last dot), ";1" for files.
func level1Name(name string, dir bool) string {
	clean := func(s string, n int) string {
		var b strings.Builder
		for _, r := range s {
			if b.Len() == n {
				break
			}
			switch {
			case r >= 'a' && r <= 'z':
				b.WriteRune(r - 'a' + 'A')
			case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
				b.WriteRune(r)
			default:
				b.WriteByte('_')
			}
		}
		return b.String()
	}
	if dir {
		return clean(strings.ReplaceAll(name, ".", "_"), 8)
	}
	base, ext := name, ""
	if i := strings.LastIndexByte(name, '.'); i > 0 {
		base, ext = name[:i], name[i+1:]
	}
	return clean(strings.ReplaceAll(base, ".", "_"), 8) + "." + clean(ext, 3) + ";1"
}

// sortedByName returns the nodes sorted by their names as written, so
// that numbered level-1 names do not depend on the seed's file order.
func sortedByName(n []*isoNode) []*isoNode {
	n = slices.Clone(n)
	slices.SortFunc(n, func(a, b *isoNode) int { return strings.Compare(a.name, b.name) })
	return n
}

// numberedName replaces the end of a level-1 name's base by i.
func numberedName(id string, i int) string {
	base, rest := id, ""
	if j := strings.IndexAny(id, ".;"); j >= 0 {
		base, rest = id[:j], id[j:]
	}
	num := strconv.Itoa(i)
	if len(num) < 2 {
		num = "0" + num
	}
	base = base[:max(0, min(len(base), 8-len(num)))]
	return base + num + rest
}

// pathTableOrder lists the directories in path table order: by level,
// then by the parent's number, then by identifier.
func pathTableOrder(root *isoNode, id func(*isoNode) string) []*isoNode {
	out := []*isoNode{root}
	for i := 0; i < len(out); i++ {
		var sub []*isoNode
		for _, c := range out[i].children {
			if c.dir {
				sub = append(sub, c)
			}
		}
		slices.SortFunc(sub, func(a, b *isoNode) int { return strings.Compare(id(a), id(b)) })
		out = append(out, sub...)
	}
	return out
}

// sortedChildren returns d's children in directory record order.
func sortedChildren(d *isoNode, joliet bool) []*isoNode {
	c := slices.Clone(d.children)
	slices.SortFunc(c, func(a, b *isoNode) int {
		if joliet {
			return strings.Compare(string(a.joliet), string(b.joliet))
		}
		return strings.Compare(a.iso, b.iso)
	})
	return c
}

func walkISO(n *isoNode, fn func(*isoNode)) {
	fn(n)
	for _, c := range sortedChildren(n, false) {
		walkISO(c, fn)
	}
}

func blocks(n int) uint32 { return uint32((n + isoBlock - 1) / isoBlock) }

func pathTableSize(dirs []*isoNode, idLen func(*isoNode) int) int {
	n := 0
	for _, d := range dirs {
		l := max(idLen(d), 1)
		n += 8 + l + l%2
	}
	return n
}

// writePathTables writes the type L (little-endian) and type M
// (big-endian) path tables of dirs at blocks l and m.
func writePathTables(img []byte, dirs []*isoNode, l, m uint32, rec func(*isoNode) ([]byte, uint32, int)) {
	lt, mt := img[int(l)*isoBlock:], img[int(m)*isoBlock:]
	off := 0
	for _, d := range dirs {
		id, loc, _ := rec(d)
		if d.parent == nil {
			id = []byte{0}
		}
		parent := 1
		if d.parent != nil {
			_, _, parent = rec(d.parent)
		}
		for _, t := range []struct {
			b  []byte
			bo binary.ByteOrder
		}{{lt, binary.LittleEndian}, {mt, binary.BigEndian}} {
			r := t.b[off:]
			r[0] = byte(len(id))
			t.bo.PutUint32(r[2:6], loc)
			t.bo.PutUint16(r[6:8], uint16(parent))
			copy(r[8:], id)
		}
		off += 8 + len(id) + len(id)%2
	}
}

// volumeDescriptor writes the primary (joliet false) or the Joliet
// supplementary volume descriptor.
func (w *isoWriter) volumeDescriptor(vd []byte, s *Seed, root *isoNode, joliet bool, ptSize int, ptL, ptM uint32) {
	vd[0] = 1
	if joliet {
		vd[0] = 2
	}
	copy(vd[1:6], "CD001")
	vd[6] = 1
	text := func(b []byte, v string) {
		if !joliet {
			copy(b, v+strings.Repeat(" ", len(b)))
			return
		}
		u := utf16.Encode([]rune(v))
		for i := 0; i+1 < len(b); i += 2 {
			c := uint16(' ')
			if i/2 < len(u) {
				c = u[i/2]
			}
			binary.BigEndian.PutUint16(b[i:], c)
		}
	}
	text(vd[8:40], "LINUX")
	text(vd[40:72], s.Label)
	putBoth32(vd[80:88], uint32(len(w.img)/isoBlock))
	if joliet {
		copy(vd[88:91], "%/E") // UCS-2 level 3
	}
	putBoth16(vd[120:124], 1)
	putBoth16(vd[124:128], 1)
	putBoth16(vd[128:132], isoBlock)
	putBoth32(vd[132:140], uint32(ptSize))
	binary.LittleEndian.PutUint32(vd[140:144], ptL)
	binary.BigEndian.PutUint32(vd[148:152], ptM)
	loc, size := root.loc, root.size
	if joliet {
		loc, size = root.jloc, root.jsize
	}
	r := vd[156 : 156+34]
	r[0] = 34
	putBoth32(r[2:10], loc)
	putBoth32(r[10:18], size)
	copy(r[18:25], w.date[:])
	r[25] = 2
	putBoth16(r[28:32], 1)
	r[32] = 1
	text(vd[190:318], "")
	text(vd[318:446], "ECS-IMAGE")
	text(vd[446:574], "")
	text(vd[574:702], "")
	if joliet {
		// 37-byte fields: 18 UCS-2 spaces and one zero byte
		for _, f := range [][]byte{vd[702:739], vd[739:776], vd[776:813]} {
			text(f[:36], "")
		}
	} else {
		text(vd[702:813], "")
	}
	long := volDate(w.dateTime())
	copy(vd[813:830], long[:])
	copy(vd[830:847], long[:])
	for _, f := range [][]byte{vd[847:864], vd[864:881]} {
		copy(f, "0000000000000000")
	}
	vd[881] = 1
}

func (w *isoWriter) dateTime() time.Time {
	d := w.date
	return time.Date(1900+int(d[0]), time.Month(d[1]), int(d[2]), int(d[3]), int(d[4]), int(d[5]), 0, time.UTC)
}

// dirBytes is the size of d's directory records, with records kept
// within blocks.
func (w *isoWriter) dirBytes(d *isoNode, joliet bool) int {
	n := 0
	add := func(l int) {
		if n%isoBlock+l > isoBlock {
			n = (n/isoBlock + 1) * isoBlock
		}
		n += l
	}
	add(len(w.record(nil, d, d, 0, joliet)))
	add(len(w.record(nil, d, d.parentOrSelf(), 1, joliet)))
	for _, c := range sortedChildren(d, joliet) {
		add(len(w.record(nil, c, c, 2, joliet)))
	}
	return n
}

func (n *isoNode) parentOrSelf() *isoNode {
	if n.parent == nil {
		return n
	}
	return n.parent
}

// writeDir writes the directory records of d.
func (w *isoWriter) writeDir(d *isoNode, joliet bool) {
	loc, size := d.loc, d.size
	if joliet {
		loc, size = d.jloc, d.jsize
	}
	ext := w.img[int(loc)*isoBlock : int(loc)*isoBlock+int(size)]
	off := 0
	put := func(r []byte) {
		if off%isoBlock+len(r) > isoBlock {
			off = (off/isoBlock + 1) * isoBlock
		}
		off += copy(ext[off:], r)
	}
	var buf [255]byte
	put(w.record(buf[:0], d, d, 0, joliet))
	put(w.record(buf[:0], d, d.parentOrSelf(), 1, joliet))
	for _, c := range sortedChildren(d, joliet) {
		put(w.record(buf[:0], c, c, 2, joliet))
	}
}

// record appends to b the directory record of target as seen from within
// its directory: kind 0 is ".", 1 is "..", 2 a named entry (self is then
// target). Rock Ridge entries go into the primary tree's records only.
func (w *isoWriter) record(b []byte, self, target *isoNode, kind int, joliet bool) []byte {
	var id []byte
	switch {
	case kind == 0:
		id = []byte{0}
	case kind == 1:
		id = []byte{1}
	case joliet:
		id = target.joliet
	default:
		id = []byte(target.iso)
	}
	start := len(b)
	b = append(b, make([]byte, 33)...)
	r := b[start:]
	loc, size := target.loc, target.size
	if joliet && target.dir {
		loc, size = target.jloc, target.jsize
	}
	putBoth32(r[2:10], loc)
	putBoth32(r[10:18], size)
	copy(r[18:25], w.date[:])
	if target.dir {
		r[25] = 2
	}
	putBoth16(r[28:32], 1)
	r[32] = byte(len(id))
	b = append(b, id...)
	if len(id)%2 == 0 {
		b = append(b, 0)
	}
	if !joliet {
		b = w.rockRidge(b, self, target, kind)
	}
	b[start] = byte(len(b) - start)
	return b
}

// rockRidge appends the System Use entries of a primary tree record.
func (w *isoWriter) rockRidge(b []byte, self, target *isoNode, kind int) []byte {
	rootDot := kind == 0 && self.parent == nil
	if rootDot {
		b = append(b, 'S', 'P', 7, 1, 0xbe, 0xef, 0)
	}
	flags := byte(rrPX | rrTF)
	if kind == 2 {
		flags |= rrNM
	}
	b = append(b, 'R', 'R', 5, 1, flags)
	mode, nlink := uint32(0o100444), uint32(1)
	if target.dir {
		mode, nlink = 0o40555, 2
		for _, c := range target.children {
			if c.dir {
				nlink++
			}
		}
	}
	px := make([]byte, 36)
	copy(px, "PX")
	px[2], px[3] = 36, 1
	putBoth32(px[4:12], mode)
	putBoth32(px[12:20], nlink)
	b = append(b, px...)
	b = append(b, 'T', 'F', 5+3*7, 1, 0x0e) // modify, access, attributes
	for range 3 {
		b = append(b, w.date[:]...)
	}
	if kind == 2 {
		b = append(b, 'N', 'M', byte(5+len(target.name)), 1, 0)
		b = append(b, target.name...)
	}
	if rootDot {
		ce := make([]byte, 28)
		copy(ce, "CE")
		ce[2], ce[3] = 28, 1
		putBoth32(ce[4:12], w.ceAt)
		putBoth32(ce[20:28], uint32(erLen))
		b = append(b, ce...)
	}
	return b
}

// putBoth16 writes v in ISO 9660 both-byte-order form (LE then BE).
func putBoth16(b []byte, v uint16) {
	binary.LittleEndian.PutUint16(b[0:2], v)
	binary.BigEndian.PutUint16(b[2:4], v)
}
