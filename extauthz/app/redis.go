package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
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
	pw := ""
	switch {
	case rc.PasswordFile != "":
		b, err := os.ReadFile(rc.PasswordFile)
		if err != nil {
			return nil, &config.FieldError{Path: "ratelimit.redis.password_file", Msg: err.Error()}
		}
		pw = strings.TrimRight(string(b), "\r\n")
	case rc.PasswordEnv != "":
		var ok bool
		if pw, ok = os.LookupEnv(rc.PasswordEnv); !ok || pw == "" {
			return nil, &config.FieldError{Path: "ratelimit.redis.password_env",
				Msg: fmt.Sprintf("environment variable %s is not set or empty (drop password_env for a Redis without a password)", rc.PasswordEnv)}
		}
	}
	if rc.PasswordFile != "" && pw == "" {
		return nil, &config.FieldError{Path: "ratelimit.redis.password_file", Msg: "file is empty (drop password_file for a Redis without a password)"}
	}
	client, err := ratelimit.NewRedisClient(rc.Addrs, rc.Cluster, pw)
	if err != nil {
		return nil, &config.FieldError{Path: "ratelimit.redis", Msg: err.Error()}
	}
	lim, err := ratelimit.NewRedis(client, log.Named("redis"), ratelimit.RedisOptions{Timeout: cfg.RateLimit.Timeout, OnError: cfg.RateLimit.OnError})
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
