package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// Transient tells an Open error worth retrying (the server is not reachable
// yet) from one that will not clear by itself.
func TestTransient(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, refused := Open(ctx, "postgres://u:pw@"+addr+"/k?sslmode=disable", zap.NewNop(), Options{})
	_, badURL := Open(ctx, "postgres://u:pw@"+addr+"/k?pool_max_conns=x", zap.NewNop(), Options{})
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	_, canceled := Open(cctx, "postgres://u:pw@"+addr+"/k?sslmode=disable", zap.NewNop(), Options{})
	pg := func(code string) error { return fmt.Errorf("postgres begin: %w", &pgconn.PgError{Code: code}) }
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", refused, true},
		{"starting up (57P03)", pg("57P03"), true},
		{"too many connections (53300)", pg("53300"), true},
		{"connection failure (08006)", pg("08006"), true},
		{"bad option", badURL, false},
		{"cancelled", canceled, false},
		{"wrong password (28P01)", pg("28P01"), false},
		{"no such database (3D000)", pg("3D000"), false},
		{"schema newer", errors.New("database schema version 9 is newer than this binary knows (1)"), false},
		{"nil", nil, false},
	} {
		if got := Transient(c.err); got != c.want {
			t.Errorf("Transient(%s: %v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}
