package ratelimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// eventually waits until cond holds, for up to 10 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.Until(t, 10*time.Second, what, cond)
}

// TestRedisDecisionExpiresWhileQueued queues a decision behind a pipeline
// that a hung server never answers: the decision answers by the on-error
// policy at its own deadline, not the pipeline's, and no command is ever
// sent for it.
func TestRedisDecisionExpiresWhileQueued(t *testing.T) {
	const long = 2 * time.Second
	r := newRedis(t, newClient(t, blackhole(t)), zap.NewNop(), RedisOptions{Timeout: long, OnError: config.OnErrorAllow})
	ctx := context.Background()
	first := make(chan error, 1)
	go func() {
		_, err := r.Allow(ctx, "first", rate240)
		first <- err
	}()
	eventually(t, "the first decision is sent", func() bool { return r.Calls() == 1 })

	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	d, err := r.Allow(short, "second", rate240)
	took := time.Since(start)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) || !d.Allowed {
		t.Fatalf("queued decision: %+v, %v; want the allow policy, ErrUnavailable and DeadlineExceeded", d, err)
	}
	if took >= long/2 {
		t.Fatalf("queued decision took %v: it waited for the pipeline ahead of it", took)
	}
	if err := <-first; !errors.Is(err, ErrUnavailable) {
		t.Fatalf("first decision: %v, want ErrUnavailable", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if n := r.Calls(); n != 1 {
		t.Fatalf("%d commands sent, want 1: the expired decision must not be sent", n)
	}
}

// TestRedisAfterClose: decisions after Close answer by the policy at once,
// with ErrUnavailable, and send nothing.
func TestRedisAfterClose(t *testing.T) {
	for _, policy := range []config.OnError{config.OnErrorAllow, config.OnErrorDeny} {
		r := newRedis(t, newClient(t, testenv.FreeAddr(t)), zap.NewNop(), RedisOptions{OnError: policy})
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		d, err := r.Allow(context.Background(), "k", rate240)
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, errClosed) || d.Allowed != (policy == config.OnErrorAllow) {
			t.Fatalf("%s: after Close: %+v, %v", policy, d, err)
		}
		if r.Calls() != 0 {
			t.Fatalf("%s: a decision after Close sent %d commands", policy, r.Calls())
		}
		if err := r.Close(); err != nil { // idempotent
			t.Fatal(err)
		}
	}
}

// TestRedisCancelledContext: a caller whose context is already done gets the
// policy's answer without a command.
func TestRedisCancelledContext(t *testing.T) {
	r := newRedis(t, newClient(t, blackhole(t)), zap.NewNop(), RedisOptions{OnError: config.OnErrorDeny})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d, err := r.Allow(ctx, "k", rate240)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) || d.Allowed {
		t.Fatalf("cancelled: %+v, %v", d, err)
	}
	if r.Calls() != 0 {
		t.Fatalf("a cancelled decision sent %d commands", r.Calls())
	}
}

// TestServerClock follows the Redis-minus-client offset: the tightest lower
// bound of the last window, a clock step either way within two windows, and
// the last estimate when the client has been quiet.
func TestServerClock(t *testing.T) {
	const s = int64(time.Second / time.Microsecond)
	var c serverClock
	if got := c.offset(0); got != 0 {
		t.Fatalf("no reply yet: offset %d, want 0", got)
	}
	base := int64(1_700_000_000) * s
	// Redis runs 5 ms ahead; replies take 0.3 to 2 ms to be read.
	c.observe(base+5000, base+2000) // bound 3000
	c.observe(base+105_000, base+100_300)
	if got := c.offset(base + 100_300); got != 4700 {
		t.Fatalf("offset %d, want the tightest bound 4700", got)
	}
	c.observe(base+s/2+5000, base+s/2+1500)
	if got := c.offset(base + s/2); got != 4700 {
		t.Fatalf("offset %d, want 4700 (a looser bound does not lower it)", got)
	}
	// Redis's clock steps back by 1 s: the old bound ages out within two windows.
	step := base + 2*s
	for i := int64(0); i <= 20; i++ {
		now := step + i*s/10
		c.observe(now-s+5000+300, now)
	}
	if got := c.offset(step + 2*s); got != -s+5300 {
		t.Fatalf("after a backward step: offset %d, want %d", got, -s+5300)
	}
	// Quiet for a minute: the last estimate stays.
	if got := c.offset(step + 62*s); got != -s+5300 {
		t.Fatalf("after a quiet minute: offset %d, want %d", got, -s+5300)
	}
	// A forward step is followed at once.
	now := step + 63*s
	c.observe(now+3*s, now)
	if got := c.offset(now); got != 3*s {
		t.Fatalf("after a forward step: offset %d, want %d", got, 3*s)
	}
	c.observe(0, now) // no reply: ignored
	if got := c.offset(now); got != 3*s {
		t.Fatalf("offset %d after an empty observation", got)
	}
}
