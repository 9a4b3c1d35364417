package load

import (
	"bytes"
	"encoding/hex"
	"io"
	"strings"
	"testing"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

func TestPGCopyRows(t *testing.T) {
	g := keyGen{prefix: "kz", seed: 1}
	k := g.key(streamStored, HitKeys)
	want := keyID(HitKeys) + "\tws_0000100\tk0\t" + k[:7] + "\t1735689600000000\t" + LimitedRate + "\n"
	if got := string(appendKeyRow(nil, g, HitKeys)); got != want {
		t.Fatalf("keys row %q, want %q", got, want)
	}
	if got := string(appendKeyRow(nil, g, 12345678)); !strings.HasPrefix(got, keyID(12345678)+"\tws_1234567\tk8\t") || !strings.HasSuffix(got, "\t\n") {
		t.Fatalf("keys row %q", got)
	}
	h, err := apikey.NewHasher(map[int][]byte{1: Pepper(1)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	d := pgDigest{sum: h.Sum(k).Sum, i: HitKeys}
	want = `\\x` + hex.EncodeToString(d.sum[:]) + "\t" + keyID(HitKeys) + "\t1\n"
	if got := string(appendDigestRow(nil, d)); got != want {
		t.Fatalf("digests row %q, want %q", got, want)
	}
	// Digests come sorted, each the hasher's digest of its key.
	ds := pgDigests(g, h, 3000)
	for j := range ds {
		if j > 0 && bytes.Compare(ds[j-1].sum[:], ds[j].sum[:]) >= 0 {
			t.Fatalf("digests not sorted at %d", j)
		}
		if ds[j].sum != h.Sum(g.key(streamStored, uint64(ds[j].i))).Sum {
			t.Fatalf("digest %d is not key %d's", j, ds[j].i)
		}
	}
	// The reader yields every row once, whatever the read size.
	var all bytes.Buffer
	for i := range 2500 {
		all.Write(appendKeyRow(nil, g, i))
	}
	got, err := io.ReadAll(io.LimitReader(&pgRows{n: 2500, row: func(b []byte, i int) []byte { return appendKeyRow(b, g, i) }}, 1<<30))
	if err != nil || !bytes.Equal(got, all.Bytes()) {
		t.Fatalf("pgRows: %d bytes (%v), want %d", len(got), err, all.Len())
	}
}
