package outbox

// claimFreshSQL is claimSQL for the state most claims of a backlog meet:
// every candidate is fresh, alone in its group (its group's only unfailed
// message), in a group no live claim names, there is no retry to take,
// and max_ack_pending has room for all of them. claimSQL then takes the
// candidates as they come, in (ready_at, id) order, $2 to a batch, and
// clears no flag; this statement does exactly that, without claimSQL's
// group windows and their window passes. In any other state it changes
// nothing and says so (its first column -1), and the caller runs claimSQL.
// Parameters and rows as claimSQL's.
const claimFreshSQL = `
WITH t AS MATERIALIZED (
	SELECT clock_timestamp() AS now
), live AS MATERIALIZED (
	SELECT fresh, ids, groups FROM claims WHERE sink_id = $1 AND (until > (SELECT now FROM t) OR lapse_max_age IS NOT NULL)
), st AS MATERIALIZED (
	SELECT s.status = 'active' AND (s.hold_until IS NULL OR s.hold_until <= (SELECT now FROM t)) AS active,
		$3::int
		- (SELECT COALESCE(sum(fresh), 0) FROM live)
		- (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE sink_id = $1 AND deliver_count > 0 AND failed_at IS NULL LIMIT $3) x) AS room
	FROM sinks s WHERE s.id = $1
), retry AS MATERIALIZED (
	-- A retry claimSQL would take.
	SELECT 1 FROM outbox o
	WHERE o.sink_id = $1 AND o.head IS NOT FALSE AND o.failed_at IS NULL AND o.deliver_count > 0
		AND o.ready_at <= (SELECT now FROM t) AND (SELECT active FROM st)
		AND o.id NOT IN (SELECT unnest(ids) FROM live)
		AND o.group_key NOT IN (SELECT unnest(groups) FROM live)
	LIMIT 1
), cand AS MATERIALIZED (
	-- claimSQL's fresh candidates.
	SELECT o.id, o.group_key, o.ready_at FROM outbox o
	WHERE o.sink_id = $1 AND o.head IS NOT FALSE AND o.failed_at IS NULL AND o.deliver_count = 0
		AND o.ready_at <= (SELECT now FROM t) AND (SELECT active AND room > 0 FROM st)
		AND o.id NOT IN (SELECT unnest(ids) FROM live)
	ORDER BY o.ready_at, o.id LIMIT $2::int * $8::int
), one AS MATERIALIZED (
	-- Each candidate with its group's first two unfailed messages (see
	-- groupOrder).
	SELECT c.id, c.group_key, c.ready_at, c.group_key IN (SELECT unnest(groups) FROM live) AS busy, f.ids
	FROM cand c CROSS JOIN LATERAL (
		SELECT array_agg(x.id) AS ids FROM (
			SELECT id FROM outbox
			WHERE sink_id = $1 AND group_key >= c.group_key AND group_key <= c.group_key AND failed_at IS NULL
			ORDER BY group_key, commit_lsn, commit_idx, id LIMIT 2) x
	) f
), ok AS MATERIALIZED (
	SELECT NOT EXISTS (SELECT 1 FROM retry)
		AND (SELECT count(*) FROM one) <= GREATEST((SELECT room FROM st), 0)
		AND NOT EXISTS (SELECT 1 FROM one WHERE busy IS NOT FALSE OR ids[1] <> id OR cardinality(ids) <> 1) AS applies
), pick AS MATERIALIZED (
	SELECT id, group_key, ready_at, (row_number() OVER (ORDER BY ready_at, id) - 1) / $2 AS bn
	FROM one WHERE (SELECT applies FROM ok)
), c AS (
	INSERT INTO claims (sink_id, worker, worker_id, until, fresh, ids, groups, claimed_at, lapse_max_age)
	SELECT $1, $5, $6, (SELECT now FROM t) + make_interval(secs => $4::float8),
		count(*), array_agg(id ORDER BY id), array_agg(DISTINCT group_key), (SELECT now FROM t), $7::bigint
	FROM pick GROUP BY bn
	RETURNING id, ids[1] AS first
), pf AS (
	-- Which claims row is which batch, as in claimSQL.
	SELECT p.*, dense_rank() OVER (ORDER BY first) AS fr FROM (SELECT pick.*, min(id) OVER (PARTITION BY bn) AS first FROM pick) p
), cm AS (
	SELECT array_agg(id ORDER BY first) AS cids FROM c
)
SELECT CASE WHEN (SELECT applies FROM ok) THEN 0 ELSE -1 END::bigint, (SELECT cids FROM cm)[pf.fr], o.id, o.group_key, o.commit_lsn, o.commit_idx, o.payload, o.deliver_count, o.first_attempt_at, o.created_at
FROM (SELECT 1) one
LEFT JOIN (pf CROSS JOIN LATERAL (
	SELECT id, group_key, commit_lsn, commit_idx, payload, deliver_count, first_attempt_at, created_at FROM outbox WHERE id = pf.id LIMIT 1
) o) ON true
ORDER BY pf.bn, pf.ready_at, pf.id`
