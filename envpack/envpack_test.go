package envpack

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/schema"
)

// env writes a small environment: a spec with a context folder, a tool, a
// helper the tool imports (package.include) and files that must stay out.
func env(t *testing.T, dir string, extra string) string {
	t.Helper()
	files := map[string]string{
		"ctx/a.txt":           "alpha\n",
		"ctx/sub/b.txt":       "beta\n",
		"tools/tool.py":       "#!/usr/bin/python3\nimport helper\n",
		"tools/helper.py":     "X = 1\n",
		"tools/notes.md":      "not packed\n",
		"data/big.bin":        strings.Repeat("x", 1000),
		"data/skip.tmp":       "excluded\n",
		"rlmrun-out/r/x.json": "a result\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tools/tool.py"), 0o700); err != nil {
		t.Fatal(err)
	}
	spec := `version: 1
name: packed
description: A packed environment.
filesystem: {context_dir: ctx}
package:
  include: ["tools/*.py", "data/**"]
  exclude: ["**/*.tmp"]
root_tools:
  - name: t
    description: a tool
    parameters: {type: object, properties: {}}
    run: [tools/tool.py]
rollouts: [{id: r, prompt: p, turns: [{code: "ls"}]}]
` + extra
	p := filepath.Join(dir, "spec.yaml")
	if err := os.WriteFile(p, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t *testing.T, file string) *schema.Spec {
	t.Helper()
	s, err := schema.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pack(t *testing.T, file string) ([]byte, Packed) {
	t.Helper()
	var buf bytes.Buffer
	p, err := Pack(context.Background(), load(t, file), &buf)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	if want := "sha256:" + hex.EncodeToString(sum[:]); p.Digest != want || p.Size != int64(buf.Len()) {
		t.Errorf("Packed = %+v, want digest %s size %d", p, want, buf.Len())
	}
	return buf.Bytes(), p
}

func names(t *testing.T, archive []byte) []string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var out []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || !h.ModTime.Equal(epoch) {
			t.Errorf("%s: owner %d:%d %q time %s, want fixed", h.Name, h.Uid, h.Gid, h.Uname, h.ModTime)
		}
		out = append(out, h.Name+" "+strings.TrimPrefix(os.FileMode(h.Mode).String(), "-"))
	}
}

func TestPackHoldsWhatTheSpecUses(t *testing.T) {
	archive, p := pack(t, env(t, t.TempDir(), ""))
	got := strings.Join(names(t, archive), "\n")
	want := strings.Join([]string{
		"rlmrun-env.json rw-r--r--",
		"ctx/ rwxr-xr-x",
		"ctx/a.txt rw-r--r--",
		"ctx/sub/ rwxr-xr-x",
		"ctx/sub/b.txt rw-r--r--",
		"data/ rwxr-xr-x",
		"data/big.bin rw-r--r--",
		"spec.yaml rw-r--r--",
		"tools/ rwxr-xr-x",
		"tools/helper.py rw-r--r--",
		"tools/tool.py rwxr-xr-x",
	}, "\n")
	if got != want {
		t.Errorf("entries:\n%s\nwant:\n%s", got, want)
	}
	if p.Files != 6 || p.Manifest.Spec != "spec.yaml" || p.Manifest.Name != "packed" {
		t.Errorf("packed %+v", p)
	}
}

// TestPackIsReproducible: the same folder elsewhere, with other times,
// modes, umask and creation order, packs to the same bytes.
func TestPackIsReproducible(t *testing.T) {
	_, first := pack(t, env(t, t.TempDir(), ""))
	old := syscall.Umask(0o077)
	dir := t.TempDir()
	spec := env(t, dir, "")
	syscall.Umask(old)
	later := time.Now().Add(-72 * time.Hour)
	_ = filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, later, later) })
	if err := os.Chmod(filepath.Join(dir, "tools/tool.py"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, second := pack(t, spec)
	if first.Digest != second.Digest {
		t.Errorf("digests differ: %s vs %s", first.Digest, second.Digest)
	}
	if err := os.WriteFile(filepath.Join(dir, "ctx/a.txt"), []byte("alpha!\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, third := pack(t, spec); third.Digest == first.Digest {
		t.Errorf("a changed file kept the digest %s", third.Digest)
	}
}

func TestPackRefuses(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string) string
		want  string
	}{
		{"a context outside the folder", func(t *testing.T, dir string) string {
			outside := t.TempDir()
			p := env(t, dir, "")
			s, _ := os.ReadFile(p)
			s = bytes.Replace(s, []byte("context_dir: ctx"), []byte("context_dir: "+outside), 1)
			_ = os.WriteFile(p, s, 0o644)
			return p
		}, "filesystem.context_dir: " + "$OUT is outside the spec's folder"},
		{"a symlink", func(t *testing.T, dir string) string {
			p := env(t, dir, "")
			_ = os.Symlink("/etc/passwd", filepath.Join(dir, "data/passwd"))
			return p
		}, "data/passwd is a symlink"},
		{"a glob that matches nothing", func(t *testing.T, dir string) string {
			p := env(t, dir, "")
			s, _ := os.ReadFile(p)
			s = bytes.Replace(s, []byte(`"data/**"`), []byte(`"nothing/*.so"`), 1)
			_ = os.WriteFile(p, s, 0o644)
			return p
		}, `package.include[1]: "nothing/*.so" matches no file`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			file := tc.setup(t, dir)
			spec, err := schema.Load(file)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Pack(context.Background(), spec, io.Discard)
			want := tc.want
			if strings.Contains(want, "$OUT") {
				want = strings.TrimPrefix(want[strings.Index(want, "$OUT")+4:], "")
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("err = %v, want it to say %q", err, want)
			}
		})
	}
}

