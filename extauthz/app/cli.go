package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/admin"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Version is set at build time with -ldflags "-X …/app.Version=…".
var Version = "dev"

const usageText = `usage:
  keyauthz serve [--config FILE] [--grpc-listen ADDR] [--http-listen ADDR] [--store URL]
  keyauthz keys create  --workspace W --name N [--expires-in 720h] [--rate-limit 600/m] [--grant org1,org2] [--json]
  keyauthz keys list    --workspace W [--json]
  keyauthz keys refresh KEY_ID [--grace 0s] [--json]
  keyauthz keys delete  KEY_ID
  keyauthz audit --workspace W [--json]
  keyauthz migrate                                   # apply store schema migrations and exit
  keyauthz check --key K|- [--path /v1/...] [--server ADDR]
  keyauthz version
Every command takes --config FILE and --store URL and reads the same pepper as serve.
The keys and audit commands talk to a running server's admin API instead with
--server http://HOST:9002 --token-file FILE (refresh and delete then need --workspace).
`

// Main runs one keyauthz command and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, log *zap.Logger, lvl zap.AtomicLevel) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	c := &cli{ctx: ctx, in: stdin, out: stdout, err: stderr, log: log, lvl: lvl}
	var err error
	switch args[0] {
	case "serve":
		err = c.serve(args[1:])
	case "keys":
		if len(args) < 2 {
			fmt.Fprint(stderr, usageText)
			return 2
		}
		switch args[1] {
		case "create":
			err = c.keysCreate(args[2:])
		case "list":
			err = c.keysList(args[2:])
		case "refresh":
			err = c.keysRefresh(args[2:])
		case "delete":
			err = c.keysDelete(args[2:])
		default:
			err = usageError("unknown keys command " + args[1])
		}
	case "audit":
		err = c.audit(args[1:])
	case "migrate":
		err = c.migrate(args[1:])
	case "check":
		err = c.check(args[1:])
	case "version":
		fmt.Fprintln(stdout, "keyauthz", Version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usageText)
	default:
		err = usageError("unknown command " + args[0])
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "keyauthz: %s\n%s", err, usageText)
		return 2
	case errors.Is(err, errDenied):
		return 1
	}
	fmt.Fprintf(stderr, "keyauthz: %s\n", err)
	return 1
}

type usageError string

func (e usageError) Error() string { return string(e) }

var errDenied = errors.New("denied")

type cli struct {
	ctx context.Context
	in  io.Reader
	out io.Writer
	err io.Writer
	log *zap.Logger
	lvl zap.AtomicLevel
}

// common flags every command shares.
type common struct {
	config    string
	store     string
	server    string // admin API base URL (keys, audit)
	tokenFile string
}

// keyFlags adds the flags of the keys and audit commands.
func (c *cli) keyFlags(name string, co *common, ws *string, asJSON *bool) *flag.FlagSet {
	fs := c.flags(name, co)
	fs.StringVar(ws, "workspace", "", "workspace (account) the key belongs to")
	fs.BoolVar(asJSON, "json", false, "print JSON")
	fs.StringVar(&co.server, "server", "", "admin API base URL of a running server, e.g. http://127.0.0.1:9002")
	fs.StringVar(&co.tokenFile, "token-file", "", "file holding the admin token (with --server)")
	return fs
}

func (c *cli) flags(name string, co *common) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&co.config, "config", "", "config file (YAML); embedded defaults when empty")
	fs.StringVar(&co.store, "store", "", "store URL, overrides store.url")
	return fs
}

// parse parses flags, allowing positional arguments before or among them.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError(fs.Name() + ": " + err.Error())
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (c *cli) load(co common) (config.Config, bool, error) {
	cfg := config.Default()
	embedded := co.config == ""
	if !embedded {
		var err error
		if cfg, err = config.Load(co.config); err != nil {
			return cfg, false, err
		}
	}
	if co.store != "" {
		cfg.Store.URL = co.store
		if err := cfg.Validate(); err != nil {
			return cfg, false, err
		}
	}
	if lvl, err := zapcore.ParseLevel(cfg.Log.Level); err == nil {
		c.lvl.SetLevel(lvl)
	}
	return cfg, embedded, nil
}

