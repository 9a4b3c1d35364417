package admin

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// ReadTokenFile reads an admin token from a file (the CLI's --token-file), without
// surrounding whitespace. The error never holds the file's content.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read admin token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("admin token file %s is empty", path)
	}
	return t, nil
}

// TokensFromConfig reads the configured admin tokens from their files or
// environment variables; errors are *config.FieldError naming the YAML path.
func TokensFromConfig(ts []config.Token) ([]Token, error) {
	out := make([]Token, 0, len(ts))
	for i, t := range ts {
		path := fmt.Sprintf("admin.tokens[%d]", i)
		var s string
		if t.File != "" {
			b, err := os.ReadFile(t.File)
			if err != nil {
				return nil, &config.FieldError{Path: path + ".file", Msg: fmt.Sprintf("read admin token: %v", err)}
			}
			s = string(b)
		} else {
			v, ok := os.LookupEnv(t.Env)
			if !ok {
				return nil, &config.FieldError{Path: path + ".env", Msg: fmt.Sprintf("environment variable %s is not set", t.Env)}
			}
			s = v
		}
		s = strings.TrimSpace(s)
		if len(s) < MinTokenLen {
			return nil, &config.FieldError{Path: path, Msg: fmt.Sprintf("token is %d bytes, need at least %d", len(s), MinTokenLen)}
		}
		out = append(out, Token{Name: t.Name, Secret: []byte(s)})
	}
	return out, nil
}

func ts(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// PrintKeys prints keys as a table, or as {"items": [...]} with asJSON.
func PrintKeys(w io.Writer, keys []apikey.View, asJSON bool) error {
	if asJSON {
		if keys == nil {
			keys = []apikey.View{}
		}
		return json.NewEncoder(w).Encode(map[string]any{"items": keys})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tDISPLAY\tCREATED\tLAST USED\tEXPIRES")
	for _, v := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s…\t%s\t%s\t%s\n", v.ID, v.Name, v.Display,
			v.CreatedAt.Format(time.RFC3339), ts(v.LastUsedAt), ts(v.ExpiresAt))
	}
	return tw.Flush()
}

// PrintSecret prints a key just created or refreshed, with its secret (shown once);
// verb is "Created" or "Refreshed".
func PrintSecret(w io.Writer, v apikey.View, asJSON bool, verb string) error {
	if asJSON {
		return json.NewEncoder(w).Encode(v)
	}
	_, err := fmt.Fprintf(w, "%s key %s (%s) in workspace %s.\nSecret, shown only once, store it now:\n%s\n",
		verb, v.ID, v.Display, v.Workspace, v.Key)
	return err
}

// PrintAudit prints audit events as a table, or as {"items": [...]} with asJSON.
func PrintAudit(w io.Writer, events []Event, asJSON bool) error {
	if asJSON {
		if events == nil {
			events = []Event{}
		}
		return json.NewEncoder(w).Encode(map[string]any{"items": events})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tKEY\tACTOR\tDETAIL")
	for _, e := range events {
		d := e.Detail
		if d == "" {
			d = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.At.Format(time.RFC3339), e.Kind, e.KeyID, e.Actor, d)
	}
	return tw.Flush()
}

// Events renders store audit events for PrintAudit (the CLI's local-store mode).
func Events(es []apikey.Event) []Event {
	out := make([]Event, len(es))
	for i, e := range es {
		out[i] = NewEvent(e)
	}
	return out
}
