package config

import "time"

// maxStreamsCap is the largest grpc.max_concurrent_streams accepted: beyond it
// one connection could again hold enough waiting streams to matter.
const maxStreamsCap = 1 << 16

// validateLimits checks the connection, stream and deadline bounds of the
// gRPC and HTTP listeners.
func (c *Config) validateLimits(bad func(path, format string, a ...any)) {
	if c.GRPC.MaxStreams == 0 || c.GRPC.MaxStreams > maxStreamsCap {
		bad("grpc.max_concurrent_streams", "%d: want 1 to %d streams per connection", c.GRPC.MaxStreams, maxStreamsCap)
	}
	if c.GRPC.MaxConns <= 0 {
		bad("grpc.max_conns", "must be a positive number of connections")
	}
	if c.HTTP.MaxConns <= 0 {
		bad("http.max_conns", "must be a positive number of connections")
	}
	for _, d := range []struct {
		path string
		v    time.Duration
	}{
		{"grpc.request_timeout", c.GRPC.RequestTimeout},
		{"http.read_timeout", c.HTTP.ReadTimeout},
		{"http.write_timeout", c.HTTP.WriteTimeout},
	} {
		if d.v <= 0 {
			bad(d.path, "must be a positive duration")
		}
	}
}
