package config

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// locate finds, in the YAML document b, the first node that decoding into
// Config rejects, and returns its error as a *FieldError naming the node's
// YAML path and line: an unknown field is `ratelimit.defualt: unknown field
// (line 3)`, a bad value `workspaces.acme.rate_limit: rate "abc": … (line 3)`.
// It returns nil when it finds none (Parse then reports yaml's own error).
func locate(b []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil // a syntax error: yaml's message has the line
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil
	}
	return walk(doc.Content[0], reflect.TypeFor[Config](), "")
}

var (
	yamlUnmarshaler = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// walk checks node n against type t at YAML path path.
func walk(n *yaml.Node, t reflect.Type, path string) error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	pt := reflect.PointerTo(t)
	custom := pt.Implements(yamlUnmarshaler) || pt.Implements(textUnmarshaler)
	switch {
	case custom || n.Kind == yaml.ScalarNode && n.Tag == "!!null":
		return leaf(n, t, path)
	case t.Kind() == reflect.Pointer:
		return walk(n, t.Elem(), path)
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := yamlFields(t, map[string]reflect.Type{})
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok {
				return &FieldError{Path: join(path, k.Value), Msg: fmt.Sprintf("unknown field (line %d)", k.Line)}
			}
			if err := walk(v, ft, join(path, k.Value)); err != nil {
				return err
			}
		}
		return nil
	case t.Kind() == reflect.Map && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if err := leaf(k, t.Key(), path); err != nil {
				return err
			}
			if err := walk(v, t.Elem(), join(path, k.Value)); err != nil {
				return err
			}
		}
		return nil
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, c := range n.Content {
			if err := walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return nil
	}
	return leaf(n, t, path)
}

// yamlFields maps the YAML names of struct t's fields (those of ,inline
// fields included) to their types.
func yamlFields(t reflect.Type, out map[string]reflect.Type) map[string]reflect.Type {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case name == "-":
		case strings.Contains(opts, "inline"):
			yamlFields(f.Type, out)
		case name == "":
			out[strings.ToLower(f.Name)] = f.Type
		default:
			out[name] = f.Type
		}
	}
	return out
}

// yamlLine is the "line N: " that starts each of yaml's type errors.
var yamlLine = regexp.MustCompile(`^line \d+: `)

// leaf decodes n into a new t and returns the failure at path, if any.
func leaf(n *yaml.Node, t reflect.Type, path string) error {
	err := n.Decode(reflect.New(t).Interface())
	if err == nil {
		return nil
	}
	if fe := (*FieldError)(nil); errors.As(err, &fe) { // an option's error names its path already
		return &FieldError{Path: fe.Path, Msg: fmt.Sprintf("%s (line %d)", fe.Msg, n.Line)}
	}
	msg := err.Error()
	if te := (*yaml.TypeError)(nil); errors.As(err, &te) && len(te.Errors) > 0 {
		msg = yamlLine.ReplaceAllString(te.Errors[0], "")
	}
	if path == "" {
		path = "(top level)"
	}
	return &FieldError{Path: path, Msg: fmt.Sprintf("%s (line %d)", msg, n.Line)}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}
