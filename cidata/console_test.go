package cidata

import "testing"

func TestConsoleDatasource(t *testing.T) {
	for _, tc := range []struct {
		line       string
		ds         string
		noSeed, ok bool
	}{
		{"[   42.6] cloud-init[512]: Cloud-init v. 22.4.2 finished at Sun, 06 Dec 2026 01:00:00 +0000. Datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 42.63 seconds", "DataSourceNoCloud", false, true},
		{"cloud-init[2565]: Cloud-init v. 20.1 finished at Fri, 26 Jun 2020 11:10:44 +0000. Datasource DataSourceNone.  Up 35.37 seconds", "DataSourceNone", true, true},
		{"cloud-init[2565]: 2020-06-26 11:10:44,359 - cc_final_message.py[WARNING]: Used fallback datasource", "DataSourceNone", true, true},
		{"Cloud-init v. 22.4.2 running 'init' at Sun, 06 Dec 2026 01:00:00 +0000. Up 9.1 seconds.", "", false, false},
		{"debian login:", "", false, false},
	} {
		ds, noSeed, ok := ConsoleDatasource(tc.line)
		if ds != tc.ds || noSeed != tc.noSeed || ok != tc.ok {
			t.Errorf("%q: %q %v %v, want %q %v %v", tc.line, ds, noSeed, ok, tc.ds, tc.noSeed, tc.ok)
		}
		if ConsoleDatasourceRE().MatchString(tc.line) != tc.ok {
			t.Errorf("%q: ConsoleDatasourceRE disagrees", tc.line)
		}
	}
}

func TestConsoleGettyAndCloudInit(t *testing.T) {
	for line, want := range map[string][2]bool{
		"[  OK  ] Started serial-getty@ttyS0…rvice - Serial Getty on ttyS0.":                      {true, false},
		"Debian GNU/Linux 12 debian ttyS0":                                                        {true, false},
		"[    4.05] 00:03: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A":          {false, false},
		"[    0.00] printk: console [ttyS0] enabled":                                              {false, false},
		"[   9.1] cloud-init[301]: Cloud-init v. 22.4.2 running 'init-local' at Sun, 06 Dec 2026": {false, true},
	} {
		if got := [2]bool{ConsoleGettyRE().MatchString(line), ConsoleCloudInitRE().MatchString(line)}; got != want {
			t.Errorf("%q: getty, cloud-init = %v, want %v", line, got, want)
		}
	}
}
