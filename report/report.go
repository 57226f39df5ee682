// Package report renders a run as one self-contained HTML file: the run's
// summary and charts, a table of its rollouts to sort and filter, and each
// rollout's trajectory. Everything is inline (no server, no network, works
// from file://), and everything a model wrote travels as data the page's
// script puts in text nodes, never as markup.
package report

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rlmrun/rlmrun/internal/atomicfile"
	"github.com/rlmrun/rlmrun/runner"
)

// RunFile is the run's own record, next to results.jsonl.
const RunFile = "run.json"

// Run is what a run says of itself (run.json): what the results alone do
// not hold. It extends runner.RunInfo (run_id, name, spec), which the
// runner writes when the run starts and --resume reads.
type Run struct {
	// Spec is the spec's name; SpecFile the file as given.
	Spec     string `json:"name"`
	SpecFile string `json:"spec,omitempty"`
	Backend  string `json:"backend,omitempty"`
	// Language is the REPL's: bash or python.
	Language string `json:"language,omitempty"`
	RunID    string `json:"run_id"`
	// StartedAt and Seconds bound the whole run.
	StartedAt time.Time `json:"started_at"`
	Seconds   float64   `json:"seconds"`
	Digest    string    `json:"digest"`
	// Environment is the packed environment that ran, if one did.
	Environment *runner.Environment `json:"environment,omitempty"`
	Interrupted bool                `json:"interrupted,omitempty"`
	NotStarted  []string            `json:"not_started,omitempty"`
	// Golden is the comparison with a golden file, when there was one.
	Golden *Golden `json:"golden,omitempty"`
}

// Golden is a run's comparison with its golden file.
type Golden struct {
	File        string   `json:"file"`
	Differences []string `json:"differences"`
}

// WriteRun writes run.json into the run's folder, whole or not at all.
func WriteRun(dir string, r *Run) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, RunFile), func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
}

// Input is what a report shows.
type Input struct {
	Run     Run
	Results []*runner.Result
	// Listings are the files of each rollout's retained directory, by id.
	Listings map[string][]Entry
}

// Entry is one file of a retained directory.
type Entry struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	Dir  bool   `json:"dir,omitempty"`
	Link bool   `json:"link,omitempty"`
}

// Bounds of what a report reads.
const (
	maxResultLine  = 512 << 20
	maxListing     = 2000
	maxRunFileSize = 16 << 20
)

// Load reads a run: its folder (results.jsonl, run.json, the retained
// directories) or a results file. What run.json would say is worked out
// from the results when it is missing.
func Load(path string) (*Input, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	dir, results := path, filepath.Join(path, "results.jsonl")
	if !st.IsDir() {
		dir, results = filepath.Dir(path), path
	}
	in := &Input{Listings: map[string][]Entry{}}
	if in.Results, err = readResults(results); err != nil {
		return nil, err
	}
	if b, err := readSmall(filepath.Join(dir, RunFile), maxRunFileSize); err == nil {
		if err := json.Unmarshal(b, &in.Run); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, RunFile), err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	} else {
		in.Run = inferRun(in.Results)
	}
	for _, r := range in.Results {
		if d := r.Volatile.RetainedDir; d != "" {
			in.Listings[r.ID] = listDir(d)
		}
	}
	return in, nil
}

func readSmall(file string, limit int64) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("%s is larger than %d MiB", file, limit>>20)
	}
	return b, err
}

func readResults(file string) ([]*runner.Result, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxResultLine)
	var out []*runner.Result
	for n := 1; sc.Scan(); n++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var r runner.Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: not a result: %w", file, n, err)
		}
		out = append(out, &r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	return out, nil
}

// inferRun is run.json's content as far as the results tell it.
func inferRun(results []*runner.Result) Run {
	r := Run{Spec: "(unknown spec)"}
	var end time.Time
	for _, res := range results {
		v := res.Volatile
		if r.RunID == "" {
			r.RunID = v.RunID
		}
		if r.StartedAt.IsZero() || (!v.StartedAt.IsZero() && v.StartedAt.Before(r.StartedAt)) {
			r.StartedAt = v.StartedAt
		}
		if e := v.StartedAt.Add(time.Duration(v.Seconds * float64(time.Second))); e.After(end) {
			end = e
		}
		if r.Backend == "" && v.Facts != nil {
			r.Backend = v.Facts.Backend
		}
		if r.Environment == nil {
			r.Environment = v.Environment
		}
	}
	if !r.StartedAt.IsZero() {
		r.Seconds = end.Sub(r.StartedAt).Seconds()
	}
	r.Digest, _ = runner.Digest(results)
	return r
}

