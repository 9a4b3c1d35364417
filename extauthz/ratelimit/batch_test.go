package ratelimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// eventually waits until cond holds: testenv.Eventually with a 10 s bound.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, what, func() error {
		if !cond() {
			return errors.New("not yet")
		}
		return nil
	})
}

// queued returns the number of calls waiting in q (not yet taken into a pipeline).
func (q *queue) queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// TestRedisDecisionExpiresWhileQueued queues a decision behind a pipeline
// that a hung server never answers: the decision answers by the on-error
// policy at its own deadline, not the pipeline's, and no command is ever
// sent for it.
func TestRedisDecisionExpiresWhileQueued(t *testing.T) {
	const long = 2 * time.Second
	r := newRedis(t, newClient(t, blackhole(t)), zap.NewNop(), RedisOptions{Timeout: long, OnError: OnErrorAllow})
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
	for _, policy := range []string{OnErrorAllow, OnErrorDeny} {
		r := newRedis(t, newClient(t, closedAddr(t)), zap.NewNop(), RedisOptions{OnError: policy})
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		d, err := r.Allow(context.Background(), "k", rate240)
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, errClosed) || d.Allowed != (policy == OnErrorAllow) {
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
	r := newRedis(t, newClient(t, blackhole(t)), zap.NewNop(), RedisOptions{OnError: OnErrorDeny})
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
