package keycache

import "github.com/keyauthz/keyauthz/extauthz/apikey"

// Cached reports, without a store read and without touching the LRU order or
// the hit counters, what the cache holds for d: positive when it holds a
// positive entry that Lookup answers from (fresh, or kept for stale serving;
// Lookup may still refresh it from the store), negative when it holds an
// unexpired negative entry. At most one of them is true.
func (c *Cache) Cached(d apikey.Digest) (positive, negative bool) {
	s := c.shard(&d.Sum)
	now := c.clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.pos.Peek(d.Sum); ok && now-e.at <= c.ttl+c.maxStale {
		return true, false
	}
	if s.neg != nil {
		if exp, ok := s.neg.Peek(d.Sum); ok && now < exp {
			return false, true
		}
	}
	return false, false
}