// listDir lists a retained directory without following links, bounded.
func listDir(dir string) []Entry {
	var out []Entry
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		if len(out) >= maxListing {
			return filepath.SkipAll
		}
		rel, _ := filepath.Rel(dir, p)
		e := Entry{Path: filepath.ToSlash(rel), Dir: d.IsDir(), Link: d.Type()&fs.ModeSymlink != 0}
		if info, err := d.Info(); err == nil && d.Type().IsRegular() {
			e.Size = info.Size()
		}
		out = append(out, e)
		return nil
	})
	return out
}

//go:embed assets/report.css
var css string

//go:embed assets/report.js
var js string

//go:embed assets/report.html
var page string

var pageTmpl = template.Must(template.New("report").Parse(page))

// summary is the run page's content, rendered on the host.
type summary struct {
	Run   Run
	Nonce string
	CSS   template.CSS
	JS    template.JS
	// Data are the page's data elements (see data).
	Data       template.HTML
	Title      string
	When       string
	Duration   string
	Statuses   []count
	Total      int
	Passed     int
	Failed     int
	MeanReward string
	Rewards    template.HTML // SVG
	Times      template.HTML // SVG
}

type count struct {
	Status string
	N      int
}

// blockSize is how many rollouts' details are compressed together: the
// page inflates one block to open one trajectory.
const blockSize = 100

// dataElements renders the page's data as two JSON script elements, which the
// browser never runs: a summary row per rollout, read at once for the
// table, and the full results (with the retained files' listings), gzipped
// and base64-encoded in blocks of blockSize, inflated only when a
// trajectory opens or a search needs them. encoding/json escapes <, > and
// &, so no byte of either can end its element.
func dataElements(in *Input) (template.HTML, error) {
	type detail struct {
		Result  *runner.Result `json:"result"`
		Listing []Entry        `json:"listing,omitempty"`
	}
	rows := make([][]any, len(in.Results))
	var blocks []string
	for start := 0; start < len(in.Results); start += blockSize {
		end := min(start+blockSize, len(in.Results))
		block := make([]detail, 0, end-start)
		for i := start; i < end; i++ {
			r := in.Results[i]
			block = append(block, detail{Result: r, Listing: in.Listings[r.ID]})
			var rw any
			if r.Reward != nil {
				rw = *r.Reward
			}
			answer := r.Answer
			if len(answer) > 300 {
				answer = strings.ToValidUTF8(answer[:300], "") + "…"
			}
			rows[i] = []any{r.ID, r.Status, r.Passed, rw, len(r.Turns), r.Volatile.Seconds, answer}
		}
		b, err := gzipJSON(block)
		if err != nil {
			return "", err
		}
		blocks = append(blocks, b)
	}
	summary, err := json.Marshal(map[string]any{"language": in.Run.Language, "block_size": blockSize, "rows": rows})
	if err != nil {
		return "", err
	}
	bj, err := json.Marshal(blocks)
	if err != nil {
		return "", err
	}
	return template.HTML(`<script type="application/json" id="rlmrun-summary">` + string(summary) + "</script>\n" +
		`<script type="application/json" id="rlmrun-blocks">` + string(bj) + "</script>"), nil
}

// Write renders the report.
func Write(w io.Writer, in *Input) error {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	data, err := dataElements(in)
	if err != nil {
		return err
	}
	s := summary{
		Run: in.Run, Nonce: hex.EncodeToString(nonce), CSS: template.CSS(css), JS: template.JS(js), Data: data,
		Title: in.Run.Spec, Total: len(in.Results),
	}
	if !in.Run.StartedAt.IsZero() {
		s.When = in.Run.StartedAt.UTC().Format("2006-01-02 15:04:05 UTC")
	}
	s.Duration = (time.Duration(in.Run.Seconds * float64(time.Second))).Round(10 * time.Millisecond).String()
	byStatus := map[string]int{}
	var rewards, seconds []float64
	for _, r := range in.Results {
		byStatus[r.Status]++
		if r.Passed {
			s.Passed++
		} else {
			s.Failed++
		}
		if r.Reward != nil {
			rewards = append(rewards, *r.Reward)
		}
		seconds = append(seconds, r.Volatile.Seconds)
	}
	for st, n := range byStatus {
		s.Statuses = append(s.Statuses, count{st, n})
	}
	sort.Slice(s.Statuses, func(i, j int) bool { return s.Statuses[i].Status < s.Statuses[j].Status })
	if len(rewards) > 0 {
		sum := 0.0
		for _, r := range rewards {
			sum += r
		}
		s.MeanReward = trimFloat(sum / float64(len(rewards)))
	}
	s.Rewards = template.HTML(histogram("Rewards", rewards, "reward", 10))
	s.Times = template.HTML(histogram("Time per rollout", seconds, "seconds", 20))
	return pageTmpl.Execute(w, s)
}

