package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
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
	fmt.Fprintln(tw, "ID\tNAME\tDISPLAY\tCREATED\tLAST USED\tREQUESTS 30D\tEXPIRES\tSTATE")
	for _, v := range keys {
		state := "enabled"
		if v.Disabled {
			state = "disabled"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s…\t%s\t%s\t%d\t%s\t%s\n", v.ID, v.Name, v.Display,
			v.CreatedAt.Format(time.RFC3339), ts(v.LastUsedAt), v.Requests30d, ts(v.ExpiresAt), state)
	}
	return tw.Flush()
}

// printJSON prints v as one line of JSON.
func printJSON(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

// printWorkspaces prints workspace records as a table or, with asJSON, as
// {"items": [...]} when list is set and the one record otherwise.
func printWorkspaces(w io.Writer, ws []admin.WorkspaceView, asJSON, list bool) error {
	if asJSON {
		if !list && len(ws) == 1 {
			return printJSON(w, ws[0])
		}
		if ws == nil {
			ws = []admin.WorkspaceView{}
		}
		return printJSON(w, map[string]any{"items": ws})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKSPACE\tRATE LIMIT\tMAX KEYS\tGRANTS\tSTATE\tUPDATED")
	for _, v := range ws {
		rate, max, grants, state := v.RateLimit, "config", strings.Join(v.Grants, ","), "enabled"
		if rate == "" {
			rate = "config"
		}
		if v.MaxKeys > 0 {
			max = strconv.Itoa(v.MaxKeys)
		}
		if grants == "" {
			grants = "-"
		}
		if v.Disabled {
			state = "disabled"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", v.ID, rate, max, grants, state, v.UpdatedAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

// printUsage prints a usage report as a table of buckets and a total row, or as JSON.
func printUsage(w io.Writer, u admin.Usage, asJSON bool) error {
	if asJSON {
		return printJSON(w, u)
	}
	fmt.Fprintf(w, "Key %s, by %s, from %s to %s (UTC).\n", u.KeyID, u.Granularity, u.From.Format(time.RFC3339), u.To.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "START\tALLOWED\tRATE LIMITED\tFORBIDDEN\tDISABLED\tEXPIRED\tREVOKED\tNOT YET VALID\tLIMITER DOWN\t")
	row := func(label string, c admin.Counts) {
		d := c.Denied
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", label, c.Allowed, d.RateLimited, d.Forbidden,
			d.Disabled, d.Expired, d.Revoked, d.NotYetValid, d.LimiterUnavailable)
	}
	format := "2006-01-02T15:04Z"
	if u.Granularity == "day" {
		format = "2006-01-02"
	}
	for _, b := range u.Buckets {
		row(b.Start.Format(format), b.Counts)
	}
	row("TOTAL", u.Totals)
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
