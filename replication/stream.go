package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/pgdial"
)

// Config says which slot to read and how eagerly to flush.
type Config struct {
	URL         string
	Slot        string
	Publication string
	// FlushDelay bounds how long a committed transaction may wait in the
	// handler's buffer before a flush, under load; small values trade
	// throughput for latency. Default 10ms. A transaction that arrives
	// alone, more than idleGap after the last flush, is flushed at once,
	// and buffered ones are flushed once the slot has sent nothing for
	// idleGap: light traffic pays no batching delay, and only a stream
	// that keeps coming is batched up to FlushDelay.
	FlushDelay time.Duration
	// MaxBuffered flushes early once this many changes wait. Default 10000.
	MaxBuffered int
	// StatusInterval is how often the slot position is reported even when
	// nothing happens. Default 10s.
	StatusInterval time.Duration
	Log            zerolog.Logger
}

// idleGap is how long without WAL from the slot (or since the last
// flush) the stream counts as quiet: whoever waits in the buffer then
// waits for nothing.
const idleGap = time.Millisecond

// Status is what the stream reports for health checks and metrics.
type Status struct {
	Streaming bool
	// Received is the end of the WAL the server reported; Confirmed what
	// walhook confirmed to the slot.
	Received, Confirmed uint64
	// Lag is how old the latest transaction read was when the server sent
	// it (both times from the server's clock); 0 once caught up.
	Lag time.Duration
}

// Stream reads the slot. One Stream runs at a time per slot (the leader).
type Stream struct {
	cfg  Config
	pool *pgxpool.Pool

	streaming   atomic.Bool
	received    atomic.Uint64
	confirmed   atomic.Uint64
	lag         atomic.Int64 // nanoseconds
	started     chan struct{}
	startedOnce sync.Once
}

// NewStream uses pool (the source database) for catalog look-ups.
func NewStream(cfg Config, pool *pgxpool.Pool) *Stream {
	if cfg.FlushDelay <= 0 {
		cfg.FlushDelay = 10 * time.Millisecond
	}
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = 10000
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 10 * time.Second
	}
	return &Stream{cfg: cfg, pool: pool, started: make(chan struct{})}
}

// Started is closed the first time the stream streams: from then on, a
// change committed to a published table is captured. `walhook dev` waits
// for it before it invites the user to write.
func (s *Stream) Started() <-chan struct{} { return s.started }

// Status returns the stream's current position.
func (s *Stream) Status() Status {
	return Status{Streaming: s.streaming.Load(), Received: s.received.Load(), Confirmed: s.confirmed.Load(), Lag: time.Duration(s.lag.Load())}
}

// replicationConfig is the source URL as a replication connection, with
// the session settings the value mapping relies on.
func replicationConfig(url string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	pgdial.Configure(cfg)
	cfg.RuntimeParams["replication"] = "database"
	SetSessionParams(cfg.RuntimeParams)
	cfg.RuntimeParams["application_name"] = "walhook"
	return cfg, nil
}

// SetSessionParams sets the session settings the value mapping relies on
// (date, time and interval styles, time zone, float digits, bytea
// output). The replication connection and any connection that reads rows
// to render like changes (backfills) set the same ones, so both render
// byte for byte alike.
func SetSessionParams(p map[string]string) {
	p["DateStyle"] = "ISO, MDY"
	p["TimeZone"] = "UTC"
	p["IntervalStyle"] = "postgres"
	p["extra_float_digits"] = "3"
	p["bytea_output"] = "hex"
}

