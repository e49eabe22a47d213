package main

import (
	"bufio"
	"database/sql"
	"io"
	"log"
	"net"
	"strings"
	"time"
)

// smtpd receives mail (a minimal SMTP server: what stunnel and postfix
// speak) and stores each message in PostgreSQL.
func smtpd(addr string) error {
	db, err := openDB()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	log.Printf("smtpd %s listening on %s", version(), addr)
	return serveSMTP(ln, db)
}

func serveSMTP(ln net.Listener, db *sql.DB) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go smtpSession(c, db)
	}
}

func smtpSession(c net.Conn, db *sql.DB) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	r := bufio.NewReader(c)
	say := func(s string) { _, _ = io.WriteString(c, s+"\r\n") }
	say("220 ecs-standin smtpd")
	var from string
	var rcpt []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		switch verb {
		case "EHLO", "HELO":
			say("250 ecs-standin")
		case "MAIL":
			from, rcpt = strings.TrimSpace(line[strings.IndexByte(line, ':')+1:]), nil
			say("250 ok")
		case "RCPT":
			rcpt = append(rcpt, strings.TrimSpace(line[strings.IndexByte(line, ':')+1:]))
			say("250 ok")
		case "DATA":
			if from == "" || len(rcpt) == 0 {
				say("503 need MAIL and RCPT")
				continue
			}
			say("354 end with .")
			var data strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if strings.TrimRight(l, "\r\n") == "." {
					break
				}
				data.WriteString(strings.TrimPrefix(l, "."))
			}
			if err := ensureSchema(db); err != nil {
				log.Printf("smtpd: %v", err)
				say("451 database unavailable")
				continue
			}
			if _, err := db.Exec("INSERT INTO standin_mail (mail_from, rcpt_to, data) VALUES ($1, $2, $3)", from, strings.Join(rcpt, ","), data.String()); err != nil {
				log.Printf("smtpd: %v", err)
				say("451 database unavailable")
				continue
			}
			log.Printf("smtpd: stored a mail from %s to %s (%d bytes)", from, strings.Join(rcpt, ","), data.Len())
			say("250 stored")
			from, rcpt = "", nil
		case "RSET":
			from, rcpt = "", nil
			say("250 ok")
		case "NOOP":
			say("250 ok")
		case "QUIT":
			say("221 bye")
			return
		default:
			say("502 not implemented")
		}
	}
}
