package app

import (
	"bytes"
	"fmt"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/admin"
)

// adminTokens reads the configured admin tokens from their files or
// environment variables; errors are *config.FieldError naming the YAML path.
// Surrounding whitespace is not part of a token (as admin.New has it).
func adminTokens(ts []config.Token) ([]admin.Token, error) {
	out := make([]admin.Token, 0, len(ts))
	for i, t := range ts {
		path := fmt.Sprintf("admin.tokens[%d]", i)
		b, err := t.Read(path)
		if err != nil {
			return nil, err
		}
		if b = bytes.TrimSpace(b); len(b) < admin.MinTokenLen {
			return nil, &config.FieldError{Path: path, Msg: fmt.Sprintf("token is %d bytes, need at least %d", len(b), admin.MinTokenLen)}
		}
		out = append(out, admin.Token{Name: t.Name, Secret: b, Workspaces: t.Workspaces})
	}
	return out, nil
}