// Run streams until ctx ends or the connection fails. It resumes after the
// handler's durable position, and confirms to the slot only what the
// handler flushed.
func (s *Stream) Run(ctx context.Context, h Handler) error {
	commitLSN, endLSN, err := h.Position(ctx)
	if err != nil {
		return fmt.Errorf("read stream position: %w", err)
	}
	rcfg, err := replicationConfig(s.cfg.URL)
	if err != nil {
		return err
	}
	conn, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		return fmt.Errorf("replication connection: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	args := []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", s.cfg.Publication), "messages 'true'"}
	if err := pglogrepl.StartReplication(ctx, conn, s.cfg.Slot, pglogrepl.LSN(endLSN), pglogrepl.StartReplicationOptions{PluginArgs: args}); err != nil {
		return fmt.Errorf("start replication on slot %s: %w", s.cfg.Slot, err)
	}
	s.streaming.Store(true)
	defer s.streaming.Store(false)
	s.startedOnce.Do(func() { close(s.started) })
	s.cfg.Log.Info().Str("slot", s.cfg.Slot).Str("from", pglogrepl.LSN(endLSN).String()).Msg("streaming")

	dec := newDecoder(h, newCatalog(s.pool), commitLSN)
	confirmed := endLSN
	s.confirmed.Store(confirmed)
	lastStatus := time.Now()
	var dirtySince time.Time // first commit not yet flushed; zero when clean
	var lastFlush time.Time  // when the last flush ended
	var lastData time.Time   // when the slot last sent WAL
	// quietCheck is when to look whether the slot has gone quiet
	// (lastData more than idleGap ago): it moves by whole idleGaps, not
	// with every message, so the receive deadline changes seldom.
	var quietCheck time.Time

	sendStatus := func() error {
		lastStatus = time.Now()
		err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(confirmed)})
		if err != nil {
			return fmt.Errorf("send standby status: %w", err)
		}
		return nil
	}
	flush := func() error {
		lsn, err := h.Flush(ctx)
		if err != nil {
			return fmt.Errorf("flush to outbox: %w", err)
		}
		dirtySince, quietCheck = time.Time{}, time.Time{}
		lastFlush = time.Now()
		if lsn > confirmed {
			confirmed = lsn
			s.confirmed.Store(confirmed)
			return sendStatus()
		}
		return nil
	}

	recv := &receiveContext{parent: ctx}
	defer recv.stop()
	for {
		if !dirtySince.IsZero() && !dec.inTx {
			now := time.Now()
			if now.Sub(dirtySince) >= s.cfg.FlushDelay || now.Sub(lastData) >= idleGap {
				if err := flush(); err != nil {
					return err
				}
			} else if !now.Before(quietCheck) {
				quietCheck = lastData.Add(idleGap)
			}
		}
		deadline := lastStatus.Add(s.cfg.StatusInterval)
		if !dirtySince.IsZero() && !dec.inTx {
			deadline = dirtySince.Add(s.cfg.FlushDelay)
			if quietCheck.Before(deadline) {
				deadline = quietCheck
			}
		}
		raw, err := conn.ReceiveMessage(recv.until(deadline))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				if time.Since(lastStatus) >= s.cfg.StatusInterval {
					if err := sendStatus(); err != nil {
						return err
					}
				}
				continue
			}
			return fmt.Errorf("receive from slot %s: %w", s.cfg.Slot, err)
		}
		var data []byte
		switch m := raw.(type) {
		case *pgproto3.CopyData:
			data = m.Data
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(m))
		default:
			continue
		}
		if len(data) == 0 {
			continue
		}
		switch data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
			if err != nil {
				return fmt.Errorf("parse keepalive: %w", err)
			}
			s.received.Store(max(s.received.Load(), uint64(ka.ServerWALEnd)))
			// Idle advance: with nothing received and unflushed, every
			// transaction before the server's position has been handled.
			if dirtySince.IsZero() && !dec.inTx && h.Buffered() == 0 && uint64(ka.ServerWALEnd) > confirmed {
				confirmed = uint64(ka.ServerWALEnd)
				s.confirmed.Store(confirmed)
			}
			if confirmed >= uint64(ka.ServerWALEnd) {
				s.lag.Store(0) // caught up
			}
			if ka.ReplyRequested || time.Since(lastStatus) >= s.cfg.StatusInterval {
				if err := sendStatus(); err != nil {
					return err
				}
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(data[1:])
			if err != nil {
				return fmt.Errorf("parse XLogData: %w", err)
			}
			s.received.Store(max(s.received.Load(), uint64(xld.ServerWALEnd)))
			lastData = time.Now()
			wasInTx := dec.inTx
			if err := dec.handle(ctx, uint64(xld.WALStart), xld.WALData); err != nil {
				return err
			}
			if wasInTx && !dec.inTx { // a commit
				s.lag.Store(int64(max(xld.ServerTime.Sub(dec.commitTime), 0)))
				alone := dirtySince.IsZero()
				if alone {
					dirtySince = lastData
					quietCheck = lastData.Add(idleGap)
				}
				// Alone and after a quiet spell: nobody to batch with, so
				// flush now. Under load the next commit is already
				// waiting when a flush ends, and batches form.
				if alone && dirtySince.Sub(lastFlush) >= idleGap || h.Buffered() >= s.cfg.MaxBuffered {
					if err := flush(); err != nil {
						return err
					}
				}
			}
		}
	}
}

// receiveContext is the context of the stream's receives: one per
// deadline, not one per message, since the deadline only moves with a
// status update or a flush.
type receiveContext struct {
	parent   context.Context
	ctx      context.Context
	cancel   context.CancelFunc
	deadline time.Time
}

func (r *receiveContext) until(deadline time.Time) context.Context {
	if r.ctx == nil || !deadline.Equal(r.deadline) {
		r.stop()
		r.ctx, r.cancel = context.WithDeadline(r.parent, deadline)
		r.deadline = deadline
	}
	return r.ctx
}

func (r *receiveContext) stop() {
	if r.cancel != nil {
		r.cancel()
	}
}

// isDuplicate reports a duplicate_object error: another process created
// the same thing first.
func isDuplicate(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42710" || pgErr.Code == "23505")
}
