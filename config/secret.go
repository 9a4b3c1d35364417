package config

import (
	"bytes"
	"fmt"
	"os"
)

// Secret names where a secret comes from, never the secret itself: a file
// (YAML {file: /path}, e.g. a Kubernetes secret volume) or an environment
// variable ({env: NAME}). Pepper versions, admin tokens and the Redis and
// PostgreSQL passwords are Secrets.
type Secret struct {
	File string `yaml:"file"` // path of a file holding the secret
	Env  string `yaml:"env"`  // name of an environment variable holding the secret
}

// IsZero reports whether the secret names neither a file nor a variable.
func (s Secret) IsZero() bool { return s.File == "" && s.Env == "" }

// check is the one validation rule of a secret at path: exactly one of file
// or env (or neither, when the secret is optional).
func (s Secret) check(path string, optional bool) error {
	switch {
	case s.File != "" && s.Env != "":
		return &FieldError{Path: path, Msg: "set exactly one of file or env, not both"}
	case s.IsZero() && !optional:
		return &FieldError{Path: path, Msg: "set exactly one of file or env"}
	}
	return nil
}

// Read returns the secret without its trailing line ending (every trailing
// \r and \n, as a file written by an editor or echo ends; nothing else is
// trimmed). A file that cannot be read, an unset variable, or an empty secret
// is a *FieldError at path.file or path.env (path is the secret's YAML path);
// no error holds the secret. A zero Secret reads as nil, without error.
func (s Secret) Read(path string) ([]byte, error) {
	var (
		b     []byte
		field string
	)
	switch {
	case s.File != "":
		field = path + ".file"
		var err error
		if b, err = os.ReadFile(s.File); err != nil {
			return nil, &FieldError{Path: field, Msg: fmt.Sprintf("read secret: %v", err)}
		}
	case s.Env != "":
		field = path + ".env"
		v, ok := os.LookupEnv(s.Env)
		if !ok {
			return nil, &FieldError{Path: field, Msg: fmt.Sprintf("environment variable %s is not set", s.Env)}
		}
		b = []byte(v)
	default:
		return nil, nil
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		what := "file " + s.File
		if s.Env != "" {
			what = "environment variable " + s.Env
		}
		return nil, &FieldError{Path: field, Msg: what + " is empty"}
	}
	return b, nil
}
