package app

import "net"

// Tests bind port 0 and find the listeners here; serve logs the addresses.

// GRPCAddr is the bound gRPC address.
func (a *App) GRPCAddr() net.Addr { return a.glis.Addr() }

// HTTPAddr is the bound HTTP address.
func (a *App) HTTPAddr() net.Addr { return a.hlis.Addr() }
