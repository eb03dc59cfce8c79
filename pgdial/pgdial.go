// Package pgdial makes every Postgres connection walhook opens notice a
// dead peer in seconds. With the kernel's defaults a connection to a
// crashed or partitioned host stays "up" for about two hours: a leader's
// lease would be renewed into the void, a worker's claims would look
// alive, and the replication slot would stay busy.
package pgdial

import (
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"
)

// How long a silent peer is given. Keepalive probes start after Idle
// without traffic and are sent every Interval; after Count unanswered
// ones, or when data sent stays unacknowledged for UserTimeout, the
// connection is dead.
const (
	Idle        = 5 * time.Second
	Interval    = 2 * time.Second
	Count       = 3
	UserTimeout = 10 * time.Second
)

// Configure sets TCP keepalives and a user timeout on both ends of the
// connections cfg makes: the client's socket (a dialer), and the server's
// (session settings, so Postgres drops the session, its locks and the
// slot of a client that vanished). Unix sockets ignore both.
func Configure(cfg *pgconn.Config) {
	d := &net.Dialer{
		Timeout: 10 * time.Second,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable: true, Idle: Idle, Interval: Interval, Count: Count,
		},
		Control: control,
	}
	cfg.DialFunc = d.DialContext
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	p := cfg.RuntimeParams
	p["tcp_keepalives_idle"] = strconv.Itoa(int(Idle / time.Second))
	p["tcp_keepalives_interval"] = strconv.Itoa(int(Interval / time.Second))
	p["tcp_keepalives_count"] = strconv.Itoa(Count)
	p["tcp_user_timeout"] = strconv.Itoa(int(UserTimeout / time.Millisecond))
}

// control sets TCP_USER_TIMEOUT on TCP sockets before they connect.
func control(network, _ string, c syscall.RawConn) error {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(UserTimeout/time.Millisecond))
	})
	if err != nil {
		return err
	}
	return serr
}
