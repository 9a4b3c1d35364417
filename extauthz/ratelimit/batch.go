package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Decisions that reach Redis are sent in batches: every decision is still
// exactly one EVALSHA (atomic on its own), but the decisions in flight at the
// same moment share one pipelined write and one read, which is what a
// decision costs in syscalls and wake-ups. Batching is natural: a queue has
// at most one pipeline in flight; whatever queued while it was out is sent as
// the next pipeline the moment it returns, so a lone decision waits for
// nothing and a loaded server sends deep pipelines. A Redis Cluster gets one
// queue per master, so a slow or dead node holds up only its own keys.
//
// Each decision keeps its own deadline: its caller stops waiting when it
// passes (and answers by the on-error policy), a command whose deadline has
// passed while queued is not sent at all, and a pipeline's context carries
// the latest deadline among its commands, so a hung connection frees its
// queue no later than that.
//
// A command already written when its caller gives up cannot be taken back: a
// stalled Redis runs it when it resumes. So each command also carries its
// deadline translated to Redis server time (see serverClock), and the script
// does nothing once that has passed: a decision answered by the on-error policy
// never spends a token.
//
// A client that pipelines by itself (rueidis) was measured against this
// batcher on the load harness and cost more per Check under load; the A/B is
// in test/load/RESULTS.md.

// Query states: a query is pending until the executor completes it or its
// caller abandons it (deadline or cancellation), whichever comes first.
const (
	queryPending uint32 = iota
	queryDone
	queryAbandoned
)

// query is one decision waiting for Redis.
type query struct {
	key      string // hash-tagged Redis key
	iv, tau  int64
	deadline time.Time

	state atomic.Uint32
	done  chan struct{} // receives once when the executor completes the query
	timer *time.Timer   // the caller's deadline; reused with the query

	res [4]int64 // script reply: verdict, two durations, Redis time
	err error
}

var queryPool = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &query{done: make(chan struct{}, 1), timer: t}
}}

// newQuery returns a pending query from the pool.
func newQuery(key string, iv, tau int64, deadline time.Time) *query {
	c := queryPool.Get().(*query)
	c.key, c.iv, c.tau, c.deadline = key, iv, tau, deadline
	c.state.Store(queryPending)
	return c
}

// release returns a completed query, whose done signal its caller has
// received, to the pool. An abandoned query is left to the garbage collector:
// the executor may still hold it.
func (c *query) release() {
	c.key, c.err, c.res = "", nil, [4]int64{}
	queryPool.Put(c)
}

// complete records the script's reply (or the command's error) and wakes
// the caller, unless it has given up. It returns the Redis time the reply
// carries (0 without a reply), read before the caller may reuse c.
func (c *query) complete(cmd *redis.Cmd, err error) (server int64) {
	if err == nil {
		err = c.parse(cmd)
	}
	c.err = err
	if err == nil {
		server = c.res[3]
	}
	if c.state.CompareAndSwap(queryPending, queryDone) {
		c.done <- struct{}{}
	}
	return server
}

// parse reads the script's reply, four integers, into c.res.
func (c *query) parse(cmd *redis.Cmd) error {
	vals, err := cmd.Slice()
	if err != nil {
		return err
	}
	if len(vals) != len(c.res) {
		return fmt.Errorf("unexpected script reply of %d values", len(vals))
	}
	for i, v := range vals {
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("unexpected script reply value %T", v)
		}
		c.res[i] = n
	}
	return nil
}

// errClosed is the error of decisions made after Close.
var errClosed = errors.New("limiter closed")

// errExpired is the error of a decision whose deadline passed while it waited
// to be sent (no command was sent for it).
var errExpired = fmt.Errorf("%w before the command was sent", context.DeadlineExceeded)

// errLate is the error of a decision whose deadline had passed when Redis ran
// its script, which then changed nothing.
var errLate = fmt.Errorf("%w before redis ran the command", context.DeadlineExceeded)

// Clock translation. Redis runs each script on its own clock (TIME), the
// client's deadlines are on the client's clock. Every reply carries the Redis
// time at which the script ran, which happened before the reply was read: so
// redisTime - readTime is a lower bound of the offset between the two clocks
// (Redis minus client). The executor keeps the largest such bound seen over the
// last one to two seconds (so a clock step on either side is followed within
// two seconds) and sends deadline + offset - deadlineMargin: never later, in
// Redis time, than the moment its caller gives up. Before any reply the offset
// is taken as 0 (clocks kept in sync by NTP).
const (
	clockWindow    = time.Second
	deadlineMargin = time.Millisecond // covers jitter in the reply's way back
)

