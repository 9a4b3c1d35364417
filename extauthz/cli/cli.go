// Package cli is keyauthz's command line: flag parsing, the commands (serve,
// keys create/list/update/usage/refresh/delete, workspaces get/set/list,
// audit, migrate, check, version) and what they print. It loads the config; extauthz/app builds, runs and stops the
// components, and opens the store for the commands that work on it directly.
package cli

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
	"github.com/keyauthz/keyauthz/extauthz/app"
)

// Version is set at build time with -ldflags "-X github.com/keyauthz/keyauthz/extauthz/cli.Version=…"
// (test/run.sh and the Dockerfile do).
var Version = "dev"

const usageText = `usage: keyauthz COMMAND [flags]

commands:
  serve          run the authorizer (gRPC ext_authz, HTTP health, metrics, admin API)
  keys create    create an API key; its secret is printed once
  keys list      list a workspace's keys (never their secrets), with their requests in 30 days
  keys update    change a key's name, rate limit, expiry, grants, metadata or disable it
  keys usage     show a key's allowed and denied requests by hour or day
  keys refresh   rotate a key's secret
  keys delete    revoke a key at once
  workspaces get   show a workspace's record (rate limit, key limit, grants, disabled)
  workspaces set   change a workspace's record, creating it when absent
  workspaces list  list the workspace records
  audit          show a workspace's audit events
  migrate        create the store, or apply its schema migrations, and exit
  check          ask a running server for a decision, as Envoy would
  version        print the version (also --version)

Run 'keyauthz COMMAND --help' for a command's flags. Every command takes
--config FILE and --store URL; the keys, workspaces and audit commands work on
the local store, or on a running server's admin API with --server URL --token-file FILE.
Only serve and migrate create a store.
`

// commands holds each command's synopsis and what it does, for its --help.
var commands = map[string][2]string{
	"serve": {"keyauthz serve [--config FILE] [--grpc-listen ADDR] [--http-listen ADDR] [--store URL]",
		"Run the authorizer: gRPC ext_authz Check and grpc.health.v1, HTTP /healthz, /readyz, /metrics\n" +
			"and, with admin.tokens, the admin API under /v1. Creates the store, and with no config file\n" +
			"the pepper beside it (version 1), if they do not exist."},
	"keys create": {"keyauthz keys create --workspace W --name N [--expires-in 720h] [--rate-limit 600/m] [--grant org1,org2] [--json]",
		"Create an API key in workspace W. The secret is printed once; only its HMAC is stored."},
	"keys list": {"keyauthz keys list --workspace W [--unused-for 30d] [--json]",
		"List the live keys of workspace W: ids, names, display forms, last use and requests in the\n" +
			"last 30 days; never a secret. --unused-for D lists only keys created more than D ago and not\n" +
			"used since (D: days such as 30d, or a duration such as 720h): keys to revoke."},
	"keys update": {"keyauthz keys update KEY_ID [--workspace W] [--name N] [--rate-limit R|\"\"] [--expires-in D|--expires-at T|--no-expiry]\n" +
		"       [--grant a,b/c|\"\"] [--meta k=v ...|--no-meta] [--disable|--enable] [--json]",
		"Change a key; flags not given leave their field as it is. --rate-limit \"\" goes back to the\n" +
			"workspace's rate, --grant \"\" removes every grant, --no-meta every metadata entry, --no-expiry the\n" +
			"expiry. --meta k=v (repeatable) replaces all metadata. A disabled key is refused (401) until\n" +
			"enabled. Every replica applies the change within the revocation bound. With --server,\n" +
			"--workspace is required."},
	"keys usage": {"keyauthz keys usage KEY_ID [--workspace W] [--granularity hour|day] [--from T] [--to T] [--json]",
		"Show a key's allowed and denied requests (by reason) per hour (default: the last 24 hours) or\n" +
			"per UTC day (default: the last 30 days), then the totals. T is RFC 3339, e.g.\n" +
			"2030-01-02T15:04:05Z. With --server, --workspace is required."},
	"keys refresh": {"keyauthz keys refresh KEY_ID [--workspace W] [--grace 0s] [--json]",
		"Rotate a key's secret: the new one is printed once, the old one is denied at once\n" +
			"(or after --grace). With --server, --workspace is required."},
	"keys delete": {"keyauthz keys delete KEY_ID [--workspace W]",
		"Revoke a key at once, on every replica. With --server, --workspace is required."},
	"audit": {"keyauthz audit --workspace W [--json]",
		"Show workspace W's audit events: created, refreshed, updated, deleted, denied_after_revoke,\n" +
			"workspace_updated."},
	"workspaces get": {"keyauthz workspaces get WS [--json]",
		"Show workspace WS's record: its rate limit and key limit (when not inherited from the config),\n" +
			"its grants and whether it is disabled."},
	"workspaces set": {"keyauthz workspaces set WS [--rate-limit R|\"\"] [--max-keys N] [--grant a,b/c|\"\"] [--disable|--enable] [--json]",
		"Change workspace WS's record, creating it when it has none; flags not given leave their field\n" +
			"as it is. --rate-limit is the rate of its keys without their own (\"\" = the config's, then the\n" +
			"default); --max-keys caps its live keys (0 = the config's); --grant names resources (paths such\n" +
			"as acme/web) every key of the workspace may reach (\"\" = none); --disable refuses all its keys\n" +
			"(401) until --enable. Every replica applies the change within the revocation bound."},
	"workspaces list": {"keyauthz workspaces list [--json]",
		"List the workspace records (with --server, those the admin token may reach)."},
	"migrate": {"keyauthz migrate [--config FILE] [--store URL]",
		"Create the store, or apply its pending schema migrations, and exit. With no config file it\n" +
			"also creates the pepper beside the SQLite database (version 1) while the store holds no keys."},
	"check": {"keyauthz check --key K|- [--path /v1/...] [--method GET] [--server ADDR] [--ca-file F] [--cert-file F --key-file F] [--server-name N]",
		"Ask a running server for a decision, as Envoy would, and print it as JSON; exit 1 when denied.\n" +
			"--key - reads the key from stdin, keeping it out of the process list."},
}

