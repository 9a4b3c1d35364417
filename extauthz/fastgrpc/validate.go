package fastgrpc

import (
	"errors"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The decoder reads only the fields the decision needs; proto.Unmarshal, which
// the standard codec runs, also rejects a message for what lies in the fields
// it skips. So that both codecs decide every input alike, valid checks the whole
// message as proto.Unmarshal does (google.golang.org/protobuf v1.36, impl
// package), without building it: every known message field (a map entry and
// its message value included) is parsed, string fields of these proto3 files
// must be valid UTF-8, and messages nest at most protowire.DefaultRecursionLimit
// deep, counted as proto.Unmarshal counts them: one level per message and per
// map entry, a map field spending its level even when of another wire type.

// vkind is how the validator treats a known field; fields with no entry are
// checked only for being well-formed.
type vkind uint8

const (
	vOther   vkind = iota // any other field: well-formed is enough
	vString               // a proto3 string: UTF-8 when length-delimited
	vMessage              // a message: valid when length-delimited
	vMap                  // a map: one nesting level, then a valid entry when length-delimited
)

// vfield is one known field of a vmsg.
type vfield struct {
	kind vkind
	msg  *vmsg // the message, or the map entry, of a vMessage or vMap field
}

// vmsg is what validation needs of one message type: its fields by number.
type vmsg struct{ fields []vfield }

// unsupported is the first CheckRequest field the validation cannot check
// like proto.Unmarshal does; empty when every field is handled.
var unsupported protoreflect.FullName

// Supported reports whether this go-control-plane's CheckRequest is one the
// fast decoder validates exactly as the standard codec; the error names the
// first field it cannot, and the server must then use the standard codec.
func Supported() error {
	if unsupported != "" {
		return errors.New("fastgrpc: the fast codec does not validate CheckRequest field " + string(unsupported) + "; use the standard codec")
	}
	return nil
}

// checkRequestSchema is the validation schema of envoy.service.auth.v3.CheckRequest,
// built from the generated descriptors.
var checkRequestSchema = schemaOf((&authv3.CheckRequest{}).ProtoReflect().Descriptor(), map[protoreflect.FullName]*vmsg{})

// schemaOf builds md's schema; seen holds those built or being built (Struct
// and Value refer to each other).
func schemaOf(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]*vmsg) *vmsg {
	if m, ok := seen[md.FullName()]; ok {
		return m
	}
	m := &vmsg{}
	seen[md.FullName()] = m
	fs := md.Fields()
	maxNum := protoreflect.FieldNumber(0)
	for i := 0; i < fs.Len(); i++ {
		maxNum = max(maxNum, fs.Get(i).Number())
	}
	m.fields = make([]vfield, maxNum+1)
	for i := 0; i < fs.Len(); i++ {
		fd := fs.Get(i)
		var f vfield
		switch {
		case fd.IsMap():
			f = vfield{kind: vMap, msg: schemaOf(fd.Message(), seen)}
		case fd.Kind() == protoreflect.MessageKind:
			f = vfield{kind: vMessage, msg: schemaOf(fd.Message(), seen)}
		case fd.Kind() == protoreflect.StringKind && fd.Syntax() == protoreflect.Proto3:
			f = vfield{kind: vString}
		case fd.Kind() == protoreflect.GroupKind, fd.IsList() && fd.Kind() != protoreflect.BytesKind && fd.Kind() != protoreflect.StringKind,
			fd.Syntax() == protoreflect.Editions:
			// Groups, packed scalars and editions features are not in CheckRequest
			// today; a go-control-plane update that brings them makes Supported
			// fail, so keyauthz refuses codec: fast instead of diverging from proto.
			if unsupported == "" {
				unsupported = fd.FullName()
			}
		}
		m.fields[fd.Number()] = f
	}
	return m
}

// Schemas of the messages the decoder walks itself, and the nesting budget
// left inside each of them (CheckRequest takes the first level).
var (
	attributesSchema  = checkRequestSchema.fields[fAttributes].msg
	requestSchema     = attributesSchema.fields[fRequest].msg
	httpSchema        = requestSchema.fields[fHTTP].msg
	headerMapSchema   = httpSchema.fields[fHeaderMap].msg
	headerValueSchema = headerMapSchema.fields[fHeaderMapHeaders].msg
)

const (
	depthCheckRequest = protowire.DefaultRecursionLimit - 1
	depthAttributes   = depthCheckRequest - 1
	depthRequest      = depthAttributes - 1
	depthHTTP         = depthRequest - 1
	depthHeaderMap    = depthHTTP - 1
	depthHeaderValue  = depthHeaderMap - 1
)

// validField checks v, the contents of field num of a message of schema m
// that arrived length-delimited, with depth levels left inside that message.
func validField(m *vmsg, num protowire.Number, v []byte, depth int) bool {
	if int(num) >= len(m.fields) {
		return true
	}
	switch f := m.fields[num]; f.kind {
	case vString:
		return utf8.Valid(v)
	case vMessage:
		return validMessage(v, f.msg, depth)
	case vMap:
		return depth > 0 && validFields(v, f.msg, depth-1)
	}
	return true
}

// validMessage checks b as a message of schema m; depth is the nesting budget
// left before this message takes its level.
func validMessage(b []byte, m *vmsg, depth int) bool {
	if depth--; depth < 0 {
		return false
	}
	return validFields(b, m, depth)
}

// validFields checks the fields in b against m, with depth levels left for
// the messages and map entries they hold.
func validFields(b []byte, m *vmsg, depth int) bool {
	for len(b) > 0 {
		// The tag, with a fast path for the one- and two-byte tags of every
		// field CheckRequest declares.
		var tag uint64
		if b[0] < 0x80 {
			tag, b = uint64(b[0]), b[1:]
		} else if len(b) >= 2 && b[1] < 0x80 {
			tag, b = uint64(b[0]&0x7f)|uint64(b[1])<<7, b[2:]
		} else {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false
			}
			tag, b = v, b[n:]
		}
		num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
		if tag>>3 < uint64(protowire.MinValidNumber) || tag>>3 > uint64(protowire.MaxValidNumber) {
			return false
		}
		var f vfield
		if int(num) < len(m.fields) {
			f = m.fields[num]
		}
		if f.kind == vMap && depth-1 < 0 {
			return false
		}
		if typ != protowire.BytesType {
			// Known fields of another wire type are skipped as unknown; an end
			// group here closes no group and is an error, as in proto.Unmarshal.
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return false
			}
			b = b[n:]
			continue
		}
		var size uint64
		if len(b) > 0 && b[0] < 0x80 {
			size, b = uint64(b[0]), b[1:]
		} else {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false
			}
			size, b = v, b[n:]
		}
		if size > uint64(len(b)) {
			return false
		}
		v := b[:size]
		b = b[size:]
		if f.kind != vOther && !validField(m, num, v, depth) {
			return false
		}
	}
	return true
}
