package runner

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/rlmrun/rlmrun/internal/atomicfile"
	"github.com/rlmrun/rlmrun/internal/safetext"
)

// Deterministic is a result's reproducible part: everything but Volatile,
// as canonical JSON.
func Deterministic(r *Result) ([]byte, error) {
	c := *r
	c.Volatile = Volatile{}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	// Re-encoding through a generic value sorts every object's keys, and
	// drops the empty "volatile" the struct keeps.
	var v map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	delete(v, "volatile")
	if calls, ok := v["calls"].([]any); ok {
		for _, c := range calls {
			dropKeys(c, volatileCallKeys())
		}
	}
	return json.Marshal(v)
}

// dropKeys removes keys from every object inside v.
func dropKeys(v any, keys []string) {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range keys {
			delete(x, k)
		}
		for _, e := range x {
			dropKeys(e, keys)
		}
	case []any:
		for _, e := range x {
			dropKeys(e, keys)
		}
	}
}

// GoldenLines are the deterministic records of a run, one per rollout,
// sorted by id: the golden file's content.
func GoldenLines(results []*Result) ([]byte, error) {
	sorted := append([]*Result(nil), results...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })
	var b bytes.Buffer
	for _, r := range sorted {
		d, err := Deterministic(r)
		if err != nil {
			return nil, err
		}
		b.Write(d)
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

// Digest is the SHA-256 of GoldenLines: equal across runs and backends for
// the same spec.
func Digest(results []*Result) (string, error) {
	lines, err := GoldenLines(results)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(lines)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// WriteGolden writes the golden file.
func WriteGolden(path string, results []*Result) error {
	lines, err := GoldenLines(results)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, func(w io.Writer) error { _, err := w.Write(lines); return err }); err != nil {
		return fmt.Errorf("write golden file: %w", err)
	}
	return nil
}

// Diff is one difference from the golden file.
type Diff struct {
	Rollout  string
	Field    string // e.g. turns[3].output
	Expected string
	Got      string
}

// String renders the difference for a terminal (escaped: the values are
// what rollouts wrote).
func (d Diff) String() string {
	e := safetext.Line
	switch {
	case d.Field == "":
		return fmt.Sprintf("%s: %s", e(d.Rollout), e(d.Got))
	default:
		return fmt.Sprintf("%s: %s:\n    expected %s\n    got      %s", e(d.Rollout), e(d.Field), e(d.Expected), e(d.Got))
	}
}

// CompareGolden compares the run's deterministic records with a golden file.
func CompareGolden(path string, results []*Result) ([]Diff, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read golden file: %w", err)
	}
	defer f.Close()
	want, err := readRecords(f)
	if err != nil {
		return nil, fmt.Errorf("golden file %s: %w", path, err)
	}
	lines, err := GoldenLines(results)
	if err != nil {
		return nil, err
	}
	got, err := readRecords(bytes.NewReader(lines))
	if err != nil {
		return nil, err
	}
	var diffs []Diff
	for _, id := range unionKeys(want, got) {
		w, inWant := want[id]
		g, inGot := got[id]
		switch {
		case !inGot:
			diffs = append(diffs, Diff{Rollout: id, Got: "missing from this run"})
		case !inWant:
			diffs = append(diffs, Diff{Rollout: id, Got: "not in the golden file"})
		default:
			diffValues(id, "", w, g, &diffs)
		}
	}
	return diffs, nil
}

func readRecords(r io.Reader) (map[string]any, error) {
	out := map[string]any{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	for n := 1; sc.Scan(); n++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var v map[string]any
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		id, _ := v["id"].(string)
		out[id] = v
	}
	return out, sc.Err()
}

// diffValues walks two JSON values and records where they differ.
func diffValues(id, path string, want, got any, out *[]Diff) {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			break
		}
		for _, k := range unionKeys(w, g) {
			p := k
			if path != "" {
				p = path + "." + k
			}
			diffValues(id, p, w[k], g[k], out)
		}
		return
	case []any:
		g, ok := got.([]any)
		if !ok {
			break
		}
		for i := 0; i < max(len(w), len(g)); i++ {
			p := fmt.Sprintf("%s[%d]", path, i)
			switch {
			case i >= len(w):
				*out = append(*out, Diff{Rollout: id, Field: p, Expected: "(nothing)", Got: show(g[i])})
			case i >= len(g):
				*out = append(*out, Diff{Rollout: id, Field: p, Expected: show(w[i]), Got: "(nothing)"})
			default:
				diffValues(id, p, w[i], g[i], out)
			}
		}
		return
	}
	wb, _ := json.Marshal(want)
	gb, _ := json.Marshal(got)
	if bytes.Equal(wb, gb) {
		return
	}
	ws, wok := want.(string)
	gs, gok := got.(string)
	if wok && gok {
		// Long texts (cell outputs) are shown around their first difference.
		at := 0
		for at < len(ws) && at < len(gs) && ws[at] == gs[at] {
			at++
		}
		*out = append(*out, Diff{Rollout: id, Field: path, Expected: window(ws, at), Got: window(gs, at)})
		return
	}
	*out = append(*out, Diff{Rollout: id, Field: path, Expected: show(want), Got: show(got)})
}

// unionKeys are the keys of a and b, sorted.
func unionKeys(a, b map[string]any) []string {
	keys := slices.Collect(maps.Keys(a))
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// window quotes s around byte offset at.
func window(s string, at int) string {
	const span = 60
	from, to := max(0, at-span), min(len(s), at+span)
	out := strconv.Quote(s[from:to])
	if from > 0 {
		out = "…" + out
	}
	if to < len(s) {
		out += "…"
	}
	return out
}

// show renders a value for a diff.
func show(v any) string {
	if v == nil {
		return "(nothing)"
	}
	b, _ := json.Marshal(v)
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
