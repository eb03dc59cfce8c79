// Package outbox is every query on walhook's state schema: the outbox
// and its claims (capture writes, delivery claims and acks), sinks,
// endpoints, webhook sources and subscriptions, workers and leadership
// leases. One seam for all SQL, so the claim protocol and the capture
// protocol are read side by side.
//
// # The claim protocol
//
// Delivery's promise (docs/reference.md#7-guarantees) is: every committed message is
// delivered at least once; a group's messages leave in commit order; a
// group never has two batches in flight; a failing message holds back its
// own group only. This is how the outbox keeps it, with several processes
// and many workers sharing one state schema.
//
// A message is one outbox row. Its state is derived, not stored:
//
//	              queued (capture, backfill page, replay, webhook)
//	                       |
//	                       v
//	+----------------> waiting ----------------------+
//	|                 (head NULL/true/false)         |  claim (rule C)
//	|                      ^                         v
//	|    nack, backoff     |                     claimed ----- ack (F) -----> delivered
//	|    over (ready_at)   |                    (in a live      (row deleted; kept in the
//	|                      |                     claims row)     bounded history)
//	|                 backing off <--- nack (F) ----+|
//	|                 (deliver_count > 0,            |  lease ran out, worker died,
//	|                  ready_at in the future)       |  graceful stop (R, W):
//	|                                                |  back to waiting, same place
//	+-- redeliver --- failed <--- nack past max_age -+
//	                 (failed_at set; out of its group's queue)
//
// Order within a group is commit order: (commit_lsn, commit_idx, id),
// whatever order rows were inserted or committed in. A group's *first*
// message, first(g), is its least unfailed message in that order. A claim
// is live while its claims row exists and until > clock_timestamp() (the
// server's clock; leases start at the claim, not at its transaction).
//
// The head flag says where a waiting message stands:
//
//	NULL   unsorted: queued by someone who did not look; it may be first(g)
//	true   it was first(g) when a claim-lock holder last looked
//	false  it is behind: an older unfailed message of its group, or a
//	       claim of its group, existed when a claim-lock holder looked
//
// Claims look only at messages whose flag is not false (outbox_ready_idx
// for fresh ones, outbox_retry_idx for retries), so a deep group costs one
// index entry, not one per message, and claim cost does not grow with the
// backlog. It does grow with the groups in flight (their first messages
// keep their flags and are skipped), which concurrency × batch_size bounds
// per process.
//
// # Rules
//
// L (lock). Every transition of a sink's group state takes the sink's claim
// lock first, in a statement of its own (claimLockSQL): claim, ack, nack,
// redeliver, reap. Each therefore sees everything the one before
// committed. Writers that only insert (capture, backfill pages, replays)
// take no lock and read nothing: they cannot wait for, or deadlock with,
// delivery. (Webhook ingest's dedupe may wait for an ack deleting the same
// key, briefly; it holds nothing delivery waits for.)
//
// Q (queue). An inserted message's flag is NULL, except that within one
// insert (queueRows), every message of a group after the group's first
// in commit order is false. They commit together, so nobody sees the false
// ones without the older one they are behind. A revived (redelivered)
// message is NULL, and so is every message a nack or a lapse records an
// attempt on: it is a retry from then on.
//
// C (claim). Under L, a claim reads candidates: unclaimed, unfailed,
// ready, flag not false, oldest ready first (retries always; fresh
// messages while max_ack_pending leaves room). A candidate of a group no
// live claim names starts a batch at first(g), if first(g) is ready: g's
// messages from there on, in commit order, up to the first one still
// backing off. Every fresh candidate that is not first(g), or whose group a
// live claim names, is cleared to false; retries keep their flags (they are
// few, and without room a retry is how a claim reaches the fresh messages a
// replay queued before it), and those of groups in flight are passed over. max_ack_pending counts messages
// attempted before, and fresh ones beyond the room left, except fresh
// messages that stand before a retry in their group, wherever the retry
// stands (the retry cannot go without them: they hold its room). A batch
// is cut only after a prefix of its group. A claim names its messages and
// their groups in one claims row. One turn of the lock may take several
// batches (ClaimBatches, for a process's idle workers): each is a claims
// row of its own, and a group goes whole into one of them (cut to a
// prefix that fits, never split across two).
//
// C has a second statement for the state most claims of a backlog meet
// (claim_fresh.go): every candidate fresh, the only unfailed message of
// its group, in a group no live claim names, no retry to take, and room
// for all. There C takes the candidates as they come and clears no flag,
// which claimFreshSQL does without reading group windows; in any other
// state it changes nothing and claimSQL runs. It must do what claimSQL
// does wherever it applies (TestClaimFreshDifferential).
//
// P (promote). After every ack and nack (and reap, R), under L, first(g)
// of each of the batch's groups is flagged true. Setting first(g) to
// true is always safe, so this runs whether or not the outcome took
// effect.
//
// F (fence). An ack or nack takes effect only if its claim is live: it
// deletes the claims row (until > clock_timestamp()) in the statement that
// deletes or updates the messages (or, for a pull consumer's partial
// outcome, shrinks the row there: U). Otherwise it changes nothing and
// returns ErrClaimEnded (pull: reports the messages as not held).
//
// R (reap). A claim that ended without an outcome (lease ran out, or
// revoked by W) is not live for claims, acks and nacks from that moment;
// every delivering process deletes such claims each second (ReapClaims),
// under L, and promotes their groups (P).
//
// W (worker). A delivering process registers a worker and holds a session
// advisory lock keyed by its id for its whole life. A worker whose lock
// can be taken is dead; any process then revokes its claims (until =
// -infinity), which R ends. So the batches of a process that died (kill
// -9, crash, OOM) come back within a second or two, while a live but slow
// process keeps its claims until their lease ends. A graceful stop revokes
// its own claims.
//
// U (pull). A pull consumer's receive is a claim (C) whose lease is its
// visibility timeout, not tied to a worker (W does not apply). Its acks
// and nacks may name any subset of the claim's messages (pull.go): under
// L, the named messages the live claim still holds take the outcome and
// leave the claims row's ids, in the statement that deletes or updates
// them (F, per message); the row's groups become those of the messages
// it still holds, so a group stays named while any of its messages is
// held (I1); a row left with no messages is deleted; P runs for the
// groups that left. A lease that ends with messages still held counts as
// a failed attempt on them (a consumer had them): under L, before R
// deletes the row, lapseSQL records the attempt (and fails the messages
// past retry.max_age, recorded in the row). Until it has, claims still
// count the row as live (its messages and groups stay out of C), so the
// messages come back with their count raised and a lapse never touches a
// message another claim holds; acks and nacks see the row as ended (F).
// A consumer that vanished loses nothing and holds its groups only until
// its lease ends (and the next reap, within a second). An ack may carry
// the consumer's next receive (Receive): the claim runs after the
// ack and its P in the same transaction, under the same turn of L, so it
// sees the groups the ack handed on exactly as a claim right after the
// ack's commit would. When that claim is claimFreshSQL and it does not
// apply, claimSQL runs after the commit, under another turn of L: a
// claim right after the ack's commit, which others may precede.
//
// A (ahead). A process may claim a pull sink's next batch before anyone
// asks (a prefetch, api/pull_prefetch.go): a claim by C like any other
// (I1, I2 hold for it as they do for push), with a short lease, tied to
// no worker and made as a push claim (lapse_max_age NULL): nobody has its
// messages, so it ends without counting an attempt, by R when its lease
// runs out. Under L, a receive adopts it (adoptSQL) only while it is live,
// still a prefetch (lapse_max_age NULL, no worker) and the sink may hand
// out messages (active, not holding, as C asks): its lease restarts at
// the visibility timeout, its attempt starts then, and lapse_max_age
// makes it a pull claim from that moment (U). Adoption takes the batch as
// it was claimed: it may be older than the acks the same receive carries,
// whose groups it therefore does not hold (their claim still named them
// when it was made, I1). A prefetch not adopted is released (releaseSQL),
// under L: deleted with no attempt recorded, and P for its groups, as R
// ends a claim; release never touches an adopted claim (lapse_max_age
// set). Pull acks and nacks hold only adopted claims' messages (F): a
// prefetch's messages were never handed out, so no ack id can name them
// in effect.
//
// T (term). One process streams the replication slot: the holder of a
// lease row (leases) with a token that grows with every term and an end
// on the server's clock that the holder renews every third of its length.
// A capture flush commits only if its term is live, and holds the lease
// row (FOR SHARE) until it commits, so a new term cannot begin between the
// check and the commit. A leader that was frozen or cut off and comes back
// finds its term over before it writes anything, and stands by. A small
// flush is one pipeline whose fence fails it when the term is over; the
// fence comes after the rows, so a leader frozen while it sends them holds
// no lock (the server waits for the rest of a pipeline with no timeout).
//
// # Durability
//
// Capture's outbox write commits synchronously, before the slot is
// acknowledged: a committed change is never lost. Claims, acks and nacks
// commit asynchronously (synchronous_commit off, for their transaction
// only): a Postgres crash may lose the last fraction of a second of them.
// That only delivers messages again, which at-least-once allows: a crash
// ends every worker's session, so W revokes every push claim made before
// it anyway, lost or not, and their batches go again while the old
// requests may still be in flight; a pull consumer's lost receive hands
// its messages out again the same way (a Postgres crash ends the
// exclusivity of work in flight, for push and pull alike, as it does in
// any queue that survives one; order within what is delivered again
// holds). A lost ack leaves its messages and claim behind, to be
// delivered again in order; a lost nack leaves its messages to be tried
// again sooner. Claim ids are random (migration 00007), not from a
// sequence: a lost claim would give a sequence value back, the next claim
// would get its id, and the lost claim's late ack (its worker never knew)
// would act on the new claim under F. Without it, every claim
// and ack held the sink's claim lock across a WAL flush (milliseconds on
// real disks), and at batch_size 1 the flushes, not the work, set the
// pace.
//
// # Invariants
//
// I1. At most one live claim names a group. (C takes only groups no live
// claim names, under L; a live claim ends only by F, by R or by a
// release (A), all under L.)
//
// I2. A group's messages leave in commit order: a batch is a prefix of its
// group's unfailed messages in commit order, starting at first(g); a
// claim is cut only after a prefix (max_ack_pending). A message queued
// later with an older commit position (a replay) waits for the batch in
// flight and then goes first.
//
// I3. A waiting message whose backoff has ended is always reachable by a
// claim: for every group g with unfailed messages, either first(g)'s flag
// is not false, or a claims row names g. A flag becomes false only under
// L, when an older unfailed message or a claim of g exists (C, Q); that
// message leaves only by ack or by failing (both promote, P), and that
// claim only by F, R or a release (A) (all promote). Rows leave the outbox only by ack,
// or with their whole sink.
//
// I4. An ack or nack takes effect only while its claim is live (F), so a
// worker that lost its batch (lease, revocation) cannot delete messages
// or hand a group on while another worker has it in flight.
//
// I5. Nothing committed is lost and nothing uncommitted is delivered:
// messages leave the outbox only by an ack of a live claim that named
// them; claims read committed rows only.
//
// I6. A process that lost leadership writes nothing more (T).
//
// The torture test (torture_test.go) checks I1, I2, I4, I5 and that
// nothing stalls (I3) with many concurrent actors on a real Postgres,
// push workers and pull consumers (partial outcomes, lapses) together; the
// regression tests in regress_test.go are the shortest sequences that broke
// the protocol before these rules.
package outbox