// gzipJSON gzips v's JSON and writes it as base64: a fraction of the size
// for results, which repeat a lot.
func gzipJSON(v any) (string, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return "", err
	}
	enc := json.NewEncoder(zw)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes()), nil
}

// label is an axis label: three significant digits.
func label(f float64) string { return strconv.FormatFloat(f, 'g', 3, 64) }

func trimFloat(f float64) string {
	s := fmt.Sprintf("%.4f", f)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "-0" {
		s = "0"
	}
	return s
}

// histogram draws values as an inline SVG bar chart (nothing but numbers
// and fixed words in it).
func histogram(title string, values []float64, unit string, maxBins int) string {
	const w, h, left, bottom, top = 420.0, 160.0, 36.0, 28.0, 18.0
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" viewBox="0 0 %g %g" width="%g" height="%g"><title>%s</title>`, w, h, w, h, template.HTMLEscapeString(title))
	fmt.Fprintf(&b, `<text x="%g" y="12" class="chart-title">%s</text>`, left, template.HTMLEscapeString(title))
	if len(values) == 0 {
		fmt.Fprintf(&b, `<text x="%g" y="%g" class="axis">no %s</text></svg>`, left, h/2, template.HTMLEscapeString(unit))
		return b.String()
	}
	lo, hi := values[0], values[0]
	for _, v := range values {
		lo, hi = math.Min(lo, v), math.Max(hi, v)
	}
	bins := maxBins
	distinct := map[float64]bool{}
	for _, v := range values {
		distinct[v] = true
		if len(distinct) > maxBins {
			break
		}
	}
	if len(distinct) <= maxBins {
		bins = len(distinct)
	}
	counts := make([]int, bins)
	labels := make([]string, bins)
	if len(distinct) <= maxBins {
		keys := make([]float64, 0, len(distinct))
		for k := range distinct {
			keys = append(keys, k)
		}
		sort.Float64s(keys)
		idx := map[float64]int{}
		for i, k := range keys {
			idx[k] = i
			labels[i] = label(k)
		}
		for _, v := range values {
			counts[idx[v]]++
		}
	} else {
		width := (hi - lo) / float64(bins)
		for _, v := range values {
			i := int((v - lo) / width)
			if i >= bins {
				i = bins - 1
			}
			counts[i]++
		}
		for i := range labels {
			labels[i] = label(lo + width*float64(i))
		}
	}
	most := 1
	for _, c := range counts {
		most = max(most, c)
	}
	plotW, plotH := w-left-8, h-bottom-top
	bw := plotW / float64(bins)
	for i, c := range counts {
		bh := plotH * float64(c) / float64(most)
		x := left + bw*float64(i)
		fmt.Fprintf(&b, `<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s %s: %d</title></rect>`,
			x+1, top+plotH-bh, math.Max(bw-2, 1), bh, template.HTMLEscapeString(unit), template.HTMLEscapeString(labels[i]), c)
		if bins <= 12 || i%(bins/6+1) == 0 {
			fmt.Fprintf(&b, `<text class="axis" x="%.1f" y="%g">%s</text>`, x+bw/2, h-bottom+14, template.HTMLEscapeString(labels[i]))
		}
	}
	fmt.Fprintf(&b, `<text class="axis" x="2" y="%g">%d</text><text class="axis" x="2" y="%g">0</text>`, top+8, most, top+plotH)
	fmt.Fprintf(&b, `<text class="axis unit" x="%g" y="%g">%s</text></svg>`, w-4, h-2, template.HTMLEscapeString(unit))
	return b.String()
}
