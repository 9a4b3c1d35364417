package cli

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/admin"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// setFlags returns the names of the flags given on fs's command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// onOff reads a --disable/--enable pair into a patch field (nil: neither given).
func onOff(set map[string]bool, disable, enable bool) (*bool, error) {
	switch {
	case set["disable"] && set["enable"]:
		return nil, usageError("give --disable or --enable, not both")
	case set["disable"] && disable, set["enable"] && !enable:
		d := true
		return &d, nil
	case set["disable"] || set["enable"]:
		d := false
		return &d, nil
	}
	return nil, nil
}

// rateFlag reads --rate-limit: "" is the zero Rate (inherit).
func rateFlag(s string) (apikey.Rate, error) {
	if s == "" {
		return apikey.Rate{}, nil
	}
	r, err := apikey.ParseRate(s)
	if err == nil {
		err = r.Check()
	}
	if err != nil {
		return r, usageError("--rate-limit: " + err.Error())
	}
	return r, nil
}

// grantFlag reads --grant: comma-separated resource paths, "" = none.
func grantFlag(s string) ([]string, error) {
	g := []string{}
	if s != "" {
		g = strings.Split(s, ",")
	}
	if err := apikey.CheckGrants("grants", g); err != nil {
		var fe *apikey.FieldError
		if errors.As(err, &fe) {
			return nil, usageError("--grant: " + fe.Msg)
		}
		return nil, err
	}
	return g, nil
}

// metaFlag collects repeated --meta k=v flags. Set never fails, so that the
// flag package never echoes a value (it could be a secret); bad is reported
// after parsing.
type metaFlag struct {
	m   map[string]string
	bad string // the first problem, naming no value
}

// String is flag.Value's: the entries are not printed back.
func (f *metaFlag) String() string { return "" }

