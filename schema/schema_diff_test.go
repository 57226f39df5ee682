package schema

import (
	"bytes"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v5"
)

// The spec is validated by a small interpreter (validate.go); these tests
// hold it to santhosh-tekuri/jsonschema/v5, the reference implementation.

func referenceSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	if err := c.AddResource(SchemaID, bytes.NewReader(schemaJSON)); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(SchemaID)
	if err != nil {
		t.Fatalf("the embedded schema is not a valid draft 2020-12 schema: %v", err)
	}
	return s
}

// TestSchemaUsesOnlySupportedKeywords keeps the schema within what the
// interpreter implements: a new keyword must be implemented first.
func TestSchemaUsesOnlySupportedKeywords(t *testing.T) {
	var raw map[string]any
	if err := json.Unmarshal(schemaJSON, &raw); err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, k := range supportedKeywords() {
		known[k] = true
	}
	var walk func(node map[string]any, at string)
	walk = func(node map[string]any, at string) {
		for k, v := range node {
			if !known[k] && !strings.HasPrefix(k, "x-") {
				t.Errorf("%s uses keyword %q, which the interpreter does not implement", at, k)
			}
			switch k {
			case "properties", "$defs":
				for name, sub := range v.(map[string]any) {
					walk(sub.(map[string]any), at+"/"+k+"/"+name)
				}
			case "items", "propertyNames":
				walk(v.(map[string]any), at+"/"+k)
			case "additionalProperties":
				if m, ok := v.(map[string]any); ok {
					walk(m, at+"/"+k)
				}
			}
		}
	}
	walk(raw, "#")
}

// treeOf converts YAML to the loader's JSON-like tree; ok is false when the
// YAML itself is rejected.
func treeOf(data []byte) (any, bool) {
	doc, probs := parseYAML(data)
	if len(probs) > 0 || doc == nil || len(doc.Content) == 0 {
		return nil, false
	}
	b := &treeBuilder{ix: newPositionIx(), bad: map[string]bool{}}
	tree, ok := b.build(doc.Content[0], "", "", Pos{})
	return tree, ok && len(b.errs) == 0
}

// agree checks both validators give the same verdict and fail at the same
// instance locations.
func agree(t testing.TB, ref *jsonschema.Schema, raw map[string]any, tree any, name string) {
	t.Helper()
	in := newInterp(raw)
	in.validate(raw, tree, "")
	mine := map[string]bool{}
	for _, v := range in.out {
		if v.kw == "propertyNames" {
			continue
		}
		mine[v.ptr] = true
	}
	theirs := map[string]bool{}
	err := ref.Validate(tree)
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			if !strings.Contains(e.KeywordLocation, "propertyNames") {
				// jsonschema/v5 percent-encodes instance locations.
				loc, err := url.PathUnescape(e.InstanceLocation)
				if err != nil {
					loc = e.InstanceLocation
				}
				theirs[loc] = true
			}
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	if verr, ok := err.(*jsonschema.ValidationError); ok {
		walk(verr)
	}
	if (err == nil) != (len(in.out) == 0) || !sameKeys(mine, theirs) {
		t.Errorf("%s: interpreter and jsonschema/v5 disagree:\n interpreter fails at %v\n jsonschema/v5 fails at %v (%v)", name, keys(mine), keys(theirs), err)
	}
}

func sameKeys(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestInterpreterAgreesWithReference(t *testing.T) {
	ref := referenceSchema(t)
	var raw map[string]any
	if err := json.Unmarshal(schemaJSON, &raw); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("testdata/*/*.yaml")
	examples, _ := filepath.Glob("../examples/*.yaml")
	more, _ := filepath.Glob("../examples/*/*.yaml")
	files = append(append(files, examples...), more...)
	checked := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		tree, ok := treeOf(data)
		if !ok {
			continue
		}
		agree(t, ref, raw, tree, f)
		checked++
	}
	if checked < 15 {
		t.Fatalf("only %d documents compared", checked)
	}
}
