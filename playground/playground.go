// Package playground is `walhook dev`: a private Postgres cluster with
// wal_level=logical, a demo table, a receiver that prints every delivery,
// and the service wired to them. Nothing to install or configure beyond
// the Postgres server programs.
package playground

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/console"
	"github.com/walhook/walhook/pgcluster"
	"github.com/walhook/walhook/service"
)

// Options for the playground.
type Options struct {
	// DataDir keeps the cluster between runs. Default ./.walhook-dev.
	DataDir string
	// PGPort is the cluster's port; 0 picks a free one.
	PGPort int
	// Listen is walhook's HTTP server address.
	Listen string
	// Token is the API token the playground accepts.
	Token string
	// Out receives the banner and every delivery; Log receives walhook's log.
	Out, Log io.Writer
}

// DefaultPGPort is the playground cluster's port when it is free.
const DefaultPGPort = 54329

func portFree(port int) bool {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// demoDDL is the table the printed psql line writes to.
const demoDDL = `CREATE TABLE IF NOT EXISTS public.orders (
	id          bigserial PRIMARY KEY,
	customer_id integer NOT NULL,
	status      text NOT NULL DEFAULT 'pending',
	total       numeric(10, 2),
	created_at  timestamptz NOT NULL DEFAULT now()
)`

// Run starts everything, prints how to use it and runs until ctx ends,
// then stops what it started.
func Run(ctx context.Context, opts Options) error {
	if opts.DataDir == "" {
		opts.DataDir = ".walhook-dev"
	}
	if opts.Listen == "" {
		opts.Listen = config.DefaultListen
	}
	if opts.Token == "" {
		opts.Token = "dev"
	}
	dataDir, err := filepath.Abs(filepath.Join(opts.DataDir, "pgdata"))
	if err != nil {
		return fmt.Errorf("dev: data folder: %w", err)
	}
	fmt.Fprintf(opts.Out, "starting Postgres (wal_level=logical) in %s ...\n", dataDir)
	port := opts.PGPort
	if port == 0 && portFree(DefaultPGPort) {
		port = DefaultPGPort // the same psql line works run after run
	}
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: dataDir, Port: port})
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	defer func() {
		// A fresh context: ctx is already cancelled, and Stop with a
		// cancelled context would skip the clean shutdown.
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cluster.Stop(stopCtx); err != nil {
			fmt.Fprintf(opts.Out, "stopping Postgres: %v\n", err)
		}
	}()
	dbURL := cluster.URL("postgres")
	if err := createDemoTable(ctx, dbURL); err != nil {
		return err
	}

	recv, err := startReceiver(opts.Out)
	if err != nil {
		return err
	}
	defer recv.Close()

	cfg := &config.Config{
		Database:      config.Database{URL: dbURL},
		Server:        config.Server{Listen: opts.Listen, APITokens: []string{opts.Token}},
		Log:           config.Log{Level: "info", Format: "console"},
		HTTPEndpoints: []config.HTTPEndpoint{{Name: "printer", URL: "http://" + recv.Addr().String()}},
		Sinks: []config.Sink{
			{Name: "orders_webhook", Endpoint: "printer", Path: "/orders", Tables: []string{"public.orders"}},
			// The same changes for a consumer that pulls (the printed
			// walhook receive line): no tunnel, no receiver.
			{Name: "orders_pull", Kind: config.KindPull, Tables: []string{"public.orders"}},
		},
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	log := service.NewLogger(cfg.Log, logFile(opts.Log))
	fmt.Fprintln(opts.Out, "starting walhook ...")
	// The banner waits until the slot exists and is streamed (an INSERT
	// pasted the moment it appears must be captured), and shows the bound
	// address and a sign-in code the running console accepts.
	return service.Main(ctx, cfg, log, func(s *service.Service, addr net.Addr) error {
		code, err := s.Logins.Issue(opts.Token)
		if err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		base := "http://" + addr.String()
		fmt.Fprintf(opts.Out, `
walhook dev is running.
  Postgres:  %s
  API:       %s  (token: %s)
  Console:   %s
             (a one-time sign-in link; after that, sign in with the token)
  Receiver:  prints every delivery below

Try it in another terminal:
  psql '%s' -c "INSERT INTO orders (customer_id, total) VALUES (42, 19.99)"
  psql '%s' -c "UPDATE orders SET status = 'shipped' WHERE customer_id = 42"
Or pull the same changes (sink orders_pull) instead of receiving webhooks:
  walhook receive orders_pull --follow --ack --url %s --token %s

Ctrl-C stops everything.

`, dbURL, base, opts.Token, console.LoginURL(base, code), dbURL, dbURL, base, opts.Token)
		return nil
	})
}

func logFile(w io.Writer) *os.File {
	if f, ok := w.(*os.File); ok {
		return f
	}
	return os.Stderr
}

func createDemoTable(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("dev: connect to the playground database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, demoDDL); err != nil {
		return fmt.Errorf("dev: create demo table: %w", err)
	}
	return nil
}

// receiver prints deliveries, one message per block.
type receiver struct {
	net.Listener
	srv *http.Server
}

func startReceiver(out io.Writer) (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("dev: receiver: %w", err)
	}
	var mu sync.Mutex
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 10<<20))
		var env struct {
			Data []json.RawMessage `json:"data"`
		}
		mu.Lock()
		defer mu.Unlock()
		if json.Unmarshal(body, &env) != nil {
			fmt.Fprintf(out, "<- %s %s (not JSON): %s\n", r.Method, r.URL.Path, body)
			return
		}
		for _, m := range env.Data {
			var pretty bytes.Buffer
			if json.Indent(&pretty, m, "   ", "  ") != nil {
				pretty.Write(m)
			}
			fmt.Fprintf(out, "<- POST %s\n   %s\n", r.URL.Path, pretty.String())
		}
	})}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(out, "receiver stopped: %v\n", err)
		}
	}()
	return &receiver{Listener: ln, srv: srv}, nil
}

func (r *receiver) Close() error { return r.srv.Close() }
