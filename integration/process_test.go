package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// walhookBin builds cmd/walhook once per test binary, for tests that need
// a real process to kill.
func walhookBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "walhook-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "walhook")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/walhook").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// proc is a walhook child process.
type proc struct {
	cmd *exec.Cmd
	log *os.File
}

// writeConfig writes a config for a child process: one sink on public.t
// at batch_size 10.
func (b *testBundle) writeConfig(t testing.TB, endpointURL string) string {
	return b.writeConfigFor(t, endpointURL, "public.t", 10)
}

// writeConfigFor writes a config with one sink "s" on table.
func (b *testBundle) writeConfigFor(t testing.TB, endpointURL, table string, batch int) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "walhook-cfg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "walhook.yaml")
	yaml := fmt.Sprintf(`
database: {url: %q}
server: {listen: "127.0.0.1:0"}
log: {level: info, format: json}
http_endpoints:
  - {name: recv, url: %q}
sinks:
  - name: s
    endpoint: recv
    path: /hook
    tables: [%s]
    batch_size: %d
    concurrency: 4
    request_timeout: 2s
    retry: {initial_backoff: 50ms, max_backoff: 200ms}
`, b.url, endpointURL, table, batch)
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func startProc(t testing.TB, cfgPath, name string) *proc {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(walhookBin(t), "run", "-c", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logf}
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		_, _ = p.cmd.Process.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s log (tail):\n%s", name, tail(string(b), 3000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *proc) kill9() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_, _ = p.cmd.Process.Wait()
}