func TestCacheOpen(t *testing.T) {
	src := t.TempDir()
	archive, p := pack(t, env(t, src, ""))
	file := filepath.Join(t.TempDir(), "env.tar.gz")
	if err := os.WriteFile(file, archive, 0o644); err != nil {
		t.Fatal(err)
	}
	c := &Cache{Dir: filepath.Join(t.TempDir(), "cache")}
	e, err := c.Open(context.Background(), file)
	if err != nil {
		t.Fatal(err)
	}
	if e.Digest != p.Digest || e.Spec != filepath.Join(e.Dir, "spec.yaml") || !strings.HasPrefix(e.Dir, c.Dir) {
		t.Errorf("env %+v", e)
	}
	st, err := os.Stat(filepath.Join(e.Dir, "tools/tool.py"))
	if err != nil || st.Mode().Perm()&0o100 == 0 {
		t.Errorf("the tool lost its execute bit: %v %v", st, err)
	}
	// The unpacked spec loads and packs to the same digest.
	var again bytes.Buffer
	p2, err := Pack(context.Background(), load(t, e.Spec), &again)
	if err != nil || p2.Digest != p.Digest {
		t.Errorf("repacked from the cache: %s %v, want %s", p2.Digest, err, p.Digest)
	}
	// Second open: found by digest.
	if e2, err := c.Open(context.Background(), file); err != nil || e2.Dir != e.Dir {
		t.Errorf("second open: %+v %v", e2, err)
	}
	out := filepath.Join(t.TempDir(), "copy")
	if err := e.CopyTo(out); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "ctx/sub/b.txt")); err != nil || string(b) != "beta\n" {
		t.Errorf("copied: %q %v", b, err)
	}
	if err := e.CopyTo(out); err == nil {
		t.Error("copied into a folder that is not empty")
	}
	if err := c.Remember("sha256:"+strings.Repeat("a", 64), e.Digest); err != nil {
		t.Fatal(err)
	}
	if got, ok := c.Recall("sha256:" + strings.Repeat("a", 64)); !ok || got.Dir != e.Dir {
		t.Errorf("recall: %+v %v", got, ok)
	}
}

// hostile builds a gzipped tar of the given entries with a valid manifest
// (unless one is given).
func hostile(t *testing.T, hdrs []tar.Header, bodies []string) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for i, h := range hdrs {
		h := h
		h.Size = int64(len(bodies[i]))
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(bodies[i])); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	zw.Close()
	sum := sha256.Sum256(buf.Bytes())
	return buf.Bytes(), "sha256:" + hex.EncodeToString(sum[:])
}

func TestCacheRefusesHostileArchives(t *testing.T) {
	manifest := `{"format":1,"spec":"spec.yaml","name":"x","spec_version":1}`
	reg := func(name string) tar.Header { return tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644} }
	cases := []struct {
		name   string
		hdrs   []tar.Header
		bodies []string
		tamper bool
		want   string
	}{
		{"an escape", []tar.Header{reg(ManifestName), reg("spec.yaml"), reg("../escape")}, []string{manifest, "x", "x"}, false, "unsafe path"},
		{"a symlink", []tar.Header{reg(ManifestName), reg("spec.yaml"), {Name: "l", Typeflag: tar.TypeSymlink, Linkname: "spec.yaml"}}, []string{manifest, "x", ""}, false, "links or special files"},
		{"a spec outside", []tar.Header{reg(ManifestName), reg("spec.yaml")}, []string{`{"format":1,"spec":"../../etc/passwd"}`, "x"}, false, `names the spec "../../etc/passwd"`},
		{"no manifest", []tar.Header{reg("spec.yaml")}, []string{"x"}, false, "no " + ManifestName},
		{"a newer format", []tar.Header{reg(ManifestName), reg("spec.yaml")}, []string{`{"format":2,"spec":"spec.yaml"}`, "x"}, false, "archive format 2"},
		{"tampered bytes", []tar.Header{reg(ManifestName), reg("spec.yaml")}, []string{manifest, "x"}, true, "digest mismatch"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, digest := hostile(t, tc.hdrs, tc.bodies)
			if tc.tamper {
				digest = "sha256:" + strings.Repeat("0", 64)
			}
			c := &Cache{Dir: t.TempDir()}
			_, err := c.Add(context.Background(), bytes.NewReader(data), digest)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if tc.tamper && !errors.Is(err, ErrDigestMismatch) {
				t.Errorf("not ErrDigestMismatch: %v", err)
			}
			// Nothing is left in the cache.
			left, _ := filepath.Glob(filepath.Join(c.Dir, "envs", "sha256", "*"))
			if len(left) > 0 {
				t.Errorf("left in the cache: %v", left)
			}
		})
	}
}

func TestMatchGlob(t *testing.T) {
	cases := []struct {
		glob, name string
		want       bool
	}{
		{"tools/*.py", "tools/a.py", true},
		{"tools/*.py", "tools/sub/a.py", false},
		{"data/**", "data/a/b/c", true},
		{"**/*.tmp", "x.tmp", true},
		{"**/*.tmp", "a/b/x.tmp", true},
		{"**", "anything/at/all", true},
		{"a/**/z", "a/z", true},
		{"a/**/z", "a/b/c/z", true},
		{"a/**/z", "a/b/c/y", false},
	}
	for _, tc := range cases {
		if got := matchGlob(tc.glob, tc.name); got != tc.want {
			t.Errorf("matchGlob(%q, %q) = %v", tc.glob, tc.name, got)
		}
	}
}
