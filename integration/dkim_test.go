//go:build integration

package integration

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/ecs-image/ecs-image/agent/prepare"
	"github.com/ecs-image/ecs-image/env"
)

// dkimRecord returns the DKIM TXT record that `ecs-image env create` wrote
// into envPath's header for the operator to publish
// (SELECTOR._domainkey.DOMAIN), its quoted parts joined.
func dkimRecord(t *testing.T, envPath, domain string) string {
	t.Helper()
	data, err := os.ReadFile(envPath)
	if err != nil {
		t.Fatal(err)
	}
	head := "# " + prepare.DKIMSelector + "._domainkey." + domain + ".  IN  TXT  ("
	_, rest, ok := strings.Cut(string(data), head+"\n")
	if !ok {
		t.Fatalf("%s: no %q record", envPath, head)
	}
	var rec strings.Builder
	for _, l := range strings.Split(rest, "\n") {
		m := regexp.MustCompile(`^#\s+"([^"]*)"( \))?$`).FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("%s: unexpected line in the DKIM record: %q", envPath, l)
		}
		rec.WriteString(m[1])
		if m[2] != "" {
			return rec.String()
		}
	}
	t.Fatalf("%s: DKIM record not closed", envPath)
	return ""
}

// verifyDKIM checks the DKIM signature of the last message of an mbox
// against the record published in DNS (here: given) for domain. It returns
// what is wrong, or "".
func verifyDKIM(mbox, domain, record string) string {
	msg := mbox
	if i := strings.LastIndex(mbox, "\nFrom "); i >= 0 {
		msg = mbox[i+1:]
	}
	// Drop the mbox "From " envelope line; the message travels with CRLF.
	if strings.HasPrefix(msg, "From ") {
		if _, after, ok := strings.Cut(msg, "\n"); ok {
			msg = after
		}
	}
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")
	name := prepare.DKIMSelector + "._domainkey." + domain
	vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT: func(q string) ([]string, error) {
			if q != name {
				return nil, fmt.Errorf("no TXT record for %s", q)
			}
			return []string{record}, nil
		},
	})
	if err != nil {
		return fmt.Sprintf("dkim: %v", err)
	}
	if len(vs) != 1 {
		return fmt.Sprintf("%d DKIM signatures, want 1", len(vs))
	}
	if vs[0].Err != nil || vs[0].Domain != domain {
		return fmt.Sprintf("DKIM signature of d=%s: %v", vs[0].Domain, vs[0].Err)
	}
	return ""
}

// TestDKIMVerifier checks the verifier TestAppliance uses, without a VM: a
// message signed with an env's appliance.dkim.key verifies against the
// record `ecs-image env create` wrote for it, and fails once altered or
// against another env's record.
func TestDKIMVerifier(t *testing.T) {
	dir := t.TempDir()
	sign := func(domain string) (string, string) {
		p := dir + "/" + domain + ".yml"
		ecsImage(t, "env", "create", domain, "-o", p)
		doc, err := env.Load(p)
		if err != nil {
			t.Fatal(err)
		}
		n := doc.Lookup("appliance.dkim.key")
		if n == nil {
			t.Fatalf("%s: no appliance.dkim.key", p)
		}
		b, _ := pem.Decode([]byte(n.Value))
		if b == nil {
			t.Fatalf("%s: appliance.dkim.key is not PEM", p)
		}
		var key any
		if key, err = x509.ParsePKCS1PrivateKey(b.Bytes); err != nil {
			if key, err = x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
				t.Fatal(err)
			}
		}
		msg := "From: ecs-test@" + domain + "\r\nTo: postgres@localhost\r\nSubject: dkim check\r\n\r\nhello\r\n"
		var signed bytes.Buffer
		if err := dkim.Sign(&signed, strings.NewReader(msg), &dkim.SignOptions{
			Domain: domain, Selector: prepare.DKIMSelector, Signer: key.(crypto.Signer),
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationSimple,
		}); err != nil {
			t.Fatal(err)
		}
		// As local(8) delivers it: an mbox with a message before.
		mbox := "From someone  Sat Dec  5 10:00:00 2026\nSubject: older\n\nold\n\n" +
			"From ecs-test@" + domain + "  Sat Dec  5 10:01:00 2026\nDelivered-To: postgres@localhost\n" +
			strings.ReplaceAll(signed.String(), "\r\n", "\n") + "\n"
		return mbox, dkimRecord(t, p, domain)
	}
	mbox, rec := sign("a.dkim.test")
	if !strings.HasPrefix(rec, "v=DKIM1;") || !strings.Contains(rec, "p=") {
		t.Fatalf("record %q", rec)
	}
	if msg := verifyDKIM(mbox, "a.dkim.test", rec); msg != "" {
		t.Errorf("a good signature: %s", msg)
	}
	if msg := verifyDKIM(strings.Replace(mbox, "\nhello\n", "\nhellO\n", 1), "a.dkim.test", rec); !strings.Contains(msg, "body hash did not verify") {
		t.Errorf("an altered body: %q", msg)
	}
	_, other := sign("b.dkim.test")
	if msg := verifyDKIM(mbox, "a.dkim.test", other); !strings.Contains(msg, "signature did not verify") {
		t.Errorf("another env's record: %q", msg)
	}
}
