package cidata

import (
	"regexp"
	"sync"
)

// What cloud-init says on a guest's serial console about its datasource:
// the final stage's "Cloud-init v. 22.4.2 finished at …. Datasource
// DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 42.6 seconds", and
// when it found no seed, "Datasource DataSourceNone." followed by
// cc_final_message's "Used fallback datasource" warning.
var (
	consoleDatasourceRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`Datasource (DataSource[A-Za-z0-9]+)`) })
	consoleNoSeedRE     = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`(?i)Used fallback datasource|no datasource found|did not find any data ?source`)
	})
)

// ConsoleDatasource reads a serial console line of a cloud-init guest: ok
// when the line names the datasource cloud-init used (ds, e.g.
// "DataSourceNoCloud") or says it found none; noSeed when cloud-init found
// no seed (DataSourceNone: it ran without user-data, so no user, key or
// env.yml of the seed was applied).
func ConsoleDatasource(line string) (ds string, noSeed, ok bool) {
	if m := consoleDatasourceRE().FindStringSubmatch(line); m != nil {
		return m[1], m[1] == "DataSourceNone", true
	}
	if consoleNoSeedRE().MatchString(line) {
		return "DataSourceNone", true, true
	}
	return "", false, false
}

// ConsoleDatasourceRE matches the lines ConsoleDatasource reads.
var ConsoleDatasourceRE = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(consoleDatasourceRE().String() + "|" + consoleNoSeedRE().String())
})

// ConsoleGettyRE matches the serial getty's start on ttyS0 ("Started
// serial-getty@ttyS0.service - Serial Getty on ttyS0", the /etc/issue line
// "Debian GNU/Linux 12 debian ttyS0"): the boot is done, and cloud-init's
// local and network stages have run before it (cloud-init.service is
// ordered before systemd-user-sessions.service, the getty after it). The
// "login: " prompt itself ends no line.
var ConsoleGettyRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`Serial Getty on ttyS0|\sttyS0\s*$`) })

// ConsoleCloudInitRE matches the line every cloud-init stage writes to the
// console when it starts ("Cloud-init v. 22.4.2 running 'init-local' at
// …"). A boot that reaches its getty without one ran no cloud-init:
// ds-identify found no datasource (no seed it can see) and disabled it.
var ConsoleCloudInitRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`Cloud-init v\. \S+ running`) })
