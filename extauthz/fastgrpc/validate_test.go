package fastgrpc

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// valid reports whether proto.Unmarshal accepts b as a CheckRequest, checking
// the whole message with the validator alone (decode checks as it goes).
func valid(b []byte) bool {
	return validMessage(b, checkRequestSchema, protowire.DefaultRecursionLimit)
}

// TestValidDepth nests google.protobuf.Value messages in a request's metadata
// to around proto.Unmarshal's recursion limit, through Struct map entries and
// ListValue lists, and ends them with fields of each kind: valid must accept
// exactly what proto.Unmarshal accepts, level for level, and so must decode.
func TestValidDepth(t *testing.T) {
	// A Value's message-valued fields: struct_value (5) holds a Struct whose
	// fields (1) map entry holds a Value (2); list_value (6) holds a ListValue
	// whose values (1) are Values. Each wrap is the bytes before an inner Value
	// of n bytes (nothing follows it), so nesting costs linear time.
	viaStruct := func(n int) []byte {
		entry := cat(strf(1, "k"), protowire.AppendTag(nil, 2, protowire.BytesType), protowire.AppendVarint(nil, uint64(n)))
		fields := cat(protowire.AppendTag(nil, 1, protowire.BytesType), protowire.AppendVarint(nil, uint64(len(entry)+n)), entry)
		return cat(protowire.AppendTag(nil, 5, protowire.BytesType), protowire.AppendVarint(nil, uint64(len(fields)+n)), fields)
	}
	viaList := func(n int) []byte {
		values := cat(protowire.AppendTag(nil, 1, protowire.BytesType), protowire.AppendVarint(nil, uint64(n)))
		return cat(protowire.AppendTag(nil, 6, protowire.BytesType), protowire.AppendVarint(nil, uint64(len(values)+n)), values)
	}
	// nest wraps end in n wraps.
	nest := func(wrap func(int) []byte, n int, end []byte) []byte {
		heads := make([][]byte, n)
		size := len(end)
		for i := n - 1; i >= 0; i-- {
			heads[i] = wrap(size)
			size += len(heads[i])
		}
		return cat(append(heads, end)...)
	}
	ends := map[string][]byte{
		"empty":                 nil,
		"struct with a map":     msg(5, msg(1, strf(1, "k"))),
		"map of another type":   msg(5, varint(1, 1)),
		"message of other type": varint(5, 1),
		"bad utf-8":             strf(3, "\xff"),
	}
	req := func(value []byte) []byte {
		// CheckRequest > AttributeContext > Metadata > filter_metadata entry > Struct > fields entry > Value
		return checkReq(msg(11, msg(1, strf(1, "f"), msg(2, msg(1, strf(1, "k"), msg(2, value))))))
	}
	for _, wrap := range []struct {
		name   string
		f      func(int) []byte
		levels int // nesting levels per wrap
	}{{"struct", viaStruct, 3}, {"list", viaList, 2}} {
		for name, end := range ends {
			accepted, rejected := false, false
			first := (protowire.DefaultRecursionLimit - 12) / wrap.levels
			for n := first; n < first+12/wrap.levels; n++ {
				b := req(nest(wrap.f, n, end))
				err := proto.Unmarshal(b, new(authv3.CheckRequest))
				if got := valid(b); got != (err == nil) {
					t.Fatalf("%s, %s, %d wraps: valid %v, proto.Unmarshal error %v", wrap.name, name, n, got, err)
				}
				if derr := new(request).decode(b); (derr == nil) != (err == nil) {
					t.Fatalf("%s, %s, %d wraps: decode error %v, proto.Unmarshal error %v", wrap.name, name, n, derr, err)
				}
				accepted, rejected = accepted || err == nil, rejected || err != nil
			}
			if name != "bad utf-8" && !(accepted && rejected) {
				t.Fatalf("%s, %s: the limit was not crossed (accepted %v, rejected %v)", wrap.name, name, accepted, rejected)
			}
		}
	}
}

// Every field of this go-control-plane's CheckRequest is one the fast decoder
// validates as proto.Unmarshal does; an upgrade that adds one it cannot fails here.
func TestSchemaSupported(t *testing.T) {
	if err := Supported(); err != nil {
		t.Fatal(err)
	}
}