func (c *cli) serve(args []string) error {
	var co common
	var glisten, hlisten string
	fs := c.flags("serve", &co)
	fs.StringVar(&glisten, "grpc-listen", "", "gRPC listen address, overrides grpc.listen")
	fs.StringVar(&hlisten, "http-listen", "", "HTTP listen address, overrides http.listen")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("serve takes no arguments")
	}
	cfg, embedded, err := c.load(co)
	if err != nil {
		return err
	}
	if glisten != "" {
		cfg.GRPC.Listen = glisten
	}
	if hlisten != "" {
		cfg.HTTP.Listen = hlisten
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	applyRuntime(cfg.Runtime, c.log)
	a, err := New(c.ctx, cfg, c.log, Options{Embedded: embedded})
	if err != nil && c.ctx.Err() != nil { // SIGTERM while starting: a clean stop, not a failure
		c.log.Info("stopped while starting", zap.NamedError("interrupted", err))
		return nil
	}
	if err != nil {
		return err
	}
	return a.Run(c.ctx)
}

// MaxKeys returns the per-workspace key limit function the config describes.
func MaxKeys(cfg *config.Config) func(string) int {
	return func(ws string) int {
		if w, ok := cfg.Workspaces[ws]; ok && w.MaxKeys > 0 {
			return w.MaxKeys
		}
		return cfg.Keys.MaxPerWorkspace
	}
}

func (c *cli) keysCreate(args []string) error {
	var co common
	var ws, name, expires, rate, grants string
	var asJSON bool
	fs := c.keyFlags("keys create", &co, &ws, &asJSON)
	fs.StringVar(&name, "name", "", "key name, unique in the workspace")
	fs.StringVar(&expires, "expires-in", "", "lifetime, e.g. 720h")
	fs.StringVar(&rate, "rate-limit", "", "rate limit override, e.g. 600/m")
	fs.StringVar(&grants, "grant", "", "extra resources, comma-separated")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("keys create takes no arguments")
	}
	spec := apikey.Spec{Workspace: ws, Name: name}
	if expires != "" {
		d, err := time.ParseDuration(expires)
		if err != nil || d <= 0 {
			return usageError("--expires-in: want a positive duration such as 720h")
		}
		spec.ExpiresAt = time.Now().Add(d)
	}
	if rate != "" {
		r, err := apikey.ParseRate(rate)
		if err == nil {
			err = r.Check()
		}
		if err != nil {
			return usageError("--rate-limit: " + err.Error())
		}
		spec.RateLimit = r
	}
	if grants != "" {
		spec.Grants = strings.Split(grants, ",")
	}
	if err := spec.Validate(time.Now()); err != nil { // the Manager's rules, before any store or server is touched
		return explain(err, ws)
	}
	ops, err := c.ops(co)
	if err != nil {
		return err
	}
	defer ops.close()
	v, err := ops.create(c.ctx, spec)
	if err != nil {
		return explain(err, ws)
	}
	return admin.PrintSecret(c.out, v, asJSON, "Created")
}

// explain turns store errors into messages a person can act on.
func explain(err error, ws string) error {
	var fe *apikey.FieldError
	switch {
	case errors.As(err, &fe):
		flag := map[string]string{"grants": "grant", "expires_at": "expires-in"}[fe.Field]
		if flag == "" {
			flag = strings.ReplaceAll(fe.Field, "_", "-")
		}
		return fmt.Errorf("invalid --%s: %s", flag, fe.Msg)
	case errors.Is(err, apikey.ErrLimit):
		return fmt.Errorf("workspace %s already holds its maximum number of keys; delete one first", ws)
	case errors.Is(err, apikey.ErrNameTaken):
		return fmt.Errorf("workspace %s already has a key with that name", ws)
	case errors.Is(err, apikey.ErrNotFound):
		return errors.New("no such key")
	case errors.Is(err, apikey.ErrReadOnly):
		return errors.New("the store is read-only (file://); edit the key file instead")
	}
	return err
}

