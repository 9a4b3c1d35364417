package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
)

type redisLimiter struct {
	*ratelimit.Redis
	client redis.UniversalClient
}

// Close answers the decisions still queued for Redis, then closes the client.
func (r *redisLimiter) Close() error {
	return errors.Join(r.Redis.Close(), r.client.Close())
}

var _ extauthz.Limiter = (*redisLimiter)(nil)

func newRedisLimiter(cfg *config.Config, log *zap.Logger) (*redisLimiter, error) {
	rc := cfg.RateLimit.Redis
	pw, err := rc.Password.Read("ratelimit.redis.password") // none when not configured
	if err != nil {
		return nil, err
	}
	client, err := ratelimit.NewRedisClient(rc.Addrs, rc.Cluster, string(pw))
	if err != nil {
		return nil, &config.FieldError{Path: "ratelimit.redis", Msg: err.Error()}
	}
	lim, err := ratelimit.NewRedis(client, log, ratelimit.RedisOptions{Timeout: cfg.RateLimit.Timeout, OnError: cfg.RateLimit.OnError})
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("ratelimit.redis: %w", err)
	}
	// Warm up: connect and, on a cluster, load the slot map now rather than on the
	// first Checks, whose 20 ms budget it would eat. Not fatal: Redis may come later.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		log.Warn("redis not reachable yet; checks follow ratelimit.on_error until it is", zap.Error(err))
	}
	return &redisLimiter{Redis: lim, client: client}, nil
}
