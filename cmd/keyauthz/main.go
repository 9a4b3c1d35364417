// Command keyauthz is an Envoy ext_authz API-key authorizer; see README.md.
// main only sets up the logger, signals and the exit code; the commands are
// in extauthz/cli.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/cli"
)

func main() {
	lvl := zap.NewAtomicLevelAt(zap.InfoLevel)
	zc := zap.NewProductionConfig()
	zc.Level = lvl
	zc.Sampling = nil
	log, err := zc.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "keyauthz: logger:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, log, lvl)
	stop()
	_ = log.Sync()
	os.Exit(code)
}
