package extauthz

import (
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// okResponse is an allowed CheckResponse with everything it points to, allocated at once.
type okResponse struct {
	resp  authv3.CheckResponse
	oneof authv3.CheckResponse_OkResponse
	ok    authv3.OkHttpResponse
	rate  rateBlock
}

// ident is the part of an allowed response that depends only on the key: the
// upstream identity headers and the dynamic metadata. It is built once per key
// and shared read-only by every response (gRPC only reads messages it sends).
type ident struct {
	workspace string
	headers   []*corev3.HeaderValueOption
	metadata  *structpb.Struct
}

// identities caches idents by key id. Ids and workspaces never change, so an
// entry cannot go stale; the map is bounded by dropping everything when full.
type identities struct {
	mu sync.RWMutex
	m  map[string]*ident
}

const maxIdentities = 100_000

func (c *identities) get(k *apikey.Key, idHeader, wsHeader string) *ident {
	c.mu.RLock()
	id, ok := c.m[k.ID]
	c.mu.RUnlock()
	if ok && id.workspace == k.Workspace {
		return id
	}
	id = &ident{
		workspace: k.Workspace,
		headers:   []*corev3.HeaderValueOption{header(idHeader, k.ID), header(wsHeader, k.Workspace)},
		metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			MetadataKeyID:     structpb.NewStringValue(k.ID),
			MetadataWorkspace: structpb.NewStringValue(k.Workspace),
		}},
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxIdentities {
		c.m = make(map[string]*ident)
	}
	c.m[k.ID] = id
	c.mu.Unlock()
	return id
}
