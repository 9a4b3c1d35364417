package load

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Samples is one scrape of a Prometheus text endpoint: series (name plus labels,
// as printed) to value.
type Samples map[string]float64

var httpClient = &http.Client{Timeout: 10 * time.Second}

// Scrape reads the Prometheus text format from url.
func Scrape(url string) (Samples, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseSamples(resp.Body)
}

func parseSamples(r io.Reader) (Samples, error) {
	s := Samples{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		s[line[:i]] = v
	}
	return s, sc.Err()
}

// Has reports whether any series of the metric name was scraped.
func (s Samples) Has(name string) bool {
	for k := range s {
		if k == name || strings.HasPrefix(k, name+"{") {
			return true
		}
	}
	return false
}

// Sum adds the series of name whose labels include every label="value" in match.
func (s Samples) Sum(name string, match ...string) float64 {
	var t float64
	for k, v := range s {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, m := range match {
			if !strings.Contains(k, m) {
				ok = false
				break
			}
		}
		if ok {
			t += v
		}
	}
	return t
}

// RedisCalls returns the total calls of every command except INFO from
// INFO commandstats, and the EVALSHA + EVAL calls among them.
func RedisCalls(ctx context.Context, rdb *redis.Client) (all, eval uint64, err error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		cmd := strings.TrimPrefix(name, "cmdstat_")
		if cmd == "info" {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return 0, 0, fmt.Errorf("commandstats %s: %w", line, err)
				}
				all += n
				if cmd == "evalsha" || cmd == "eval" {
					eval += n
				}
			}
		}
	}
	return all, eval, nil
}
