package ratelimit

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/keyauthz/keyauthz/test/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a manual clock safe for concurrent reads.
type fakeClock = testenv.Clock

func newFakeClock() *fakeClock { return testenv.NewClock(time.Unix(1_700_000_000, 0)) }
