package prepare

import (
	"os"
	"strings"
	"testing"
)

func TestEditMainCf(t *testing.T) {
	in := "# comment = not a setting\n" +
		"myhostname = old\n" +
		"mynetworks = 127.0.0.0/8\n" +
		"    [::1]/128\n" +
		"# a comment inside the logical line\n" +
		"\t10.0.0.0/8\n" +
		"\n" +
		"smtpd_milters = inet:a\n" +
		"myhostname = later\n"
	got := editMainCf(in, []string{"myhostname=new.example.org", "mynetworks=127.0.0.0/8 172.17.0.0/16", "smtpd_milters=", "myorigin=/etc/mailname"})
	want := "# comment = not a setting\n" +
		"myhostname = new.example.org\n" +
		"mynetworks = 127.0.0.0/8 172.17.0.0/16\n" +
		"\n" +
		"smtpd_milters = \n" +
		"myorigin = /etc/mailname\n"
	if got != want {
		t.Errorf("editMainCf:\n%s\nwant:\n%s", got, want)
	}
	if again := editMainCf(got, []string{"myhostname=new.example.org", "smtpd_milters="}); again != got {
		t.Errorf("a second edit changed the file:\n%s", again)
	}
	if got := editMainCf("", []string{"a=b"}); got != "a = b\n" {
		t.Errorf("new file: %q", got)
	}
}

func TestEditMasterCf(t *testing.T) {
	in := "# service type  private unpriv  chroot  wakeup  maxproc command + args\n" +
		"smtp      inet  n       -       y       -       -       smtpd\n" +
		"#smtp      inet  n       -       y       -       1       postscreen\n" +
		"  -o smtpd_sasl_auth_enable=no\n" +
		"10025      inet  n       -       y       -       -       smtpd\n" +
		"127.0.0.1:10025 inet n - n - - smtpd\n" +
		"pickup    unix  n       -       y       60      1       pickup\n"
	edits := []masterCfEdit{
		{key: "smtp/inet", op: '#'},
		{key: "10025/inet", op: 'X'},
		{key: "127.0.0.1:10025/inet", op: 'e', entry: "127.0.0.1:10025 inet n - y - - smtpd"},
		{key: "172.17.0.1:10025/inet", op: 'e', entry: "172.17.0.1:10025 inet n - y - - smtpd -o x=y"},
	}
	got := editMasterCf(in, edits)
	want := "# service type  private unpriv  chroot  wakeup  maxproc command + args\n" +
		"#smtp      inet  n       -       y       -       -       smtpd\n" +
		"##smtp      inet  n       -       y       -       1       postscreen\n" +
		"#  -o smtpd_sasl_auth_enable=no\n" +
		"127.0.0.1:10025 inet  n       -       y       -       -       smtpd\n" +
		"pickup    unix  n       -       y       60      1       pickup\n" +
		"172.17.0.1:10025 inet  n       -       y       -       -       smtpd -o x=y\n"
	if got != want {
		t.Errorf("editMasterCf:\n%s\nwant:\n%s", got, want)
	}
	if again := editMasterCf(got, edits[2:]); again != got {
		t.Errorf("a second edit changed the file:\n%s", again)
	}
}

// The chroot's copies of /etc files follow the originals (what Debian's
// configure-instance.sh does in the postfix check the start skips).
func TestPostfixChrootSync(t *testing.T) {
	a, _ := testAgent(t)
	if err := os.MkdirAll(a.Host.Path(PostfixQueueDir+"/etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, a, "/etc/hosts", []byte("127.0.1.1 a.example.org a\n"), 0o644)
	put(t, a, "/etc/resolv.conf.real", []byte("nameserver 127.0.0.53\n"), 0o644)
	if err := os.Symlink("resolv.conf.real", a.Host.Path("/etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	put(t, a, PostfixQueueDir+"/etc/hosts", []byte("127.0.1.1 debian\n"), 0o644)
	put(t, a, PostfixQueueDir+"/etc/nss_mdns.config", []byte("stale\n"), 0o644)
	// Without Postfix's list of its directories, no quick start: the
	// unit's postfix check runs.
	if err := a.startPostfix(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if a.Host.Exists(PostfixQueueDir + "/quick-start") {
		t.Error("quick-start without postfix-files")
	}
	put(t, a, PostfixFiles, []byte(postfixFilesDebian13), 0o644)
	if err := a.startPostfix(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if got := read(t, a, PostfixQueueDir+"/etc/hosts"); got != "127.0.1.1 a.example.org a\n" {
		t.Errorf("chroot hosts %q", got)
	}
	if got := read(t, a, PostfixQueueDir+"/etc/resolv.conf"); got != "nameserver 127.0.0.53\n" {
		t.Errorf("chroot resolv.conf %q (through the symlink)", got)
	}
	if a.Host.Exists(PostfixQueueDir + "/etc/nss_mdns.config") {
		t.Error("the copy of a file /etc does not have is kept")
	}
	if !a.Host.Exists(PostfixQueueDir + "/quick-start") {
		t.Error("no quick-start file")
	}
	if fi, err := os.Lstat(a.Host.Path(PostfixQueueDir + "/etc/resolv.conf")); err != nil || !fi.Mode().IsRegular() || !strings.HasPrefix(fi.Mode().Perm().String(), "-rw-r--r--") {
		t.Errorf("chroot resolv.conf: %v %v", fi.Mode(), err)
	}
}