// serverClock estimates the offset of one Redis node's clock; it is used only
// by its queue's executor.
type serverClock struct {
	cur, prev       int64 // largest lower bound (µs) in the current and the previous window
	hasCur, hasPrev bool
	start           int64 // client µs when the current window began
}

// observe records that the node's clock read server (µs) before the client read recv (µs).
func (s *serverClock) observe(server, recv int64) {
	if server <= 0 {
		return
	}
	if recv-s.start >= clockWindow.Microseconds() {
		s.prev, s.hasPrev = s.cur, s.hasCur
		if recv-s.start >= 2*clockWindow.Microseconds() {
			s.hasPrev = false // nothing was seen in the last window
		}
		s.hasCur, s.start = false, recv
	}
	if b := server - recv; !s.hasCur || b > s.cur {
		s.cur, s.hasCur = b, true
	}
}

// offset returns the estimated Redis-minus-client offset in µs at client time
// now: the largest bound of the last one to two seconds, else the latest one
// seen (a quiet client keeps its last estimate), else 0.
func (s *serverClock) offset(now int64) int64 {
	switch {
	case !s.hasCur:
		return 0
	case s.hasPrev && now-s.start < clockWindow.Microseconds():
		return max(s.cur, s.prev)
	}
	return s.cur
}

// queue batches the queries for one Redis target (a single node, or one
// master of a cluster). Its executor goroutine, started with the first query
// and stopped by Close, runs one pipeline at a time and sleeps while the
// queue is empty.
type queue struct {
	b    *batcher
	wake chan struct{} // wakes a sleeping executor

	clock serverClock // the executor's estimate of this node's clock

	mu      sync.Mutex
	pending []*query
	started bool // the executor goroutine runs
	idle    bool // the executor sleeps, waiting for wake
	closing bool // Close was called: the executor exits once the queue is empty
}

// newQueue returns an empty queue of b; its executor starts with the first query.
func newQueue(b *batcher) *queue {
	return &queue{b: b, wake: make(chan struct{}, 1)}
}

// add queues c, waking the executor if it sleeps. It returns false, without
// queueing, once the batcher is closed.
func (q *queue) add(c *query) bool {
	q.b.mu.RLock()
	defer q.b.mu.RUnlock()
	if q.b.closed {
		return false
	}
	q.mu.Lock()
	q.pending = append(q.pending, c)
	wake := q.idle
	q.idle = false
	if !q.started {
		q.started = true
		q.b.wg.Add(1)
		go q.run()
	}
	q.mu.Unlock()
	if wake {
		q.wake <- struct{}{}
	}
	return true
}

// stop makes the executor exit once it has sent what is queued.
func (q *queue) stop() {
	q.mu.Lock()
	q.closing = true
	wake := q.idle
	q.idle = false
	q.mu.Unlock()
	if wake {
		q.wake <- struct{}{}
	}
}

// run is the executor: it sends the queued queries, one pipeline at a time.
func (q *queue) run() {
	defer q.b.wg.Done()
	var prev []*query // the previous batch's slice, reused for the next queue
	for {
		q.mu.Lock()
		for len(q.pending) == 0 {
			if q.closing {
				q.mu.Unlock()
				return
			}
			q.idle = true
			q.mu.Unlock()
			<-q.wake
			q.mu.Lock()
		}
		batch := q.pending
		q.pending = prev[:0]
		q.mu.Unlock()

		q.b.exec(batch, &q.clock)
		clear(batch) // drop the queries: they go back to the pool
		prev = batch
	}
}

// batcher sends queries as pipelined EVALSHA commands, with an EVAL fallback
// for the commands Redis answers NOSCRIPT.
type batcher struct {
	c       redis.UniversalClient
	cluster *redis.ClusterClient // nil for a single node
	sha     any                  // the script's SHA-1, boxed once
	src     any                  // the script, boxed once
	sent    *atomic.Uint64       // commands sent
	pipes   atomic.Uint64        // pipelines sent

	single *queue      // the queue of a single node
	nodes  sync.Map    // cluster: *redis.Client (a master) -> *queue
	routed atomic.Bool // cluster: the slot map has been loaded once

	mu     sync.RWMutex // guards closed; taken before a queue's mutex
	closed bool
	wg     sync.WaitGroup // executors

	base     time.Time // for micros: a monotonic reading and its Unix time
	baseUnix int64
}

