package main

import (
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"time"
)

// openDB connects to $DATABASE_URL, retrying while PostgreSQL starts.
func openDB() (*sql.DB, error) {
	u := os.Getenv("DATABASE_URL")
	if u == "" {
		return nil, errors.New("DATABASE_URL is not set (database_url.env)")
	}
	if !strings.Contains(u, "sslmode=") {
		sep := "?"
		if strings.Contains(u, "?") {
			sep = "&"
		}
		u += sep + "sslmode=disable"
	}
	db, err := sql.Open("postgres", u)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4)
	return db, nil
}

// migrations are the stand-in's schema changes, in order; an image of
// version N (its $APP_VERSION) knows the first min(N, len(migrations)).
// Like an application's migrations they run once each, the schema version
// (how many ran) is recorded in the database (standin_schema), and a
// database whose schema is newer than the image knows is refused: an older
// image does not run on data a newer one migrated.
var migrations = []string{
	// 1: the mail table of the smtpd.
	`CREATE TABLE IF NOT EXISTS standin_mail (
		id serial PRIMARY KEY, received timestamptz NOT NULL DEFAULT now(),
		mail_from text NOT NULL, rcpt_to text NOT NULL, data text NOT NULL)`,
	// 2: an index.
	`CREATE INDEX IF NOT EXISTS standin_mail_received ON standin_mail (received)`,
	// 3: a column filled from the rows there are (a data migration).
	`ALTER TABLE standin_mail ADD COLUMN IF NOT EXISTS subject text;
	UPDATE standin_mail SET subject = coalesce(substring(data from '(?n)^Subject: ([^\r\n]*)'), '') WHERE subject IS NULL`,
}

// knownSchema is the schema version this image migrates to.
func knownSchema() int {
	n := 0
	fmt.Sscan(version(), &n)
	return max(1, min(n, len(migrations)))
}

// migrate brings the database to knownSchema, retrying while PostgreSQL
// starts.
func migrate() error {
	db, err := openDB()
	if err != nil {
		return err
	}
	defer db.Close()
	for i := 0; ; i++ {
		var from, to int
		if from, to, err = migrateDB(db, knownSchema()); err == nil {
			log.Printf("migrate: schema %d → %d (image version %s)", from, to, version())
			return nil
		}
		if errors.Is(err, errNewerSchema) || i == 30 {
			return err
		}
		time.Sleep(time.Second)
	}
}

var errNewerSchema = errors.New("the database schema is newer than this image")

// migrateDB runs the migrations after the recorded schema version up to
// want in one transaction, and returns the version before and after.
func migrateDB(db *sql.DB, want int) (int, int, error) {
	tx, err := db.Begin()
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`CREATE TABLE IF NOT EXISTS standin_schema (version int NOT NULL);
		LOCK TABLE standin_schema`); err != nil {
		return 0, 0, err
	}
	have := 0
	if err := tx.QueryRow(`SELECT coalesce(max(version), 0) FROM standin_schema`).Scan(&have); err != nil {
		return 0, 0, err
	}
	if have > want {
		return have, have, fmt.Errorf("%w: schema %d, this image (version %s) knows %d", errNewerSchema, have, version(), want)
	}
	for v := have + 1; v <= want; v++ {
		if _, err := tx.Exec(migrations[v-1]); err != nil {
			return have, have, fmt.Errorf("migration %d: %w", v, err)
		}
	}
	if _, err := tx.Exec(`DELETE FROM standin_schema`); err != nil {
		return have, have, err
	}
	if _, err := tx.Exec(`INSERT INTO standin_schema (version) VALUES ($1)`, want); err != nil {
		return have, have, err
	}
	return have, want, tx.Commit()
}

// ensureSchema creates the mail table when the migrations have not run
// (the smtpd and /mails need it).
func ensureSchema(db *sql.DB) error {
	_, err := db.Exec(migrations[0])
	return err
}

// schemaVersion is the recorded schema version (0: none).
func schemaVersion(db *sql.DB) int {
	v := 0
	_ = db.QueryRow(`SELECT coalesce(max(version), 0) FROM standin_schema`).Scan(&v)
	return v
}
