package integration

// The benchmark suite's load helper: the test binary run again as a child
// process (TestBenchHelperProcess), which is both the receiver the sinks
// post to and the writer that commits 1-row transactions. Keeping both
// out of the benchmark's process means that process's CPU time
// (getrusage) is walhook's own, and a receipt time and a commit time come
// from the same clock without sharing a scheduler with walhook.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

const benchHelperEnv = "WALHOOK_BENCH_HELPER"

// helperMode is how the receiver answers.
type helperMode struct {
	// FailOnce answers 500 to the first request carrying a message, 200
	// to every later one.
	FailOnce bool `json:"fail_once"`
	// SleepMS is how long each request takes.
	SleepMS int `json:"sleep_ms"`
	// Record keeps every message's arrival times (for latencies).
	Record bool `json:"record"`
}

// helperStats is what the receiver saw since its last reset. Times are
// Unix nanoseconds at handler entry; keys are "<path> <record id>".
type helperStats struct {
	N        int64              `json:"n"` // messages answered 200
	Reads    int64              `json:"reads"`
	First    int64              `json:"first"` // first and last 200 request
	Last     int64              `json:"last"`
	Arrivals map[string][]int64 `json:"arrivals,omitempty"` // every arrival, failed ones too
	Failed   map[string]int64   `json:"failed,omitempty"`   // when the 500 was answered
}

// helperWrite asks the writer for N 1-row transactions
// (INSERT INTO table (id) VALUES (from+i)) at TPS (0: as fast as it
// can) over Conns connections.
type helperWrite struct {
	URL   string  `json:"url"`
	Table string  `json:"table"`
	From  int64   `json:"from"`
	N     int64   `json:"n"`
	TPS   float64 `json:"tps"`
	Conns int     `json:"conns"`
}

// helperWritten is the writer's result: Commits[i] is when the
// transaction of id From+i returned from COMMIT (0: not written), and
// Took[i] how long that 1-row durable write took from its send: what
// one synchronous commit costs on this machine, the floor of any
// latency that waits for one.
type helperWritten struct {
	Commits []int64 `json:"commits"`
	Took    []int64 `json:"took"`
	Err     string  `json:"err"`
}

// TestBenchHelperProcess is the helper's body; it does nothing unless
// started by startBenchHelper.
func TestBenchHelperProcess(t *testing.T) {
	if os.Getenv(benchHelperEnv) != "1" {
		return
	}
	h := &helperServer{arrivals: map[string][]int64{}, failed: map[string]int64{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Printf("ADDR %s\n", ln.Addr())
	mux := http.NewServeMux()
	mux.HandleFunc("/", h.receive)
	mux.HandleFunc("POST /_mode", func(w http.ResponseWriter, r *http.Request) {
		var m helperMode
		_ = json.NewDecoder(r.Body).Decode(&m)
		h.mu.Lock()
		h.mode = m
		h.mu.Unlock()
	})
	mux.HandleFunc("POST /_reset", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.st = helperStats{}
		h.arrivals = map[string][]int64{}
		h.failed = map[string]int64{}
		h.mu.Unlock()
	})
	mux.HandleFunc("GET /_stats", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		st := h.st
		if r.URL.Query().Get("detail") != "" {
			st.Arrivals, st.Failed = h.arrivals, h.failed
		}
		out, _ := json.Marshal(st)
		h.mu.Unlock()
		_, _ = w.Write(out)
	})
	mux.HandleFunc("POST /_write", h.startWrite)
	mux.HandleFunc("POST /_write/stop", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		if h.stopWrite != nil {
			h.stopWrite()
		}
		h.mu.Unlock()
	})
	mux.HandleFunc("GET /_write/wait", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		done := h.writeDone
		h.mu.Unlock()
		if done == nil {
			http.Error(w, "no write", 400)
			return
		}
		<-done
		h.mu.Lock()
		out, _ := json.Marshal(h.written)
		h.mu.Unlock()
		_, _ = w.Write(out)
	})
	_ = http.Serve(ln, mux)
}

type helperServer struct {
	mu       sync.Mutex
	mode     helperMode
	st       helperStats
	arrivals map[string][]int64
	failed   map[string]int64

	writeDone chan struct{}
	stopWrite func()
	written   helperWritten
}

