package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

const (
	// listenMinBackoff and listenMaxBackoff bound the wait between reconnection
	// attempts. The cap is short: until LISTEN is back, changes reach this
	// replica only by polling, and a reconnection attempt costs PostgreSQL one
	// refused or authenticated connection a second per replica.
	listenMinBackoff = 50 * time.Millisecond
	listenMaxBackoff = time.Second
	// listenPingTimeout bounds the liveness check of an idle listening connection.
	listenPingTimeout = 5 * time.Second
)

// Listen holds a dedicated connection (outside the pool) listening on Channel
// and calls onChange for every notification, that is after every committed
// change-feed append on any replica. It also calls onChange each time it has
// (re)connected, since changes made while it was not listening sent
// notifications nobody received: the callback is meant to read the change feed
// (keycache.Follower.Poll), which stays the source of truth. A lost connection
// is retried with exponential backoff (50 ms to 1 s); an idle connection is
// pinged every 30 s so that a silently dead one is noticed. onChange runs on
// Listen's goroutine, one call at a time. Listen returns nil when ctx is done
// or the store is closed; it returns an error only for a nil onChange.
func (s *Store) Listen(ctx context.Context, onChange func()) error {
	return s.ListenState(ctx, onChange, nil)
}

// ListenState is Listen that also reports whether notifications are being
// delivered: onState(true) once LISTEN is in place (before the catch-up
// onChange), onState(false) as soon as the connection is lost or cannot be
// made, so the caller can poll the change feed faster meanwhile. A nil onState
// is Listen. onState runs on Listen's goroutine and must not block.
func (s *Store) ListenState(ctx context.Context, onChange func(), onState func(listening bool)) error {
	if onChange == nil {
		return errors.New("postgres listen: nil onChange")
	}
	if onState == nil {
		onState = func(bool) {}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	backoff := listenMinBackoff
	failing := false
	for {
		connected, err := s.listen(ctx, onChange, onState)
		if ctx.Err() != nil {
			return nil
		}
		onState(false)
		if connected {
			backoff = listenMinBackoff
		}
		switch {
		case connected:
			s.log.Warn("change listener lost its connection; reconnecting", zap.Error(err))
		case !failing:
			s.log.Warn("change listener cannot connect; retrying", zap.Error(err), zap.Duration("backoff", backoff))
		default:
			s.log.Debug("change listener cannot connect", zap.Error(err), zap.Duration("backoff", backoff))
		}
		failing = !connected
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, listenMaxBackoff)
	}
}

// listen connects, LISTENs, calls onChange once and then per notification, until
// the connection fails or ctx is done. connected says whether LISTEN succeeded.
func (s *Store) listen(ctx context.Context, onChange func(), onState func(bool)) (connected bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, s.conn.Copy())
	if err != nil {
		return false, fmt.Errorf("postgres listen: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return false, fmt.Errorf("postgres listen: %w", err)
	}
	s.log.Debug("change listener connected", zap.String("channel", Channel))
	onState(true)
	onChange() // catch up with what happened while nobody listened
	for {
		wctx, cancel := context.WithTimeout(ctx, s.listenIdle)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			onChange()
			continue
		case ctx.Err() != nil:
			return true, nil
		case !pgconn.Timeout(err) && !errors.Is(err, context.DeadlineExceeded):
			return true, fmt.Errorf("postgres listen: %w", err)
		}
		// Idle for listenIdle: make sure the connection is still alive.
		pctx, cancel := context.WithTimeout(ctx, listenPingTimeout)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return true, nil
			}
			return true, fmt.Errorf("postgres listen: ping: %w", err)
		}
	}
}
