package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
)

// check asks a running server for a decision, as Envoy would, and prints it.
func (c *cli) check(args []string) error {
	var co common
	var key, path, server, method string
	fs := c.flags("check", &co)
	fs.StringVar(&key, "key", "", "API key to check; - reads it from stdin")
	fs.StringVar(&path, "path", "/", "request path")
	fs.StringVar(&method, "method", "GET", "request method")
	fs.StringVar(&server, "server", "", "gRPC address (default: grpc.listen)")
	var tf tlsFlags
	fs.StringVar(&tf.caFile, "ca-file", "", "CA (PEM) the server's certificate must chain to (default: grpc.tls.client_ca_file, else the system roots); TLS")
	fs.StringVar(&tf.certFile, "cert-file", "", "client certificate (PEM) for mutual TLS (default: grpc.tls.cert_file when grpc.tls.client_ca_file is set)")
	fs.StringVar(&tf.keyFile, "key-file", "", "client certificate's key (PEM), with --cert-file")
	fs.StringVar(&tf.serverName, "server-name", "", "name the server's certificate must carry (default: the --server host); TLS")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("check takes no arguments")
	}
	if key == "" {
		return usageError("check: --key is required (- reads it from stdin)")
	}
	cfg, _, err := c.load(co)
	if err != nil {
		return err
	}
	if server == "" {
		server = cfg.GRPC.Listen
	}
	if strings.HasPrefix(server, "unix://") {
		server = "unix:" + strings.TrimPrefix(server, "unix://")
	}
	key, err = readKey(key, c.in)
	if err != nil {
		return err
	}
	creds, err := checkCreds(&cfg.GRPC, tf, server)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(server, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("connect %s: %w", server, err)
	}
	defer conn.Close()
	headers := map[string]string{":method": method, ":path": path}
	if key != "" && len(cfg.Headers.APIKey) > 0 {
		headers[cfg.Headers.APIKey[0]] = key
	}
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Headers: headers,
		}},
	}})
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	out := struct {
		Allowed  bool              `json:"allowed"`
		Status   int               `json:"status"`
		Body     string            `json:"body,omitempty"`
		Upstream map[string]string `json:"upstream_headers,omitempty"`
		Client   map[string]string `json:"client_headers,omitempty"`
		Removed  []string          `json:"removed_headers,omitempty"`
	}{Client: map[string]string{}}
	if ok := resp.GetOkResponse(); ok != nil {
		out.Allowed, out.Status, out.Upstream, out.Removed = true, 200, map[string]string{}, ok.GetHeadersToRemove()
		for _, h := range ok.GetHeaders() {
			out.Upstream[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		for _, h := range ok.GetResponseHeadersToAdd() {
			out.Client[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
	} else if d := resp.GetDeniedResponse(); d != nil {
		out.Status, out.Body = int(d.GetStatus().GetCode()), d.GetBody()
		for _, h := range d.GetHeaders() {
			out.Client[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
	}
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	if !out.Allowed {
		return errDenied
	}
	return nil
}