// Set adds one key=value entry (flag.Value).
func (f *metaFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	switch {
	case f.bad != "":
	case !ok || k == "":
		f.bad = "--meta: want key=value"
	case hasKey(f.m, k):
		f.bad = "--meta: a key appears twice"
	default:
		if f.m == nil {
			f.m = map[string]string{}
		}
		f.m[k] = v
	}
	return nil
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

func (c *cli) keysUpdate(args []string) error {
	var (
		name, rate, expiresIn, expiresAt, grants string
		noExpiry, noMeta, disable, enable        bool
		fs                                       *flag.FlagSet
	)
	meta := &metaFlag{}
	k, err := c.keyCmd("keys update", args, 1, false, func(f *flag.FlagSet) {
		fs = f
		f.StringVar(&name, "name", "", "new name, unique in the workspace")
		f.StringVar(&rate, "rate-limit", "", `rate limit override, e.g. 600/m ("" = the workspace's)`)
		f.StringVar(&expiresIn, "expires-in", "", "expire this long from now, e.g. 720h")
		f.StringVar(&expiresAt, "expires-at", "", "expire at this RFC 3339 time, e.g. 2030-01-02T15:04:05Z")
		f.BoolVar(&noExpiry, "no-expiry", false, "never expire")
		f.StringVar(&grants, "grant", "", `extra resources, comma-separated paths such as acme/web ("" = none)`)
		f.Var(meta, "meta", "metadata entry key=value (repeatable; replaces all metadata)")
		f.BoolVar(&noMeta, "no-meta", false, "remove all metadata")
		f.BoolVar(&disable, "disable", false, "refuse the key (401) until --enable")
		f.BoolVar(&enable, "enable", false, "accept the key again")
	})
	if err != nil {
		return err
	}
	if meta.bad != "" {
		return usageError(meta.bad)
	}
	set := setFlags(fs)
	var p apikey.KeyPatch
	if set["name"] {
		if err := apikey.CheckKeyName(name); err != nil {
			return explain(err, k.ws)
		}
		p.Name = &name
	}
	if set["rate-limit"] {
		r, err := rateFlag(rate)
		if err != nil {
			return err
		}
		p.RateLimit = &r
	}
	now := time.Now()
	switch n := countTrue(set["expires-in"], set["expires-at"], set["no-expiry"]); {
	case n > 1:
		return usageError("keys update: give one of --expires-in, --expires-at and --no-expiry")
	case set["expires-in"]:
		d, err := time.ParseDuration(expiresIn)
		if err != nil || d <= 0 {
			return usageError("--expires-in: want a positive duration such as 720h")
		}
		t := now.Add(d).UTC()
		p.ExpiresAt = &t
	case set["expires-at"]:
		t, err := time.Parse(time.RFC3339Nano, expiresAt)
		if err != nil {
			return usageError("--expires-at: want an RFC 3339 time such as 2030-01-02T15:04:05Z")
		}
		if !t.After(now) {
			return usageError("--expires-at: must be in the future")
		}
		p.ExpiresAt = &t
	case set["no-expiry"] && noExpiry:
		p.ExpiresAt = &time.Time{}
	}
	if set["grant"] {
		g, err := grantFlag(grants)
		if err != nil {
			return err
		}
		p.Grants = &g
	}
	switch {
	case set["meta"] && set["no-meta"]:
		return usageError("keys update: give --meta or --no-meta, not both")
	case set["meta"]:
		p.Metadata = &meta.m
	case set["no-meta"] && noMeta:
		m := map[string]string{}
		p.Metadata = &m
	}
	if p.Disabled, err = onOff(set, disable, enable); err != nil {
		return err
	}
	if p == (apikey.KeyPatch{}) {
		return usageError("keys update: nothing to change; give at least one of --name, --rate-limit, --expires-in, --expires-at, --no-expiry, --grant, --meta, --no-meta, --disable, --enable")
	}
	return c.withOps(k.co, func(o keyOps) error {
		v, err := o.update(c.ctx, k.ws, k.pos[0], p)
		if err != nil {
			return explain(err, k.ws)
		}
		if k.asJSON {
			return printJSON(c.out, v)
		}
		fmt.Fprintf(c.out, "Updated key %s.\n", v.ID)
		return printKeys(c.out, []admin.View{v}, false)
	})
}

func countTrue(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func (c *cli) keysUsage(args []string) error {
	var gran, from, to string
	k, err := c.keyCmd("keys usage", args, 1, false, func(fs *flag.FlagSet) {
		fs.StringVar(&gran, "granularity", "hour", "bucket size: hour or day")
		fs.StringVar(&from, "from", "", "start, RFC 3339 (default: 24 hours, or 30 days by day, before --to)")
		fs.StringVar(&to, "to", "", "end, RFC 3339 (default: now)")
	})
	if err != nil {
		return err
	}
	q, err := admin.ParseUsageQuery(from, to, gran, time.Now())
	if err != nil {
		var fe *apikey.FieldError
		if errors.As(err, &fe) {
			return usageError("--" + fe.Field + ": " + fe.Msg)
		}
		return err
	}
	return c.withOps(k.co, func(o keyOps) error {
		u, err := o.usage(c.ctx, k.ws, k.pos[0], q)
		if err != nil {
			return explain(err, k.ws)
		}
		return printUsage(c.out, u, k.asJSON)
	})
}

// wsCmd parses args for a workspaces command: the shared flags, the
// command's own (more, when not nil) and npos positional arguments (WS),
// checked against the workspace id rule.
func (c *cli) wsCmd(name string, args []string, npos int, more func(*flag.FlagSet)) (keyArgs, error) {
	var k keyArgs
	fs := c.flags(name, &k.co)
	c.serverFlags(fs, &k.co, &k.asJSON)
	var err error
	if k.pos, err = positional(fs, more, args, npos, name+" takes one workspace id WS"); err != nil {
		return k, err
	}
	if npos == 1 {
		k.ws = k.pos[0]
		if err := apikey.CheckWorkspace(k.ws); err != nil {
			return k, explain(err, k.ws)
		}
	}
	return k, nil
}

// errNoRecord explains a workspace without a record.
func errNoRecord(ws string) error {
	return fmt.Errorf("workspace %s has no record (its keys use the config's settings); create one with 'keyauthz workspaces set %s'", ws, ws)
}

func (c *cli) workspacesGet(args []string) error {
	k, err := c.wsCmd("workspaces get", args, 1, nil)
	if err != nil {
		return err
	}
	return c.withOps(k.co, func(o keyOps) error {
		w, err := o.getWorkspace(c.ctx, k.ws)
		if errors.Is(err, apikey.ErrNotFound) {
			return errNoRecord(k.ws)
		}
		if err != nil {
			return explain(err, k.ws)
		}
		return printWorkspaces(c.out, []admin.WorkspaceView{w}, k.asJSON, false)
	})
}

func (c *cli) workspacesSet(args []string) error {
	var (
		rate, grants    string
		maxKeys         int
		disable, enable bool
		fs              *flag.FlagSet
	)
	k, err := c.wsCmd("workspaces set", args, 1, func(f *flag.FlagSet) {
		fs = f
		f.StringVar(&rate, "rate-limit", "", `rate limit of its keys without their own, e.g. 600/m ("" = the config's)`)
		f.IntVar(&maxKeys, "max-keys", 0, "most live keys it may hold (0 = the config's)")
		f.StringVar(&grants, "grant", "", `resources every key may reach, comma-separated paths such as acme/web ("" = none)`)
		f.BoolVar(&disable, "disable", false, "refuse every key of the workspace (401) until --enable")
		f.BoolVar(&enable, "enable", false, "accept its keys again")
	})
	if err != nil {
		return err
	}
	set := setFlags(fs)
	var p apikey.WorkspacePatch
	if set["rate-limit"] {
		r, err := rateFlag(rate)
		if err != nil {
			return err
		}
		p.RateLimit = &r
	}
	if set["max-keys"] {
		if maxKeys < 0 || maxKeys > apikey.MaxKeysLimit {
			return usageError(fmt.Sprintf("--max-keys: want 0 (the config's) to %d", apikey.MaxKeysLimit))
		}
		p.MaxKeys = &maxKeys
	}
	if set["grant"] {
		g, err := grantFlag(grants)
		if err != nil {
			return err
		}
		p.Grants = &g
	}
	if p.Disabled, err = onOff(set, disable, enable); err != nil {
		return err
	}
	return c.withOps(k.co, func(o keyOps) error {
		w, created, err := o.setWorkspace(c.ctx, k.ws, p)
		if err != nil {
			return explain(err, k.ws)
		}
		if k.asJSON {
			return printJSON(c.out, w)
		}
		verb := "Updated"
		if created {
			verb = "Created"
		}
		fmt.Fprintf(c.out, "%s the record of workspace %s.\n", verb, w.ID)
		return printWorkspaces(c.out, []admin.WorkspaceView{w}, false, false)
	})
}

func (c *cli) workspacesList(args []string) error {
	k, err := c.wsCmd("workspaces list", args, 0, nil)
	if err != nil {
		return err
	}
	return c.withOps(k.co, func(o keyOps) error {
		ws, err := o.listWorkspaces(c.ctx)
		if err != nil {
			return err
		}
		return printWorkspaces(c.out, ws, k.asJSON, true)
	})
}
