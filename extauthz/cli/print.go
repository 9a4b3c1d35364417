package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/admin"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

func ts(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// printKeys prints keys as a table, or as {"items": [...]} with asJSON.
func printKeys(w io.Writer, keys []admin.View, asJSON bool) error {
	if asJSON {
		if keys == nil {
			keys = []admin.View{}
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

// printSecret prints a key just created or refreshed, with its secret (shown once);
// verb is "Created" or "Refreshed".
func printSecret(w io.Writer, v admin.View, asJSON bool, verb string) error {
	if asJSON {
		return json.NewEncoder(w).Encode(v)
	}
	_, err := fmt.Fprintf(w, "%s key %s (%s) in workspace %s.\nSecret, shown only once, store it now:\n%s\n",
		verb, v.ID, v.Display, v.Workspace, v.Key)
	return err
}

// printAudit prints audit events as a table, or as {"items": [...]} with asJSON.
func printAudit(w io.Writer, events []admin.Event, asJSON bool) error {
	if asJSON {
		if events == nil {
			events = []admin.Event{}
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

// events renders store audit events as the admin API does (the local-store mode).
func events(es []apikey.Event) []admin.Event {
	out := make([]admin.Event, len(es))
	for i, e := range es {
		out[i] = admin.NewEvent(e)
	}
	return out
}
