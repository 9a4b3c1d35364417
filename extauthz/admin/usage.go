package admin

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Usage report granularities and their longest ranges.
const (
	// MaxHourRange is the longest range a usage report in hours covers.
	MaxHourRange = 40 * 24 * time.Hour
	// MaxDayRange is the longest range a usage report in days covers.
	MaxDayRange = 400 * 24 * time.Hour
	// MaxUnusedFor is the longest unused_for a key list accepts (100 years).
	MaxUnusedFor = 36500 * 24 * time.Hour
)

// unusedRule describes, for error messages, what ParseUnusedFor accepts.
const unusedRule = "must be a positive number of days such as 30d, or a duration such as 720h, at most 36500d"

// timeRule describes what a usage range's from and to accept.
const timeRule = "must be an RFC 3339 time such as 2030-01-02T15:04:05Z, in years 1 to 9999"

// ParseUnusedFor reads a keys list's unused_for: "Nd" (N whole days) or a Go
// duration such as "720h"; positive and at most MaxUnusedFor. The error never
// echoes s.
func ParseUnusedFor(s string) (time.Duration, error) {
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok && n != "" && strings.Trim(n, "0123456789") == "" {
		days, err := strconv.Atoi(n)
		if err != nil || days > int(MaxUnusedFor/(24*time.Hour)) {
			return 0, &apikey.FieldError{Field: "unused_for", Msg: unusedRule}
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, &apikey.FieldError{Field: "unused_for", Msg: unusedRule}
		}
	}
	if d <= 0 || d > MaxUnusedFor {
		return 0, &apikey.FieldError{Field: "unused_for", Msg: unusedRule}
	}
	return d, nil
}

// FormatUnusedFor is the unused_for value for d: "Nd" for whole days, else d's Go form.
func FormatUnusedFor(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}

// UsageQuery is a checked usage range: buckets of Granularity ("hour" or
// "day") from From (truncated to the unit, UTC) up to To.
type UsageQuery struct {
	From, To    time.Time
	Granularity string
}

// unit is the bucket length.
func (q *UsageQuery) unit() time.Duration {
	if q.Granularity == "day" {
		return 24 * time.Hour
	}
	return time.Hour
}

// Start is the first bucket's start: From truncated to the hour or UTC day.
func (q *UsageQuery) Start() time.Time { return q.From.Truncate(q.unit()) }

// ParseUsageQuery checks a usage request's from, to and granularity (each ""
// when not given) at now: granularity hour (default) or day; to defaults to
// now, from to 24 hours (hour) or 30 days (day) before to; from before to; at
// most MaxHourRange or MaxDayRange apart. Errors are *apikey.FieldError naming
// the parameter; none echoes a value.
func ParseUsageQuery(from, to, granularity string, now time.Time) (UsageQuery, error) {
	q := UsageQuery{Granularity: granularity}
	maxRange, def := MaxHourRange, 24*time.Hour
	switch granularity {
	case "", "hour":
		q.Granularity = "hour"
	case "day":
		maxRange, def = MaxDayRange, 30*24*time.Hour
	default:
		return q, &apikey.FieldError{Field: "granularity", Msg: "must be hour or day"}
	}
	inRange := func(t time.Time) bool { return t.Year() >= 1 && t.Year() <= 9999 }
	q.To = now.UTC()
	if to != "" {
		t, err := time.Parse(time.RFC3339Nano, to)
		if err != nil || !inRange(t.UTC()) {
			return q, &apikey.FieldError{Field: "to", Msg: timeRule}
		}
		q.To = t.UTC()
	}
	q.From = q.To.Add(-def)
	fromField := "to" // a default from out of range is to's doing
	if from != "" {
		t, err := time.Parse(time.RFC3339Nano, from)
		if err != nil {
			return q, &apikey.FieldError{Field: "from", Msg: timeRule}
		}
		q.From, fromField = t.UTC(), "from"
	}
	switch {
	case !inRange(q.From):
		return q, &apikey.FieldError{Field: fromField, Msg: timeRule}
	case !q.From.Before(q.To):
		return q, &apikey.FieldError{Field: "from", Msg: "must be before to"}
	case q.To.Sub(q.From) > maxRange:
		return q, &apikey.FieldError{Field: "from", Msg: fmt.Sprintf("must be at most %d days before to with granularity %s",
			int(maxRange/(24*time.Hour)), q.Granularity)}
	}
	return q, nil
}

// NewUsage builds the usage report of key id over q from the store's hourly
// rows: one bucket per hour or UTC day from q.Start() while before q.To,
// empty ones included, and their totals.
func NewUsage(id string, q UsageQuery, rows []apikey.Usage) Usage {
	unit, start := q.unit(), q.Start()
	out := Usage{KeyID: id, Granularity: q.Granularity, From: start, To: q.To, Buckets: []Bucket{}}
	for t := start; t.Before(q.To); t = t.Add(unit) {
		out.Buckets = append(out.Buckets, Bucket{Start: t})
	}
	for i := range rows {
		h := rows[i].Hour.UTC()
		if h.Before(start) || !h.Before(q.To) {
			continue
		}
		if j := int(h.Sub(start) / unit); j < len(out.Buckets) {
			out.Buckets[j].add(&rows[i].Counts)
			out.Totals.add(&rows[i].Counts)
		}
	}
	return out
}