func (h *helperServer) receive(w http.ResponseWriter, r *http.Request) {
	now := time.Now().UnixNano()
	var env struct {
		Data []struct {
			Action string `json:"action"`
			Record struct {
				ID json.RawMessage `json:"id"`
			} `json:"record"`
		} `json:"data"`
	}
	if err := json.NewDecoder(r.Body).Decode(&env); err != nil {
		w.WriteHeader(400)
		return
	}
	h.mu.Lock()
	mode := h.mode
	fail := false
	var keys []string
	if mode.Record || mode.FailOnce {
		for _, m := range env.Data {
			k := r.URL.Path + " " + string(m.Record.ID)
			keys = append(keys, k)
			if mode.FailOnce && len(h.arrivals[k]) == 0 {
				fail = true
			}
			h.arrivals[k] = append(h.arrivals[k], now)
		}
	}
	h.mu.Unlock()
	if mode.SleepMS > 0 {
		time.Sleep(time.Duration(mode.SleepMS) * time.Millisecond)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if fail {
		t := time.Now().UnixNano()
		for _, k := range keys {
			if _, ok := h.failed[k]; !ok {
				h.failed[k] = t
			}
		}
		w.WriteHeader(500)
		return
	}
	if h.st.First == 0 {
		h.st.First = now
	}
	h.st.Last = max(h.st.Last, now)
	h.st.N += int64(len(env.Data))
	for _, m := range env.Data {
		if m.Action == "read" {
			h.st.Reads++
		}
	}
}

func (h *helperServer) startWrite(w http.ResponseWriter, r *http.Request) {
	var req helperWrite
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cfg, err := pgxpool.ParseConfig(req.URL)
	if err != nil {
		cancel()
		http.Error(w, err.Error(), 400)
		return
	}
	conns := max(req.Conns, 1)
	cfg.MaxConns, cfg.MinConns = int32(conns), int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		cancel()
		http.Error(w, err.Error(), 500)
		return
	}
	// Open every connection before the clock starts.
	var warm sync.WaitGroup
	for range conns {
		warm.Go(func() { _, _ = pool.Exec(ctx, `SELECT 1`) })
	}
	warm.Wait()
	done := make(chan struct{})
	h.mu.Lock()
	h.writeDone, h.stopWrite = done, cancel
	h.written = helperWritten{}
	h.mu.Unlock()
	commits, took := make([]int64, req.N), make([]int64, req.N)
	go func() {
		defer close(done)
		defer pool.Close()
		defer cancel()
		var next atomic.Int64
		var errMu sync.Mutex
		var firstErr error
		start := time.Now()
		var wg sync.WaitGroup
		q := `INSERT INTO ` + req.Table + ` (id) VALUES ($1)`
		for range conns {
			wg.Go(func() {
				for ctx.Err() == nil {
					i := next.Add(1) - 1
					if i >= req.N {
						return
					}
					if req.TPS > 0 {
						due := start.Add(time.Duration(float64(i) * float64(time.Second) / req.TPS))
						if d := time.Until(due); d > 0 {
							select {
							case <-ctx.Done():
								return
							case <-time.After(d):
							}
						}
					}
					sent := time.Now()
					if _, err := pool.Exec(ctx, q, req.From+i); err != nil {
						if ctx.Err() == nil {
							errMu.Lock()
							firstErr = cmpOr(firstErr, err)
							errMu.Unlock()
						}
						return
					}
					commits[i] = time.Now().UnixNano()
					took[i] = commits[i] - sent.UnixNano()
				}
			})
		}
		wg.Wait()
		h.mu.Lock()
		h.written.Commits, h.written.Took = commits, took
		if firstErr != nil {
			h.written.Err = firstErr.Error()
		}
		h.mu.Unlock()
	}()
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// benchHelper is the parent's handle on the helper process.
type benchHelper struct {
	tb  testing.TB
	url string
	pid int
}

func startBenchHelper(tb testing.TB) *benchHelper {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestBenchHelperProcess$", "-test.timeout", "0")
	cmd.Env = append(os.Environ(), benchHelperEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ADDR ") {
		tb.Fatalf("bench helper: %q %v", line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return &benchHelper{tb: tb, url: "http://" + strings.TrimSpace(strings.TrimPrefix(line, "ADDR ")), pid: cmd.Process.Pid}
}

func (h *benchHelper) call(method, path string, body, out any) {
	h.tb.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, h.url+path, rd)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.tb.Fatalf("bench helper %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		msg, _ := io.ReadAll(resp.Body)
		h.tb.Fatalf("bench helper %s: %d %s", path, resp.StatusCode, msg)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			h.tb.Fatalf("bench helper %s: %v", path, err)
		}
	}
}

// reset clears the receiver's counts and sets how it answers.
func (h *benchHelper) reset(m helperMode) {
	h.call("POST", "/_reset", nil, nil)
	h.call("POST", "/_mode", m, nil)
}

func (h *benchHelper) stats(detail bool) helperStats {
	var st helperStats
	path := "/_stats"
	if detail {
		path += "?detail=1"
	}
	h.call("GET", path, nil, &st)
	return st
}

// waitUpTo waits until n messages were answered 200 or d has passed,
// and reports whether all came: a slow build stops a row early rather
// than making the suite take an hour, and its rate is then that of the
// messages that came.
func (h *benchHelper) waitUpTo(n int64, d time.Duration) (helperStats, bool) {
	deadline := time.Now().Add(d)
	for {
		st := h.stats(false)
		if st.N >= n {
			return st, true
		}
		if time.Now().After(deadline) {
			return st, false
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (h *benchHelper) write(w helperWrite) { h.call("POST", "/_write", w, nil) }

func (h *benchHelper) stopWrite() { h.call("POST", "/_write/stop", nil, nil) }

func (h *benchHelper) written() helperWritten {
	var res helperWritten
	h.call("GET", "/_write/wait", nil, &res)
	if res.Err != "" {
		h.tb.Fatalf("bench helper write: %s", res.Err)
	}
	return res
}

// latencies pairs each committed id with its first arrival on path:
// commit-to-receipt times, and how many commits were not received (by
// the stats' time: they count with the time waited so far, a lower
// bound).
func latencies(w helperWritten, st helperStats, path string, from int64) (l []time.Duration, missing int) {
	now := time.Now().UnixNano()
	for i, c := range w.Commits {
		if c == 0 {
			continue
		}
		a := st.Arrivals[path+" "+strconv.FormatInt(from+int64(i), 10)]
		if len(a) == 0 {
			missing++
			l = append(l, time.Duration(now-c))
			continue
		}
		l = append(l, time.Duration(a[0]-c))
	}
	return l, missing
}
