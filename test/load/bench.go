package load

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// BenchCmd is the Go benchmark run of target 5 (handler and hasher, no network).
// CheckCacheHit is the handler as the server runs it (wire request in, answer
// in reused storage); FastPath adds the fast codec's decode and marshal.
var BenchCmd = []string{"go", "test", "-tags", "vtprotobuf", "-run", "^$", "-bench", "CheckCacheHit|Hasher|FastPath", "-benchmem", "-count", "3",
	"./extauthz/", "./extauthz/apikey/", "./extauthz/fastgrpc/"}

// BenchResult is the median of a benchmark's runs.
type BenchResult struct {
	Name        string
	NsPerOp     float64
	BytesPerOp  float64
	AllocsPerOp float64
	Runs        int
}

// parseBench reads `go test -bench -benchmem` output and returns, per
// benchmark, the run with the median ns/op.
func parseBench(out string) []BenchResult {
	runs := map[string][]BenchResult{}
	var order []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		b := BenchResult{Name: name}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				b.NsPerOp = v
			case "B/op":
				b.BytesPerOp = v
			case "allocs/op":
				b.AllocsPerOp = v
			}
		}
		if _, ok := runs[name]; !ok {
			order = append(order, name)
		}
		runs[name] = append(runs[name], b)
	}
	var out2 []BenchResult
	for _, n := range order {
		rs := runs[n]
		slices.SortFunc(rs, func(a, b BenchResult) int {
			switch {
			case a.NsPerOp < b.NsPerOp:
				return -1
			case a.NsPerOp > b.NsPerOp:
				return 1
			}
			return 0
		})
		m := rs[len(rs)/2]
		m.Runs = len(rs)
		out2 = append(out2, m)
	}
	return out2
}

func (r *runner) bench(ctx context.Context) error {
	args := BenchCmd
	bin := args[0]
	if r.cpuSrv != "" { // this process is pinned: give the compiler and the benchmark both CPUs
		args = append([]string{"-c", "0,1"}, args...)
		bin = "taskset"
	} else {
		args = args[1:]
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = r.o.Root
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	r.res.BenchCmd = strings.Join(BenchCmd, " ")
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", r.res.BenchCmd, err, out)
	}
	r.res.Bench = parseBench(string(out))
	for _, b := range r.res.Bench {
		r.logf("  %-24s %8.0f ns/op %6.0f B/op %4.0f allocs/op", b.Name, b.NsPerOp, b.BytesPerOp, b.AllocsPerOp)
	}
	if len(r.res.Bench) == 0 {
		return fmt.Errorf("no benchmark results in:\n%s", out)
	}
	return nil
}