// slotActive reports whether a walsender streams this database's slot.
// The slot's active flag alone is not enough: it is set while
// pg_create_logical_replication_slot still waits for a consistent point,
// and a transaction begun then is not decoded. A failed query fails the
// bundle's test (it has no test of its own to take: it is a waitFor
// condition, the benchmarks' too, whose bare bundles have none).
func (b *testBundle) slotActive() bool {
	var active bool
	err := b.db.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_replication_slots s
		JOIN pg_stat_replication r ON r.pid = s.active_pid
		WHERE s.slot_name = 'walhook' AND s.database = current_database())`).Scan(&active)
	if err != nil {
		if b.t == nil {
			panic(fmt.Sprintf("is the slot active: %v", err))
		}
		b.t.Fatalf("is the slot active: %v", err)
	}
	return active
}

// Killing walhook with SIGKILL at random points while transactions commit
// loses no change and writes none twice into the outbox.
func TestKill9CaptureExactlyOnce(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`)
	cfg := b.writeConfig(t, "http://127.0.0.1:1") // unreachable: everything stays in the outbox
	ctx := context.Background()
	const txs, perTx = 60, 50
	p := startProc(t, cfg, "walhook-1")
	waitFor(t, 20*time.Second, "streaming", b.slotActive) // changes before the slot exists are not captured
	done := make(chan error, 1)
	go func() {
		for i := 0; i < txs; i++ {
			if _, err := b.db.Exec(ctx, `INSERT INTO t SELECT g, 0 FROM generate_series($1::int, $2::int) g`, i*perTx+1, (i+1)*perTx); err != nil {
				done <- err
				return
			}
			time.Sleep(15 * time.Millisecond) // spread the commits over the kills
		}
		done <- nil
	}()
	for i := 0; i < 4; i++ {
		waitFor(t, 20*time.Second, "streaming", b.slotActive)
		time.Sleep(time.Duration(100+i*70) * time.Millisecond) // kill at varying points of capture
		p.kill9()
		p = startProc(t, cfg, "walhook-"+strconv.Itoa(i+2))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A marker committed after every transaction: capture writes the
	// outbox in commit order, so once the marker is there, every change
	// (and any duplicate of one) is there too.
	const marker = txs*perTx + 1
	b.exec(t, `INSERT INTO t VALUES ($1, 0)`, marker)
	waitFor(t, 30*time.Second, "the marker in the outbox", func() bool {
		var n int
		if err := b.db.QueryRow(ctx, `SELECT count(*) FROM walhook.outbox WHERE payload::jsonb->'record'->>'id' = $1`, strconv.Itoa(marker)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	var total, distinct, ids int
	if err := b.db.QueryRow(ctx, `SELECT count(*), count(DISTINCT (commit_lsn, commit_idx)), count(DISTINCT (payload::jsonb->'record'->>'id'))
		FROM walhook.outbox WHERE payload::jsonb->'record'->>'id' <> $1`, strconv.Itoa(marker)).Scan(&total, &distinct, &ids); err != nil {
		t.Fatal(err)
	}
	if total != txs*perTx || distinct != total {
		t.Fatalf("outbox has %d rows (%d distinct), want exactly %d", total, distinct, txs*perTx)
	}
	if ids != txs*perTx {
		t.Fatalf("outbox covers %d rows, want %d", ids, txs*perTx)
	}
}

// Killing walhook mid-delivery and restarting it delivers everything;
// duplicates come only from batches that were in flight.
func TestKill9DeliversEverything(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`)
	b.recv.setRespond(func(*request) int { time.Sleep(2 * time.Millisecond); return 200 })
	cfg := b.writeConfig(t, b.recv.URL())
	ctx := context.Background()
	const rows = 2000
	p := startProc(t, cfg, "walhook-1")
	waitFor(t, 20*time.Second, "streaming", b.slotActive)
	go func() {
		for i := 0; i < rows/100; i++ {
			if _, err := b.db.Exec(ctx, `INSERT INTO t SELECT g, 0 FROM generate_series($1::int, $2::int) g`, i*100+1, (i+1)*100); err != nil {
				t.Errorf("insert: %v", err)
				return
			}
			time.Sleep(10 * time.Millisecond) // spread the inserts over the kills
		}
	}()
	for i := 0; i < 3; i++ {
		time.Sleep(300 * time.Millisecond) // kill mid-delivery
		p.kill9()
		p = startProc(t, cfg, "walhook-"+strconv.Itoa(i+2))
	}
	waitFor(t, 60*time.Second, "every row delivered", func() bool {
		seen := map[float64]bool{}
		for _, m := range b.recv.acked() {
			seen[m.Record["id"].(float64)] = true
		}
		return len(seen) == rows
	})
	dups := b.recv.count() - rows
	t.Logf("%d rows delivered with %d duplicates across 3 kill -9", rows, dups)
	if dups > 3*4*10 { // at most the in-flight batches of each killed process
		t.Errorf("%d duplicates, more than the in-flight batches of the killed processes", dups)
	}
}

// Two processes share delivery without delivering a message twice, and
// when the streaming one dies the other takes over the slot.
func TestTwoProcessesAndFailover(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`)
	cfg := b.writeConfig(t, b.recv.URL())
	ctx := context.Background()
	a := startProc(t, cfg, "walhook-a")
	waitFor(t, 20*time.Second, "a streaming", b.slotActive)
	startProc(t, cfg, "walhook-b")
	b.exec(t, `INSERT INTO t SELECT g, 0 FROM generate_series(1, 500) g`)
	for v := 1; v <= 3; v++ {
		b.exec(t, `UPDATE t SET v = $1`, v)
	}
	msgs := b.recv.waitCount(t, 2000, 60*time.Second)
	checkGroupOrder(t, msgs)
	b.waitDrained(t, 30*time.Second) // a message delivered twice is delivered before its ack empties the outbox
	if n := b.recv.count(); n != 2000 {
		t.Errorf("delivered %d messages, want exactly 2000 (no crash, so no duplicates)", n)
	}
	if o := b.recv.overlaps(); len(o) > 0 {
		t.Errorf("a group was in flight in both processes at once: %v", o[:min(5, len(o))])
	}
	a.kill9()
	start := time.Now()
	b.exec(t, `INSERT INTO t VALUES (10000, 0)`)
	waitFor(t, 30*time.Second, "failover delivery", func() bool { return b.recv.has(10000) })
	t.Logf("failover: change delivered %s after the leader was killed", time.Since(start).Round(time.Millisecond))
	var active bool
	mustScan(t, b.db.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = 'walhook'`), &active)
	if !active {
		t.Error("slot not streamed after failover")
	}
}

// A 1M-row transaction streams through with bounded memory.
func TestMillionRowTransactionBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("large transaction")
	}
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int, pad text)`)
	cfg := b.writeConfig(t, "http://127.0.0.1:1")
	ctx := context.Background()
	p := startProc(t, cfg, "walhook")
	waitFor(t, 20*time.Second, "streaming", b.slotActive)
	// Deliveries to the unreachable endpoint stay backing off; pause the
	// sink so only capture runs.
	b.exec(t, `UPDATE walhook.sinks SET status = 'paused'`)
	const rows = 1_000_000
	b.exec(t, `INSERT INTO t SELECT g, 0, repeat('x', 100) FROM generate_series(1, $1::int) g`, rows)
	var n int
	waitFor(t, 5*time.Minute, "1M rows in the outbox", func() bool {
		mustScan(t, b.db.QueryRow(ctx, `SELECT count(*) FROM walhook.outbox`), &n)
		return n >= rows
	})
	hwm := peakRSS(t, p.cmd.Process.Pid)
	t.Logf("peak RSS with a 1M-row transaction: %d MB", hwm>>20)
	if hwm > 200<<20 {
		t.Fatalf("peak RSS %d MB: the transaction was held in memory", hwm>>20)
	}
}

// peakRSS reads VmHWM of a process, in bytes.
func peakRSS(t testing.TB, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		skipUnlessCI(t, "no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	skipUnlessCI(t, "no VmHWM in /proc/%d/status", pid)
	return 0
}

// writeConfigDefaults writes a config with one sink "s" on public.t at the
// documented defaults (batch_size 1, request_timeout 30s, retry backoff from
// 1s), except a short backoff cap so that failed requests come back soon.
func (b *testBundle) writeConfigDefaults(t testing.TB, endpointURL string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "walhook.yaml")
	yaml := fmt.Sprintf(`
database: {url: %q}
server: {listen: "127.0.0.1:0"}
log: {level: info, format: json}
http_endpoints:
  - {name: recv, url: %q}
sinks:
  - name: s
    endpoint: recv
    path: /hook
    tables: [public.t]
    retry: {initial_backoff: 100ms, max_backoff: 500ms}
`, b.url, endpointURL)
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// hotRows updates a few rows over and over until stop is closed; it
// returns the number of versions written per row.
func (b *testBundle) hotRows(t *testing.T, rows int, stop <-chan struct{}) <-chan int {
	ctx := context.Background()
	b.exec(t, `INSERT INTO t SELECT g, 0 FROM generate_series(1, $1::int) g`, rows)
	out := make(chan int, 1)
	go func() {
		v := 0
		for {
			select {
			case <-stop:
				out <- v
				return
			default:
			}
			v++
			if _, err := b.db.Exec(ctx, `UPDATE t SET v = $1`, v); err != nil {
				t.Errorf("update: %v", err)
				out <- v - 1
				return
			}
			time.Sleep(60 * time.Millisecond) // a steady pace of versions
		}
	}()
	return out
}

// kill -9 in a loop, at the default request_timeout, while hot rows change
// and a tenth of the requests fail: every version of every row arrives,
// first deliveries in order, and the last restart resumes within seconds.
func TestKill9Loop(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`)
	var n atomic.Int64
	b.recv.setRespond(func(*request) int {
		if n.Add(1)%10 == 0 {
			return 500
		}
		return 200
	})
	cfg := b.writeConfigDefaults(t, b.recv.URL())
	p := startProc(t, cfg, "walhook-1")
	waitFor(t, 20*time.Second, "streaming", b.slotActive)
	const rows = 20
	stop := make(chan struct{})
	versions := b.hotRows(t, rows, stop)
	for i := range 8 {
		time.Sleep(time.Duration(300+i*60) * time.Millisecond) // kill at varying points of delivery
		p.kill9()
		p = startProc(t, cfg, "walhook-"+strconv.Itoa(i+2))
	}
	restarted := time.Now()
	before := b.recv.count()
	waitFor(t, 30*time.Second, "delivery after the last restart", func() bool { return b.recv.count() > before })
	t.Logf("the last restart delivered again %s after it was started", time.Since(restarted).Round(time.Millisecond))
	close(stop)
	last := <-versions
	waitFor(t, 60*time.Second, "every version of every row", func() bool {
		got := map[[2]float64]bool{}
		for _, m := range b.recv.acked() {
			got[[2]float64{m.Record["id"].(float64), m.Record["v"].(float64)}] = true
		}
		return len(got) == rows*(last+1)
	})
	msgs := b.recv.acked()
	firstNewOrder(t, msgs)
	t.Logf("%d rows × %d versions delivered through 8 kill -9 (%d messages, %d duplicates)", rows, last+1, len(msgs), len(msgs)-rows*(last+1))
}

// workerPID finds the process that holds a live claim of group, from the
// worker name in its claim ("host-PID-random").
// It is 0 while no claim holds group.
func (b *testBundle) workerPID(t testing.TB, group string) int {
	t.Helper()
	var worker string
	err := b.db.QueryRow(context.Background(), `SELECT worker FROM walhook.claims WHERE $1 = ANY(groups) AND until > clock_timestamp() LIMIT 1`, group).Scan(&worker)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0
	}
	if err != nil {
		t.Fatalf("claim of %s: %v", group, err)
	}
	parts := strings.Split(worker, "-")
	if len(parts) < 3 {
		return 0
	}
	pid, _ := strconv.Atoi(parts[len(parts)-2])
	return pid
}

// The batches in flight in a process that dies are delivered again by
// another process within seconds, not after request_timeout (30 s here).
func TestKilledProcessBatchesComeBackInSeconds(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`)
	hold := make(chan struct{})
	var held atomic.Int64
	b.recv.setRespond(func(r *request) int {
		if r.Data[0].Record["id"] == float64(1) && held.Add(1) == 1 {
			<-hold // the first request for row 1 hangs until its sender is dead
			return 200
		}
		return 200
	})
	defer close(hold)
	cfg := b.writeConfigDefaults(t, b.recv.URL())
	procs := map[int]*proc{}
	for _, name := range []string{"walhook-a", "walhook-b"} {
		p := startProc(t, cfg, name)
		procs[p.cmd.Process.Pid] = p
	}
	waitFor(t, 20*time.Second, "streaming", b.slotActive)
	b.exec(t, `INSERT INTO t VALUES (1, 0)`)
	var pid int
	waitFor(t, 20*time.Second, "row 1 in flight", func() bool { pid = b.workerPID(t, `public.t:1`); return held.Load() == 1 && pid != 0 })
	victim := procs[pid]
	if victim == nil {
		t.Fatalf("claim held by pid %d, not one of the test's processes", pid)
	}
	killed := time.Now()
	victim.kill9()
	waitFor(t, 20*time.Second, "row 1 delivered again", func() bool { return held.Load() >= 2 })
	took := time.Since(killed)
	t.Logf("kill -9 to redelivery of the batch in flight: %s", took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("the dead process's batch came back after %s, want seconds", took)
	}
}

// The process streaming the slot is frozen (SIGSTOP): the other takes
// over once Postgres frees the slot, and after SIGCONT the woken process
// neither streams nor writes a stale stream position. Nothing is lost.
func TestFrozenLeaderFailover(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`)
	// Postgres frees the slot of a silent walsender after this.
	b.exec(t, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET wal_sender_timeout = ''10s''', current_database()); END $$`)
	cfg := b.writeConfig(t, b.recv.URL())
	ctx := context.Background()
	procs := map[string]*proc{}
	for _, name := range []string{"walhook-a", "walhook-b"} {
		procs[name] = startProc(t, cfg, name)
	}
	waitFor(t, 20*time.Second, "streaming", b.slotActive)
	holder := func() (string, int64) {
		var h string
		var token int64
		mustScan(t, b.db.QueryRow(ctx, `SELECT holder, token FROM walhook.leases`), &h, &token)
		return h, token
	}
	leaderName, token := holder()
	var leader, other *proc
	for _, p := range procs {
		if strings.Contains(leaderName, "-"+strconv.Itoa(p.cmd.Process.Pid)+"-") {
			leader = p
		} else {
			other = p
		}
	}
	if leader == nil {
		t.Fatalf("lease holder %q is none of the test's processes", leaderName)
	}

	// The stream position only moves forward, whoever writes it.
	var regressed atomic.Bool
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		var prev int64
		for watchCtx.Err() == nil {
			var end int64
			if err := b.db.QueryRow(watchCtx, `SELECT end_lsn FROM walhook.replication_state`).Scan(&end); err == nil {
				if end < prev {
					regressed.Store(true)
				}
				prev = end
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	b.exec(t, `INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g`)
	b.recv.waitCount(t, 100, 20*time.Second)
	_ = leader.cmd.Process.Signal(syscall.SIGSTOP)
	frozen := time.Now()
	b.exec(t, `INSERT INTO t VALUES (1000, 0)`)
	waitFor(t, 60*time.Second, "a change committed after the freeze delivered", func() bool { return b.recv.has(1000) })
	t.Logf("failover after SIGSTOP of the leader: the next change was delivered %s later", time.Since(frozen).Round(time.Millisecond))
	newName, newToken := holder()
	if newName == leaderName || newToken <= token {
		t.Fatalf("lease after failover: %s token %d (was %s token %d)", newName, newToken, leaderName, token)
	}

	before, _ := os.ReadFile(leader.log.Name())
	_ = leader.cmd.Process.Signal(syscall.SIGCONT)
	b.exec(t, `INSERT INTO t SELECT g, 0 FROM generate_series(2000, 2099) g`)
	// Its term ends one way or another: its lease is gone (renewal or the
	// flush's fence) or Postgres dropped its walsender meanwhile.
	waitFor(t, 30*time.Second, "the woken leader to end its term", func() bool {
		log, _ := os.ReadFile(leader.log.Name())
		return strings.Contains(string(log[len(before):]), "replication stopped")
	})
	b.exec(t, `INSERT INTO t VALUES (3000, 0)`)
	waitFor(t, 30*time.Second, "every row delivered", func() bool {
		seen := map[float64]bool{}
		for _, m := range b.recv.acked() {
			seen[m.Record["id"].(float64)] = true
		}
		return len(seen) == 100+1+100+1
	})
	if h, tok := holder(); h != newName || tok != newToken {
		t.Errorf("the woken process took the lease back: %s token %d", h, tok)
	}
	if regressed.Load() {
		t.Error("the stream position moved backwards: a stale leader wrote it")
	}
	_ = other
}
