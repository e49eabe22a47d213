package cidata

import "regexp"

// What cloud-init says on a guest's serial console about its datasource:
// the final stage's "Cloud-init v. 22.4.2 finished at …. Datasource
// DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 42.6 seconds", and
// when it found no seed, "Datasource DataSourceNone." followed by
// cc_final_message's "Used fallback datasource" warning.
var (
	consoleDatasourceRE = regexp.MustCompile(`Datasource (DataSource[A-Za-z0-9]+)`)
	consoleNoSeedRE     = regexp.MustCompile(`(?i)Used fallback datasource|no datasource found|did not find any data ?source`)
)

// ConsoleDatasource reads a serial console line of a cloud-init guest: ok
// when the line names the datasource cloud-init used (ds, e.g.
// "DataSourceNoCloud") or says it found none; noSeed when cloud-init found
// no seed (DataSourceNone: it ran without user-data, so no user, key or
// env.yml of the seed was applied).
func ConsoleDatasource(line string) (ds string, noSeed, ok bool) {
	if m := consoleDatasourceRE.FindStringSubmatch(line); m != nil {
		return m[1], m[1] == "DataSourceNone", true
	}
	if consoleNoSeedRE.MatchString(line) {
		return "DataSourceNone", true, true
	}
	return "", false, false
}

// ConsoleDatasourceRE matches the lines ConsoleDatasource reads.
var ConsoleDatasourceRE = regexp.MustCompile(consoleDatasourceRE.String() + "|" + consoleNoSeedRE.String())
