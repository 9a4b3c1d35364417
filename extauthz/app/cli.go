package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Version is set at build time with -ldflags "-X …/app.Version=…".
var Version = "dev"

const usage = `usage:
  keyauthz serve [--config FILE] [--grpc-listen ADDR] [--http-listen ADDR] [--store URL]
  keyauthz keys create  --workspace W --name N [--expires-in 720h] [--rate-limit 600/m] [--grant org1,org2] [--json]
  keyauthz keys list    --workspace W [--json]
  keyauthz keys refresh KEY_ID [--grace 0s] [--json]
  keyauthz keys delete  KEY_ID
  keyauthz check --key K|- [--path /v1/...] [--server ADDR]
  keyauthz version
Every command takes --config FILE and --store URL and reads the same pepper as serve.
`

// Main runs one keyauthz command and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, log *zap.Logger, lvl zap.AtomicLevel) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	c := &cli{ctx: ctx, in: stdin, out: stdout, err: stderr, log: log, lvl: lvl}
	var err error
	switch args[0] {
	case "serve":
		err = c.serve(args[1:])
	case "keys":
		if len(args) < 2 {
			fmt.Fprint(stderr, usage)
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
	case "check":
		err = c.check(args[1:])
	case "version":
		fmt.Fprintln(stdout, "keyauthz", Version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = usageError("unknown command " + args[0])
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "keyauthz: %s\n%s", err, usage)
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
	config string
	store  string
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
	a, err := New(c.ctx, cfg, c.log, Options{Embedded: embedded})
	if err != nil {
		return err
	}
	return a.Run(c.ctx)
}

// manager opens the configured store with a key Manager over it.
func (c *cli) manager(co common) (*apikey.Manager, func(), error) {
	cfg, embedded, err := c.load(co)
	if err != nil {
		return nil, nil, err
	}
	h, err := peppers(&cfg, embedded, c.log)
	if err != nil {
		return nil, nil, err
	}
	f, err := apikey.NewFormat(cfg.Keys.Prefix, cfg.Keys.MaxLength, cfg.Keys.Imported)
	if err != nil {
		return nil, nil, err
	}
	s, err := openStore(c.ctx, cfg.Store.URL, c.log.Named("store"))
	if err != nil {
		return nil, nil, fmt.Errorf("open store %s: %w", redactURL(cfg.Store.URL), err)
	}
	m, err := apikey.NewManager(s, f, h, MaxKeys(&cfg))
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return m, func() { s.Close() }, nil
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
	fs := c.flags("keys create", &co)
	fs.StringVar(&ws, "workspace", "", "workspace (account) the key belongs to")
	fs.StringVar(&name, "name", "", "key name, unique in the workspace")
	fs.StringVar(&expires, "expires-in", "", "lifetime, e.g. 720h")
	fs.StringVar(&rate, "rate-limit", "", "rate limit override, e.g. 600/m")
	fs.StringVar(&grants, "grant", "", "extra resources, comma-separated")
	fs.BoolVar(&asJSON, "json", false, "print JSON")
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
		if err != nil {
			return usageError("--rate-limit: " + err.Error())
		}
		spec.RateLimit = r
	}
	if grants != "" {
		spec.Grants = strings.Split(grants, ",")
	}
	m, done, err := c.manager(co)
	if err != nil {
		return err
	}
	defer done()
	k, secret, err := m.Create(c.ctx, spec, "cli")
	if err != nil {
		return explain(err, ws)
	}
	return c.printSecret(k, secret, asJSON, "Created")
}

func (c *cli) printSecret(k apikey.Key, secret string, asJSON bool, verb string) error {
	if asJSON {
		return json.NewEncoder(c.out).Encode(apikey.NewView(k, secret))
	}
	fmt.Fprintf(c.out, "%s key %s (%s) in workspace %s.\nSecret, shown only once, store it now:\n%s\n", verb, k.ID, k.Display, k.Workspace, secret)
	return nil
}

// explain turns store errors into messages a person can act on.
func explain(err error, ws string) error {
	var fe *apikey.FieldError
	switch {
	case errors.As(err, &fe):
		return fmt.Errorf("invalid --%s: %s", strings.ReplaceAll(fe.Field, "_", "-"), fe.Msg)
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
	fs := c.flags("keys list", &co)
	fs.StringVar(&ws, "workspace", "", "workspace to list")
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if ws == "" {
		return usageError("keys list: --workspace is required")
	}
	m, done, err := c.manager(co)
	if err != nil {
		return err
	}
	defer done()
	var items []apikey.View
	after := ""
	for {
		page, err := m.Store().List(c.ctx, ws, after, 500)
		if err != nil {
			return err
		}
		for _, k := range page {
			items = append(items, apikey.NewView(k, ""))
		}
		if len(page) < 500 {
			break
		}
		after = page[len(page)-1].ID
	}
	if asJSON {
		if items == nil {
			items = []apikey.View{}
		}
		return json.NewEncoder(c.out).Encode(map[string]any{"items": items})
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tDISPLAY\tCREATED\tLAST USED\tEXPIRES")
	ts := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.Format(time.RFC3339)
	}
	for _, v := range items {
		fmt.Fprintf(tw, "%s\t%s\t%s…\t%s\t%s\t%s\n", v.ID, v.Name, v.Display, v.CreatedAt.Format(time.RFC3339), ts(v.LastUsedAt), ts(v.ExpiresAt))
	}
	return tw.Flush()
}

func (c *cli) keysRefresh(args []string) error {
	var co common
	var grace time.Duration
	var asJSON bool
	fs := c.flags("keys refresh", &co)
	fs.DurationVar(&grace, "grace", 0, "keep the old secret valid this long (default: invalid at once)")
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("keys refresh takes one KEY_ID")
	}
	m, done, err := c.manager(co)
	if err != nil {
		return err
	}
	defer done()
	k, secret, err := m.Refresh(c.ctx, pos[0], grace, "cli")
	if err != nil {
		return explain(err, "")
	}
	return c.printSecret(k, secret, asJSON, "Refreshed")
}

func (c *cli) keysDelete(args []string) error {
	var co common
	fs := c.flags("keys delete", &co)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("keys delete takes one KEY_ID")
	}
	m, done, err := c.manager(co)
	if err != nil {
		return err
	}
	defer done()
	if err := m.Delete(c.ctx, pos[0], "cli"); err != nil {
		return explain(err, "")
	}
	fmt.Fprintf(c.out, "Deleted key %s.\n", pos[0])
	return nil
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