const keysUsage = `usage: keyauthz keys COMMAND [flags] [KEY_ID]

commands:
  create    create an API key; its secret is printed once
  list      list a workspace's keys (never their secrets)
  update    change a key (name, rate limit, expiry, grants, metadata, disabled)
  usage     show a key's requests by hour or day
  refresh   rotate a key's secret
  delete    revoke a key at once

Run 'keyauthz keys COMMAND --help' for a command's flags.
`

const workspacesUsage = `usage: keyauthz workspaces COMMAND [flags] [WS]

commands:
  get     show a workspace's record
  set     change a workspace's record, creating it when absent
  list    list the workspace records

Run 'keyauthz workspaces COMMAND --help' for a command's flags.
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
			fmt.Fprint(stderr, keysUsage)
			return 2
		}
		switch args[1] {
		case "create":
			err = c.keysCreate(args[2:])
		case "list":
			err = c.keysList(args[2:])
		case "update":
			err = c.keysUpdate(args[2:])
		case "usage":
			err = c.keysUsage(args[2:])
		case "refresh":
			err = c.keysRefresh(args[2:])
		case "delete":
			err = c.keysDelete(args[2:])
		case "help", "-h", "-help", "--help":
			fmt.Fprint(stdout, keysUsage)
		default:
			fmt.Fprintf(stderr, "keyauthz: unknown keys command %q\n%s", args[1], keysUsage)
			return 2
		}
	case "workspaces":
		if len(args) < 2 {
			fmt.Fprint(stderr, workspacesUsage)
			return 2
		}
		switch args[1] {
		case "get":
			err = c.workspacesGet(args[2:])
		case "set":
			err = c.workspacesSet(args[2:])
		case "list":
			err = c.workspacesList(args[2:])
		case "help", "-h", "-help", "--help":
			fmt.Fprint(stdout, workspacesUsage)
		default:
			fmt.Fprintf(stderr, "keyauthz: unknown workspaces command %q\n%s", args[1], workspacesUsage)
			return 2
		}
	case "audit":
		err = c.audit(args[1:])
	case "migrate":
		err = c.migrate(args[1:])
	case "check":
		err = c.check(args[1:])
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "keyauthz", Version)
	case "help", "-h", "-help", "--help":
		if len(args) > 1 { // help COMMAND: that command's --help
			return Main(ctx, append(args[1:len(args):len(args)], "--help"), stdin, stdout, stderr, log, lvl)
		}
		fmt.Fprint(stdout, usageText)
	default:
		err = usageError("unknown command " + args[0])
	}
	var ue usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "keyauthz: %s\n", err)
		if name := cmdName(args); name != "" {
			fmt.Fprintf(stderr, "Run 'keyauthz %s --help' for usage.\n", name)
		} else {
			fmt.Fprint(stderr, usageText)
		}
		return 2
	case errors.Is(err, errDenied):
		return 1
	}
	fmt.Fprintf(stderr, "keyauthz: %s\n", err)
	return 1
}

// cmdName is the command args name ("keys create"), or "" for none.
func cmdName(args []string) string {
	if len(args) > 1 {
		if name := args[0] + " " + args[1]; args[0] == "keys" || args[0] == "workspaces" {
			if _, ok := commands[name]; ok {
				return name
			}
			return ""
		}
	}
	if _, ok := commands[args[0]]; ok {
		return args[0]
	}
	return ""
}

// errHelp is returned by parse after printing a command's --help.
var errHelp = errors.New("help printed")

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
	caFile    string // CA of an https:// --server
	hashes    bool   // the command hashes secrets (create, refresh): check the store's pepper versions
}

// keyFlags adds the flags of the keys and audit commands.
func (c *cli) keyFlags(name string, co *common, ws *string, asJSON *bool) *flag.FlagSet {
	fs := c.flags(name, co)
	fs.StringVar(ws, "workspace", "", "workspace (account) the key belongs to")
	c.serverFlags(fs, co, asJSON)
	return fs
}

// serverFlags adds --json, --server and --token-file.
func (c *cli) serverFlags(fs *flag.FlagSet, co *common, asJSON *bool) {
	fs.BoolVar(asJSON, "json", false, "print JSON")
	fs.StringVar(&co.server, "server", "", "admin API base URL of a running server, e.g. http://127.0.0.1:9002")
	fs.StringVar(&co.tokenFile, "token-file", "", "file holding the admin token (with --server)")
	fs.StringVar(&co.caFile, "ca-file", "", "CA (PEM) an https:// --server's certificate must chain to (default: the system roots)")
}

// keyArgs is what the keys and audit commands share once their flags are parsed.
type keyArgs struct {
	co     common
	ws     string
	asJSON bool
	pos    []string // positional arguments (KEY_ID)
}

// keyCmd parses args for a keys or audit command: the shared flags, the
// command's own (more, when not nil), exactly npos positional arguments (KEY_ID),
// and a workspace that must follow the id rule and, when needWS, be given.
func (c *cli) keyCmd(name string, args []string, npos int, needWS bool, more func(*flag.FlagSet)) (keyArgs, error) {
	var k keyArgs
	fs := c.keyFlags(name, &k.co, &k.ws, &k.asJSON)
	var err error
	if k.pos, err = positional(fs, more, args, npos, name+" takes one KEY_ID"); err != nil {
		return k, err
	}
	if k.ws == "" {
		if needWS {
			return k, usageError(name + ": --workspace is required")
		}
		return k, nil
	}
	if err := apikey.CheckWorkspace(k.ws); err != nil {
		return k, explain(err, k.ws)
	}
	return k, nil
}

// positional adds the command's own flags (more, when not nil) to fs, parses
// args and returns the positional arguments, which must number npos (one is
// described by one, for the error).
func positional(fs *flag.FlagSet, more func(*flag.FlagSet), args []string, npos int, one string) ([]string, error) {
	if more != nil {
		more(fs)
	}
	pos, err := parse(fs, args)
	switch {
	case err != nil:
		return nil, err
	case len(pos) != npos && npos == 0:
		return nil, usageError(fs.Name() + " takes no arguments")
	case len(pos) != npos:
		return nil, usageError(one)
	}
	return pos, nil
}

// withOps runs f on the store or admin API the common flags name, then closes it.
func (c *cli) withOps(co common, f func(keyOps) error) error {
	o, err := c.ops(co)
	if err != nil {
		return err
	}
	defer o.close()
	return f(o)
}

func (c *cli) flags(name string, co *common) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() { // -h, -help, --help: the command's usage and flags, on stdout
		h := commands[name]
		fmt.Fprintf(c.out, "usage: %s\n\n%s\n\nflags:\n", h[0], h[1])
		printFlags(c.out, fs)
	}
	fs.StringVar(&co.config, "config", "", "config file (YAML); embedded defaults when empty")
	fs.StringVar(&co.store, "store", "", "store URL, overrides store.url")
	return fs
}

// printFlags lists fs's flags as --name TYPE, each with its description and
// default (flag.PrintDefaults writes them with one dash).
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0s" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "%-24s %s\n", line, usage)
	})
}

// parse parses flags, allowing positional arguments before or among them.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			return nil, errHelp
		} else if err != nil {
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
	// SIGHUP: the same config file and flags, read again.
	reload := func() (config.Config, error) {
		next, _, err := c.load(co)
		if err != nil {
			return next, err
		}
		if glisten != "" {
			next.GRPC.Listen = glisten
		}
		if hlisten != "" {
			next.HTTP.Listen = hlisten
		}
		return next, next.Validate()
	}
	return app.Serve(c.ctx, cfg, c.log, app.Options{Embedded: embedded, Level: &c.lvl, Reload: reload}) // SIGTERM while starting: nil, a clean stop
}

func (c *cli) keysCreate(args []string) error {
	var name, expires, rate, grants string
	k, err := c.keyCmd("keys create", args, 0, true, func(fs *flag.FlagSet) {
		fs.StringVar(&name, "name", "", "key name, unique in the workspace")
		fs.StringVar(&expires, "expires-in", "", "lifetime, e.g. 720h")
		fs.StringVar(&rate, "rate-limit", "", "rate limit override, e.g. 600/m")
		fs.StringVar(&grants, "grant", "", "extra resources, comma-separated")
	})
	if err != nil {
		return err
	}
	if name == "" {
		return usageError("keys create: --name is required")
	}
	spec := apikey.Spec{Workspace: k.ws, Name: name}
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
		return explain(err, k.ws)
	}
	k.co.hashes = true
	return c.withOps(k.co, func(o keyOps) error {
		v, err := o.create(c.ctx, spec)
		if err != nil {
			return explain(err, k.ws)
		}
		return printSecret(c.out, v, k.asJSON, "Created")
	})
}

// explain turns store errors into messages a person can act on.
func explain(err error, ws string) error {
	var fe *apikey.FieldError
	switch {
	case errors.As(err, &fe):
		flag := map[string]string{"grants": "grant", "expires_at": "expires-in", "metadata": "meta"}[fe.Field]
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
	var unusedFor string
	k, err := c.keyCmd("keys list", args, 0, true, func(fs *flag.FlagSet) {
		fs.StringVar(&unusedFor, "unused-for", "", "only keys created more than this long ago and unused since, e.g. 30d or 720h")
	})
	if err != nil {
		return err
	}
	var unused time.Duration
	if unusedFor != "" {
		if unused, err = admin.ParseUnusedFor(unusedFor); err != nil {
			return usageError("--unused-for: want days such as 30d or a duration such as 720h, at most 36500d")
		}
	}
	return c.withOps(k.co, func(o keyOps) error {
		items, err := o.list(c.ctx, k.ws, unused)
		if err != nil {
			return err
		}
		return printKeys(c.out, items, k.asJSON)
	})
}

func (c *cli) keysRefresh(args []string) error {
	var grace time.Duration
	k, err := c.keyCmd("keys refresh", args, 1, false, func(fs *flag.FlagSet) {
		fs.DurationVar(&grace, "grace", 0, "keep the old secret valid this long (default: invalid at once)")
	})
	if err != nil {
		return err
	}
	k.co.hashes = true
	return c.withOps(k.co, func(o keyOps) error {
		v, err := o.refresh(c.ctx, k.ws, k.pos[0], grace)
		if err != nil {
			return explain(err, k.ws)
		}
		return printSecret(c.out, v, k.asJSON, "Refreshed")
	})
}

func (c *cli) keysDelete(args []string) error {
	k, err := c.keyCmd("keys delete", args, 1, false, nil)
	if err != nil {
		return err
	}
	return c.withOps(k.co, func(o keyOps) error {
		if err := o.delete(c.ctx, k.ws, k.pos[0]); err != nil {
			return explain(err, k.ws)
		}
		fmt.Fprintf(c.out, "Deleted key %s.\n", k.pos[0])
		return nil
	})
}

// migrate creates the configured store, or applies its pending schema migrations.
func (c *cli) migrate(args []string) error {
	var co common
	fs := c.flags("migrate", &co)
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("migrate takes no arguments")
	}
	cfg, embedded, err := c.load(co)
	if err != nil {
		return err
	}
	if err := app.Migrate(c.ctx, cfg, c.log, app.Options{Embedded: embedded}); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "Store %s is at the current schema.\n", config.RedactURL(cfg.Store.URL))
	return nil
}

func (c *cli) audit(args []string) error {
	k, err := c.keyCmd("audit", args, 0, true, nil)
	if err != nil {
		return err
	}
	return c.withOps(k.co, func(o keyOps) error {
		events, err := o.audit(c.ctx, k.ws)
		if err != nil {
			return err
		}
		return printAudit(c.out, events, k.asJSON)
	})
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