func (c *cli) keysList(args []string) error {
	var co common
	var ws string
	var asJSON bool
	fs := c.keyFlags("keys list", &co, &ws, &asJSON)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if ws == "" {
		return usageError("keys list: --workspace is required")
	}
	if err := apikey.CheckWorkspace(ws); err != nil {
		return explain(err, ws)
	}
	ops, err := c.ops(co)
	if err != nil {
		return err
	}
	defer ops.close()
	items, err := ops.list(c.ctx, ws)
	if err != nil {
		return err
	}
	return admin.PrintKeys(c.out, items, asJSON)
}

func (c *cli) keysRefresh(args []string) error {
	var co common
	var ws string
	var grace time.Duration
	var asJSON bool
	fs := c.keyFlags("keys refresh", &co, &ws, &asJSON)
	fs.DurationVar(&grace, "grace", 0, "keep the old secret valid this long (default: invalid at once)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("keys refresh takes one KEY_ID")
	}
	if ws != "" {
		if err := apikey.CheckWorkspace(ws); err != nil {
			return explain(err, ws)
		}
	}
	ops, err := c.ops(co)
	if err != nil {
		return err
	}
	defer ops.close()
	v, err := ops.refresh(c.ctx, ws, pos[0], grace)
	if err != nil {
		return explain(err, ws)
	}
	return admin.PrintSecret(c.out, v, asJSON, "Refreshed")
}

func (c *cli) keysDelete(args []string) error {
	var co common
	var ws string
	var asJSON bool
	fs := c.keyFlags("keys delete", &co, &ws, &asJSON)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("keys delete takes one KEY_ID")
	}
	if ws != "" {
		if err := apikey.CheckWorkspace(ws); err != nil {
			return explain(err, ws)
		}
	}
	ops, err := c.ops(co)
	if err != nil {
		return err
	}
	defer ops.close()
	if err := ops.delete(c.ctx, ws, pos[0]); err != nil {
		return explain(err, ws)
	}
	fmt.Fprintf(c.out, "Deleted key %s.\n", pos[0])
	return nil
}

// migrate opens the configured store, which applies pending schema migrations.
func (c *cli) migrate(args []string) error {
	var co common
	fs := c.flags("migrate", &co)
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("migrate takes no arguments")
	}
	cfg, _, err := c.load(co)
	if err != nil {
		return err
	}
	s, err := openStore(c.ctx, &cfg, c.log.Named("store"))
	if err != nil {
		return fmt.Errorf("open store %s: %w", config.RedactURL(cfg.Store.URL), err)
	}
	fmt.Fprintf(c.out, "Store %s is at the current schema.\n", config.RedactURL(cfg.Store.URL))
	return s.Close()
}

func (c *cli) audit(args []string) error {
	var co common
	var ws string
	var asJSON bool
	fs := c.keyFlags("audit", &co, &ws, &asJSON)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if ws == "" {
		return usageError("audit: --workspace is required")
	}
	if err := apikey.CheckWorkspace(ws); err != nil {
		return explain(err, ws)
	}
	ops, err := c.ops(co)
	if err != nil {
		return err
	}
	defer ops.close()
	events, err := ops.audit(c.ctx, ws)
	if err != nil {
		return err
	}
	return admin.PrintAudit(c.out, events, asJSON)
}

// readKey reads a key given as "-" from stdin, so it stays out of argv.
func readKey(k string, in io.Reader) (string, error) {
	if k != "-" {
		return k, nil
	}
	b, err := io.ReadAll(io.LimitReader(in, 4096))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
