package file

// Reload re-reads the key file now (SIGHUP) instead of waiting for the next
// watch event or poll; unchanged content is skipped and bad content is logged
// and leaves the current keys in place, as for automatic reloads.
func (s *Store) Reload() { s.reload() }
