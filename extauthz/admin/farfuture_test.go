package admin

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/store/storetest"
)

// A not_before or expires_at the admin API accepts is honoured exactly on every
// Check, not only the first (a store read) but every later one (cache hits):
// dates past 2262-04-11, where Unix nanoseconds wrap, up to 9999-12-31T23:59:59Z.
func TestFarFutureTimesOnCheck(t *testing.T) {
	e := newEnv(t, envOpt{})
	n := 0
	for name, at := range storetest.FarFutureTimes {
		stamp := at.Format(time.RFC3339)
		for _, field := range []string{"not_before", "expires_at"} {
			t.Run(field+" "+name, func(t *testing.T) {
				n++
				r := e.call("POST", "/v1/workspaces/acme/api-keys", opsToken, "application/json",
					jsonBody(t, map[string]any{"name": fmt.Sprintf("far-%d", n), field: stamp}))
				if r.code != http.StatusCreated {
					t.Fatalf("create with %s %s: %d %s", field, stamp, r.code, r.body)
				}
				var v View
				r.json(t, &v)
				got := e.call("GET", "/v1/workspaces/acme/api-keys/"+v.ID, opsToken, "", nil)
				var g map[string]any
				got.json(t, &g)
				if g[field] != stamp {
					t.Errorf("GET %s = %v, want %s", field, g[field], stamp)
				}
				want := field == "expires_at" // valid until then; not valid before then
				for i := 1; i <= 3; i++ {
					if ok := e.allowed(v.Key); ok != want {
						t.Fatalf("Check %d with %s %s: allowed %v, want %v", i, field, stamp, ok, want)
					}
				}
				if err := e.mgr.Delete(t.Context(), v.ID, "t"); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}
