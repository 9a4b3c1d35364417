package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// keys create refuses a --rate-limit outside 1..1e9 per 1s..1 year as a usage
// error naming the flag, before any store is opened.
func TestCLIRateLimitBounds(t *testing.T) {
	for _, rate := range []string{"1/9223372036854775807ns", "1/2562047h", "1/8761h", "5/500ms", "1000000001/s", "0/m", "fast"} {
		t.Run(rate, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := Main(context.Background(), []string{"keys", "create", "--workspace", "acme", "--name", "n", "--rate-limit", rate},
				strings.NewReader(""), &out, &errb, zap.NewNop(), zap.NewAtomicLevel())
			if code != 2 || !strings.Contains(errb.String(), "--rate-limit") {
				t.Fatalf("exit %d, stderr %q; want 2 and an error naming --rate-limit", code, errb.String())
			}
		})
	}
}