// newBatcher returns a batcher sending the Lua script src on c, counting
// the commands it sends in sent.
func newBatcher(c redis.UniversalClient, src string, sent *atomic.Uint64) *batcher {
	b := &batcher{c: c, sha: redis.NewScript(src).Hash(), src: src, sent: sent}
	b.base = time.Now()
	b.baseUnix = b.base.UnixMicro()
	b.single = newQueue(b)
	if cc, ok := c.(*redis.ClusterClient); ok {
		b.cluster = cc
	}
	return b
}

// queueFor returns the queue of the node that owns key. Until a cluster's
// slot map has been loaded once, looking it up may reach the network and is
// bounded by deadline; after that it is a lookup in memory.
func (b *batcher) queueFor(key string, deadline time.Time) (*queue, error) {
	if b.cluster == nil {
		return b.single, nil
	}
	ctx := context.Background()
	if !b.routed.Load() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	node, err := b.cluster.MasterForKey(ctx, key)
	if err != nil {
		return nil, err
	}
	if !b.routed.Load() {
		b.routed.Store(true)
	}
	if q, ok := b.nodes.Load(node); ok {
		return q.(*queue), nil
	}
	q, _ := b.nodes.LoadOrStore(node, newQueue(b))
	return q.(*queue), nil
}

// micros returns t as Unix µs on the client's monotonic clock (a wall-clock
// step after the batcher started does not move it).
func (b *batcher) micros(t time.Time) int64 {
	return b.baseUnix + t.Sub(b.base).Microseconds()
}

// exec sends one batch: the queries still worth sending go out as one pipeline
// (EVALSHA each); those answered NOSCRIPT go out again as EVAL. Each command
// carries its deadline in the node's time, estimated by clock.
func (b *batcher) exec(batch []*query, clock *serverClock) {
	now := time.Now()
	live := batch[:0]
	var latest time.Time
	for _, c := range batch {
		switch {
		case c.state.Load() != queryPending:
			// its caller has given up: nothing to send
		case !c.deadline.After(now):
			c.complete(nil, errExpired)
		default:
			live = append(live, c)
			if c.deadline.After(latest) {
				latest = c.deadline
			}
		}
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), latest)
	defer cancel()
	off := clock.offset(b.micros(now)) - deadlineMargin.Microseconds()
	cmds := make([]*redis.Cmd, len(live))
	dls := make([]int64, len(live))
	pipe := b.c.Pipeline()
	for i, c := range live {
		dls[i] = max(b.micros(c.deadline)+off, 1)
		cmds[i] = redis.NewCmd(ctx, "evalsha", b.sha, 1, c.key, c.iv, c.tau, dls[i])
		_ = pipe.Process(ctx, cmds[i])
	}
	b.sent.Add(uint64(len(live)))
	b.pipes.Add(1)
	_, _ = pipe.Exec(ctx) // each command carries its own error
	recv := b.micros(time.Now())

	var again []int
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT")) {
			again = append(again, i)
			continue
		}
		clock.observe(live[i].complete(cmd, nil), recv)
	}
	if len(again) == 0 {
		return
	}
	// EVAL runs the script and loads it, so later decisions are one EVALSHA again.
	pipe = b.c.Pipeline()
	for _, i := range again {
		cmds[i] = redis.NewCmd(ctx, "eval", b.src, 1, live[i].key, live[i].iv, live[i].tau, dls[i])
		_ = pipe.Process(ctx, cmds[i])
	}
	b.sent.Add(uint64(len(again)))
	b.pipes.Add(1)
	_, _ = pipe.Exec(ctx)
	recv = b.micros(time.Now())
	for _, i := range again {
		clock.observe(live[i].complete(cmds[i], nil), recv)
	}
}

// close stops taking queries and waits until every queued query is answered.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	// No query is queued from here on: stop every executor once it has sent
	// what it holds.
	b.single.stop()
	b.nodes.Range(func(_, q any) bool {
		q.(*queue).stop()
		return true
	})
	b.wg.Wait()
}
