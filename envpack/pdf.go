package envpack

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/go-pdf/fpdf"
	"github.com/skip2/go-qrcode"
)

// Page geometry, in mm (A4 portrait).
const (
	pageW, pageH = 210.0, 297.0
	margin       = 15.0
	textPt       = 8.0                      // Courier size of the env listing
	lineH        = 3.5                      // listing line height
	charW        = textPt * 0.6 * 25.4 / 72 // Courier advance width
	gutterChars  = 5                        // "1234 " line numbers
	qrSide       = 80.0                     // QR code size without quiet zone
	qrCell       = 90.0                     // grid pitch
	qrLabelH     = 6.0
)

// RestoreCommand is the shell pipeline that turns page images of the QR
// codes back into env.yml; it is printed on the PDF's last page.
const RestoreCommand = `zbarimg --raw -q -Sdisable -Sqrcode.enable page-*.png | sort -n | cut -d' ' -f2 | tr -d '\n' | base32 -d | gunzip > env.yml`

// pdfInput is what the PDF shows.
type pdfInput struct {
	Domain string
	Env    []byte // the env.yml, exactly
	SHA256 string // hex digest of Env
	Now    time.Time
}

// renderPDF builds env.yml.pdf: the env as text (all lines, numbered, long
// lines wrapped), the gzip'd env over QR codes (level M, four per page) and
// a page explaining how to restore.
func renderPDF(in pdfInput) ([]byte, error) {
	pdf := fpdf.New("P", "mm", "A4", "")
	pdf.SetMargins(margin, margin+6, margin)
	pdf.SetAutoPageBreak(false, margin)
	pdf.SetCompression(true)
	pdf.SetCreationDate(in.Now)
	pdf.SetModificationDate(in.Now)
	pdf.SetTitle("env.yml of "+in.Domain, false)
	pdf.SetSubject("ECS appliance configuration - contains all secrets of the appliance", false)
	pdf.SetCreator("ecs-image env package", false)
	pdf.AliasNbPages("{nb}")
	section := ""
	pdf.SetHeaderFunc(func() {
		pdf.SetFont("Helvetica", "", 8)
		pdf.SetXY(margin, margin-4)
		pdf.CellFormat(pageW-2*margin, 4, fmt.Sprintf("env.yml of %s - %s", in.Domain, section), "B", 0, "L", false, 0, "")
		pdf.SetXY(margin, margin-4)
		pdf.CellFormat(pageW-2*margin, 4, "CONFIDENTIAL: contains all secrets of the appliance", "", 0, "R", false, 0, "")
		pdf.SetXY(margin, margin+4)
	})
	pdf.SetFooterFunc(func() {
		pdf.SetFont("Helvetica", "", 8)
		pdf.SetXY(margin, pageH-margin+2)
		pdf.CellFormat(pageW-2*margin, 4, fmt.Sprintf("sha256 %s", in.SHA256), "", 0, "L", false, 0, "")
		pdf.SetXY(margin, pageH-margin+2)
		pdf.CellFormat(pageW-2*margin, 4, fmt.Sprintf("page %d of {nb}", pdf.PageNo()), "", 0, "R", false, 0, "")
	})

	// 1. The env as text.
	section = "text"
	pdf.AddPage()
	pdf.SetFont("Helvetica", "B", 12)
	pdf.CellFormat(0, 6, "env.yml of "+in.Domain, "", 1, "L", false, 0, "")
	pdf.SetFont("Helvetica", "", 8)
	pdf.MultiCell(0, 3.5, fmt.Sprintf("Created %s by ecs-image env package. %d bytes, sha256 %s. "+
		"The same file follows as QR codes, then how to restore it. Lines longer than the page "+
		"continue on the next row, marked with '+'.", in.Now.UTC().Format("2006-01-02 15:04 UTC"), len(in.Env), in.SHA256), "", "L", false)
	pdf.Ln(2)
	pdf.SetFont("Courier", "", textPt)
	width := pageW - 2*margin
	cols := int(width/charW) - gutterChars
	y := pdf.GetY()
	bottom := pageH - margin - 2
	for i, line := range splitLines(in.Env) {
		rows := wrap(printable(line), cols)
		for j, r := range rows {
			if y+lineH > bottom {
				pdf.AddPage()
				pdf.SetFont("Courier", "", textPt)
				y = pdf.GetY()
			}
			gutter := fmt.Sprintf("%4d ", i+1)
			if j > 0 {
				gutter = "   + "
			}
			pdf.Text(margin, y+lineH*0.75, gutter+r)
			y += lineH
		}
	}

	// 2. The gzip'd env as QR codes.
	section = "QR codes"
	chunks := QRChunks(Gzip(in.Env))
	for i, c := range chunks {
		if i%4 == 0 {
			pdf.AddPage()
		}
		q, err := qrcode.New(c, qrcode.Medium)
		if err != nil {
			return nil, fmt.Errorf("QR code %d: %w", i+1, err)
		}
		q.DisableBorder = true
		col, row := i%2, (i%4)/2
		x := margin + float64(col)*qrCell + (qrCell-qrSide)/2 - 5
		top := margin + 8 + float64(row)*(qrCell+qrLabelH+30)
		drawQR(pdf, q.Bitmap(), x, top, qrSide)
		pdf.SetFont("Helvetica", "", 9)
		pdf.SetXY(x, top+qrSide+2)
		pdf.CellFormat(qrSide, 4, fmt.Sprintf("env.yml.gz part %d of %d", i+1, len(chunks)), "", 0, "C", false, 0, "")
	}

	// 3. How to restore.
	section = "restore"
	pdf.AddPage()
	pdf.SetFont("Helvetica", "B", 12)
	pdf.CellFormat(0, 7, "How to restore env.yml from this document", "", 1, "L", false, 0, "")
	para := func(s string) {
		pdf.SetFont("Helvetica", "", 10)
		pdf.MultiCell(0, 5, s, "", "L", false)
		pdf.Ln(1)
	}
	code := func(s string) {
		pdf.SetFont("Courier", "", 8.5)
		pdf.SetFillColor(238, 238, 238)
		pdf.MultiCell(0, 4.2, s, "", "L", true)
		pdf.Ln(2)
	}
	para(fmt.Sprintf("The QR code pages hold env.yml compressed with gzip, in %d parts. Each code contains "+
		"the text \"i/n DATA\": part i of n, and DATA, the part's bytes in base32 (RFC 4648). "+
		"Sorted by i and joined, the parts are the base32 of env.yml.gz. The codes may be scanned in any order.", len(chunks)))
	para("Tools (Debian/Ubuntu packages): zbar-tools (zbarimg), poppler-utils (pdftoppm), coreutils (base32, sha256sum), gzip.")
	para("1. Get images of the QR code pages: scan the printed pages at 150 dpi or more as page-1.png, page-2.png, ... " +
		"or, from this PDF file:")
	code("pdftoppm -r 150 -png env.yml.pdf page")
	para("2. Decode the QR codes, put the parts in order and unpack them:")
	code(strings.ReplaceAll(RestoreCommand, " | ", " |\n    "))
	para("3. Check the result; the digest must be:")
	code("sha256sum env.yml\n" + in.SHA256 + "  env.yml")
	para("4. Protect and use it, e.g. as /app/env.yml of the appliance, or make a new seed ISO:")
	code("chmod 0600 env.yml\necs-image env validate env.yml\necs-image cidata -e env.yml -o env-cidata.iso")
	para("If a code cannot be read, type the missing lines from the text pages (the line numbers are not part of the file) " +
		"and compare the digest again.")

	var buf bytes.Buffer
	if err := pdf.Output(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// drawQR draws the modules of bm as filled rectangles (vector, sharp at any
// resolution), merging horizontal runs.
func drawQR(pdf *fpdf.Fpdf, bm [][]bool, x, y, side float64) {
	n := len(bm)
	m := side / float64(n)
	pdf.SetFillColor(0, 0, 0)
	for r, row := range bm {
		for c := 0; c < n; {
			if !row[c] {
				c++
				continue
			}
			start := c
			for c < n && row[c] {
				c++
			}
			// A hair of overlap so that no white seams appear between rows.
			pdf.Rect(x+float64(start)*m, y+float64(r)*m, float64(c-start)*m, m+0.02, "F")
		}
	}
}

func splitLines(b []byte) []string {
	s := strings.TrimSuffix(string(b), "\n")
	return strings.Split(s, "\n")
}

// printable makes a line showable in a core PDF font: tabs expanded,
// anything outside printable ASCII as '?'.
func printable(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\t':
			b.WriteString(strings.Repeat(" ", 8-b.Len()%8))
		case r == '\r':
		case r < 0x20 || r > 0x7e:
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// wrap splits s into rows of at most cols characters.
func wrap(s string, cols int) []string {
	if len(s) <= cols {
		return []string{s}
	}
	var out []string
	for len(s) > cols {
		out = append(out, s[:cols])
		s = s[cols:]
	}
	return append(out, s)
}
