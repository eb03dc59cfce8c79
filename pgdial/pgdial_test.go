package pgdial

import (
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"
)

// A connection made with Configure carries the user timeout and keepalive
// settings on its socket, and asks the server for the same.
func TestConfigureSetsSocketOptions(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	cfg, err := pgconn.ParseConfig("postgres://u@" + ln.Addr().String() + "/db")
	if err != nil {
		t.Fatal(err)
	}
	Configure(cfg)
	if cfg.RuntimeParams["tcp_user_timeout"] != "10000" || cfg.RuntimeParams["tcp_keepalives_idle"] != "5" {
		t.Fatalf("server-side settings: %v", cfg.RuntimeParams)
	}
	conn, err := cfg.DialFunc(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var timeout, idle, keepalive int
	_ = raw.Control(func(fd uintptr) {
		timeout, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		idle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		keepalive, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	})
	if timeout != 10000 || idle != 5 || keepalive != 1 {
		t.Fatalf("socket options: user timeout %d ms, keepidle %d s, keepalive %d", timeout, idle, keepalive)
	}
}
