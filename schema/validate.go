package schema

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The spec is validated against the embedded JSON Schema by this small
// interpreter of the keywords the schema uses. A general validator library
// pays for its generality at every process start (jsonschema/v5 compiles its
// meta-schemas in package init: ~9 ms), and this binary starts as the agent
// and as every Bash tool command, where that budget is a few milliseconds.
// The tests run the same documents through santhosh-tekuri/jsonschema/v5 and
// require the same verdicts (schema_diff_test.go), and SupportedKeywords
// keeps the schema within what is interpreted here.

// supportedKeywords are the JSON Schema keywords the interpreter implements;
// annotations (title, description, default, x-*) are ignored.
func supportedKeywords() []string {
	return []string{
		"$schema", "$id", "$ref", "$defs", "title", "description", "default",
		"type", "enum", "const", "pattern", "minLength",
		"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum",
		"properties", "additionalProperties", "required", "propertyNames",
		"minProperties", "maxProperties", "items", "minItems",
	}
}

// violation is one failed keyword: at instance pointer ptr, keyword kw of
// schema node node.
type violation struct {
	ptr  string
	kw   string
	node map[string]any
	// prop is the property name for propertyNames violations.
	prop string
}

type interp struct {
	root  map[string]any
	cache map[string]*regexp.Regexp
	out   []violation
}

func newInterp(root map[string]any) *interp {
	return &interp{root: root, cache: map[string]*regexp.Regexp{}}
}

func (in *interp) re(p string) *regexp.Regexp {
	if r, ok := in.cache[p]; ok {
		return r
	}
	r := regexp.MustCompile(p) // the embedded schema's patterns are tested to compile
	in.cache[p] = r
	return r
}

func (in *interp) fail(ptr, kw string, node map[string]any) {
	in.out = append(in.out, violation{ptr: ptr, kw: kw, node: node})
}

// validate checks inst at pointer ptr against node.
func (in *interp) validate(node map[string]any, inst any, ptr string) {
	if ref, ok := node["$ref"].(string); ok && strings.HasPrefix(ref, "#") {
		if target, ok := getPointer(in.root, ref[1:]).(map[string]any); ok {
			in.validate(target, inst, ptr)
		}
	}
	if t, ok := node["type"]; ok && !typeMatches(t, inst) {
		in.fail(ptr, "type", node)
		return
	}
	if enum, ok := node["enum"].([]any); ok {
		found := false
		for _, e := range enum {
			if jsonEqual(e, inst) {
				found = true
				break
			}
		}
		if !found {
			in.fail(ptr, "enum", node)
		}
	}
	if c, ok := node["const"]; ok && !jsonEqual(c, inst) {
		in.fail(ptr, "const", node)
	}
	switch x := inst.(type) {
	case string:
		if p, ok := node["pattern"].(string); ok && !in.re(p).MatchString(x) {
			in.fail(ptr, "pattern", node)
		}
		if n, ok := number(node["minLength"]); ok && float64(utf8.RuneCountInString(x)) < n {
			in.fail(ptr, "minLength", node)
		}
	case int64, float64:
		v, _ := number(x)
		for _, kw := range []string{"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"} {
			lim, ok := number(node[kw])
			if !ok {
				continue
			}
			bad := map[string]bool{
				"minimum":          v < lim,
				"exclusiveMinimum": v <= lim,
				"maximum":          v > lim,
				"exclusiveMaximum": v >= lim,
			}[kw]
			if bad {
				in.fail(ptr, kw, node)
			}
		}
	case []any:
		if n, ok := number(node["minItems"]); ok && float64(len(x)) < n {
			in.fail(ptr, "minItems", node)
		}
		if items, ok := node["items"].(map[string]any); ok {
			for i, el := range x {
				in.validate(items, el, ptr+"/"+strconv.Itoa(i))
			}
		}
	case map[string]any:
		in.object(node, x, ptr)
	}
}

func (in *interp) object(node map[string]any, obj map[string]any, ptr string) {
	props, _ := node["properties"].(map[string]any)
	for name, ps := range props {
		if v, ok := obj[name]; ok {
			if psm, ok := ps.(map[string]any); ok {
				in.validate(psm, v, ptr+"/"+escapePointer(name))
			}
		}
	}
	if req, ok := node["required"].([]any); ok {
		for _, r := range req {
			if _, ok := obj[r.(string)]; !ok {
				in.fail(ptr, "required", node)
				break
			}
		}
	}
	switch ap := node["additionalProperties"].(type) {
	case bool:
		if !ap {
			for name := range obj {
				if _, known := props[name]; !known {
					in.fail(ptr, "additionalProperties", node)
					break
				}
			}
		}
	case map[string]any:
		for name, v := range obj {
			if _, known := props[name]; !known {
				in.validate(ap, v, ptr+"/"+escapePointer(name))
			}
		}
	}
	if pn, ok := node["propertyNames"].(map[string]any); ok {
		for name := range obj {
			if p, ok := pn["pattern"].(string); ok && !in.re(p).MatchString(name) {
				in.out = append(in.out, violation{ptr: ptr + "/" + escapePointer(name), kw: "propertyNames", node: pn, prop: name})
			}
		}
	}
	if n, ok := number(node["minProperties"]); ok && float64(len(obj)) < n {
		in.fail(ptr, "minProperties", node)
	}
	if n, ok := number(node["maxProperties"]); ok && float64(len(obj)) > n {
		in.fail(ptr, "maxProperties", node)
	}
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case int64:
		return float64(x), true
	case float64:
		return x, true
	case int:
		return float64(x), true
	}
	return 0, false
}

func typeMatches(t, inst any) bool {
	switch x := t.(type) {
	case string:
		return isType(x, inst)
	case []any:
		for _, name := range x {
			if s, ok := name.(string); ok && isType(s, inst) {
				return true
			}
		}
	}
	return false
}

func isType(t string, inst any) bool {
	switch t {
	case "string":
		_, ok := inst.(string)
		return ok
	case "boolean":
		_, ok := inst.(bool)
		return ok
	case "null":
		return inst == nil
	case "array":
		_, ok := inst.([]any)
		return ok
	case "object":
		_, ok := inst.(map[string]any)
		return ok
	case "number":
		_, ok := number(inst)
		return ok
	case "integer":
		switch x := inst.(type) {
		case int64:
			return true
		case float64:
			return x == math.Trunc(x)
		}
	}
	return false
}

// jsonEqual compares JSON values the way JSON Schema does (1 == 1.0).
func jsonEqual(a, b any) bool {
	if na, ok := number(a); ok {
		nb, ok := number(b)
		return ok && na == nb
	}
	switch x := a.(type) {
	case string, bool, nil:
		return a == b
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if !jsonEqual(v, y[k]) {
				return false
			}
		}
		return true
	}
	return fmt.Sprint(a) == fmt.Sprint(b)
}
