package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The suite's cost accounting (WALHOOK_BENCH_COSTS=1, own cluster only):
// what a delivered row costs outside walhook's process. It loads
// pg_stat_statements into the bench cluster and, for rows 1, 2, 3 and 3b
// and for the last round of the pull row's push and consumers, prints
// after the row the CPU per delivered row of every Postgres
// process (backends, walsenders, background workers: the postmaster's
// children, the exited ones included) and of the helper (receiver and
// writer), and the statements Postgres ran per delivered row, most
// expensive first.

const benchCostsEnv = "WALHOOK_BENCH_COSTS"

func benchCosts() bool { return os.Getenv(benchCostsEnv) != "" }

// costSettings are the bench cluster's extra settings for cost
// accounting and for plans (benchExplainEnv).
func costSettings() map[string]string {
	set := map[string]string{}
	if benchCosts() {
		set["shared_preload_libraries"] = "pg_stat_statements"
		set["pg_stat_statements.track"] = "all"
		set["pg_stat_statements.max"] = "2000"
	}
	if ms := benchExplainMS(); ms != "" {
		set["session_preload_libraries"] = "auto_explain"
		set["auto_explain.log_min_duration"] = ms
		set["auto_explain.log_analyze"] = "on"
		set["auto_explain.log_buffers"] = "on"
		set["auto_explain.log_nested_statements"] = "on"
	}
	return set
}

// benchExplainEnv (WALHOOK_BENCH_EXPLAIN=<ms>, own cluster only) logs
// the plan, with actual times and buffers, of every statement that runs
// at least that long (auto_explain); the server log is copied to
// benchPlansFile when the suite ends, since the cluster's folder goes.
// How the claim statement's time splits: grep its plans there.
const benchExplainEnv = "WALHOOK_BENCH_EXPLAIN"

var benchPlansFile = filepath.Join(os.TempDir(), "walhook-bench-plans.log")

func benchExplainMS() string {
	if _, err := strconv.ParseFloat(os.Getenv(benchExplainEnv), 64); err != nil {
		return ""
	}
	return os.Getenv(benchExplainEnv)
}

// keepPlans copies the server log, with its plans, to benchPlansFile.
func keepPlans(logFile string) {
	if benchExplainMS() == "" {
		return
	}
	raw, err := os.ReadFile(logFile)
	if err == nil {
		err = os.WriteFile(benchPlansFile, raw, 0o644)
	}
	if err != nil {
		fmt.Printf("bench: keep plans: %v\n", err)
		return
	}
	fmt.Printf("bench: plans of statements over %s ms: %s\n", benchExplainMS(), benchPlansFile)
}

// costMeter is a window of cost accounting.
type costMeter struct {
	s       *suite
	db      *pgxpool.Pool
	pg, hlp time.Duration
}

// startCosts starts a window; nil when cost accounting is off.
func (s *suite) startCosts(db *pgxpool.Pool) *costMeter {
	if !benchCosts() || s.dataDir == "" {
		return nil
	}
	if _, err := db.Exec(s.ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		fmt.Printf("bench: costs: %v\n", err)
		return nil
	}
	if _, err := db.Exec(s.ctx, `SELECT pg_stat_statements_reset()`); err != nil {
		fmt.Printf("bench: costs: %v\n", err)
		return nil
	}
	return &costMeter{s: s, db: db, pg: s.postgresCPU(), hlp: procCPU(s.helper.pid)}
}

// postgresCPU is the CPU time of the postmaster and all its children,
// the reaped ones included (its cutime/cstime).
func (s *suite) postgresCPU() time.Duration {
	raw, err := os.ReadFile(filepath.Join(s.dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm, _ := strconv.Atoi(strings.SplitN(string(raw), "\n", 2)[0])
	total := procCPUAll(pm)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pm {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pm) {
			total += procCPU(pid)
		}
	}
	return total
}

// procCPUAll is a process's utime+stime+cutime+cstime.
func procCPUAll(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	st := string(raw)
	f := strings.Fields(st[strings.LastIndexByte(st, ')')+1:])
	if len(f) < 15 {
		return 0
	}
	var t int64
	for _, i := range []int{11, 12, 13, 14} {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		t += v
	}
	return time.Duration(t) * time.Second / 100
}

// report prints the window's costs per delivered row.
func (c *costMeter) report(id string, rows int64) {
	if c == nil || rows <= 0 {
		return
	}
	r := float64(rows)
	pg := float64((c.s.postgresCPU() - c.pg).Microseconds()) / r
	hlp := float64((procCPU(c.s.helper.pid) - c.hlp).Microseconds()) / r
	fmt.Printf("bench: row %s costs per delivered row: Postgres CPU %.0f µs (all processes), helper CPU %.0f µs\n", id, pg, hlp)
	q, err := c.db.Query(c.s.ctx, `SELECT calls, rows, total_exec_time, shared_blks_hit + shared_blks_read, wal_records,
			regexp_replace(left(query, 110), '\s+', ' ', 'g')
		FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25`)
	if err != nil {
		fmt.Printf("bench: costs: %v\n", err)
		return
	}
	defer q.Close()
	fmt.Printf("bench:   %8s %8s %8s %8s %8s  %s\n", "calls", "rows", "exec µs", "blocks", "WAL rec", "statement (per delivered row)")
	for q.Next() {
		var calls, n, blks, wal int64
		var ms float64
		var text string
		if err := q.Scan(&calls, &n, &ms, &blks, &wal, &text); err != nil {
			fmt.Printf("bench: costs: %v\n", err)
			return
		}
		fmt.Printf("bench:   %8.3f %8.3f %8.1f %8.1f %8.2f  %s\n", float64(calls)/r, float64(n)/r, ms*1000/r, float64(blks)/r, float64(wal)/r, text)
	}
}
