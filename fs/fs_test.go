package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// tree lists a directory as "path:content" (files) and "path/" (dirs).
func tree(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if info.IsDir() {
			out = append(out, rel+"/")
		} else {
			b, _ := os.ReadFile(p)
			out = append(out, rel+":"+string(b))
		}
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, " ")
}

func TestStagingMutationsInOrder(t *testing.T) {
	spec := t.TempDir()
	write(t, filepath.Join(spec, "ctx", "a.txt"), "A")
	write(t, filepath.Join(spec, "ctx", "sub", "b.txt"), "B")
	write(t, filepath.Join(spec, "data", "big.csv"), "1,2")
	st, err := New(Options{Dir: filepath.Join(t.TempDir(), "stage"), SourceDir: spec, MaxBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CopyContextDir(filepath.Join(spec, "ctx")); err != nil {
		t.Fatal(err)
	}
	muts := []Mutation{
		{Op: Write, Path: "notes/n.txt", Content: "note", Mode: 0o600},
		{Op: Mkdir, Path: "out"},
		{Op: Copy, From: "data/big.csv", Path: "big.csv"},
		{Op: Copy, From: "data", Path: "copied"},
		{Op: Remove, Path: "sub"},
		{Op: Chmod, Path: "big.csv", Mode: 0o640},
	}
	for _, m := range muts {
		if err := st.Apply(m); err != nil {
			t.Fatalf("%+v: %v", m, err)
		}
	}
	if got, want := tree(t, st.Dir()), "a.txt:A big.csv:1,2 copied/ copied/big.csv:1,2 notes/ notes/n.txt:note out/"; got != want {
		t.Fatalf("tree = %s\nwant   %s", got, want)
	}
	for path, mode := range map[string]os.FileMode{"notes/n.txt": 0o600, "big.csv": 0o640, "out": 0o755} {
		fi, err := os.Stat(filepath.Join(st.Dir(), path))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %v, want %v (%v)", path, fi.Mode().Perm(), mode, err)
		}
	}
	m, err := Measure(st.Dir())
	if err != nil || m.FileCount != 4 || m.TotalSize != int64(len("A1,21,2note")) {
		t.Errorf("Measure = %+v %v", m, err)
	}
	st.Freeze()
	if err := st.Apply(Mutation{Op: Mkdir, Path: "late"}); !errors.Is(err, ErrFrozen) {
		t.Errorf("mutation after freeze: %v", err)
	}
}

func TestStagingRefusals(t *testing.T) {
	spec := t.TempDir()
	write(t, filepath.Join(spec, "ctx", "a.txt"), strings.Repeat("x", 100))
	if err := os.MkdirAll(filepath.Join(spec, "withlink"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(spec, "withlink", "l")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		run  func(st *Staging) error
		want string
	}{
		{"byte cap", func(st *Staging) error { return st.CopyContextDir(filepath.Join(spec, "ctx")) }, "more than copy_max_bytes (50 bytes)"},
		{"symlink in context", func(st *Staging) error { return st.CopyContextDir(filepath.Join(spec, "withlink")) }, "contains a symlink (l)"},
		{"escape", func(st *Staging) error {
			return st.Apply(Mutation{Op: Write, Path: "../x", Content: "x"})
		}, "leaves the working directory"},
		{"remove missing", func(st *Staging) error {
			return st.Apply(Mutation{Op: Remove, Path: "nothing"})
		}, "nothing there to remove"},
		{"through a symlink", func(st *Staging) error {
			if err := os.Symlink("/tmp", filepath.Join(st.Dir(), "out")); err != nil {
				return err
			}
			return st.Apply(Mutation{Op: Write, Path: "out/x", Content: "x"})
		}, "goes through a symlink"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := New(Options{Dir: filepath.Join(t.TempDir(), "s"), SourceDir: spec, MaxBytes: 50})
			if err != nil {
				t.Fatal(err)
			}
			err = tc.run(st)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if tc.name == "byte cap" && tree(t, st.Dir()) != "" {
				t.Error("a refused copy left files behind")
			}
		})
	}
}

func TestContextData(t *testing.T) {
	for _, tc := range []struct {
		data any
		file string
		want string
	}{
		{"plain text", "context.txt", "plain text"},
		{map[string]any{"k": []any{1.0, "x"}}, "context.json", `{"k":[1,"x"]}`},
	} {
		st, _ := New(Options{Dir: t.TempDir()})
		if err := st.WriteContext(tc.data); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(st.Dir(), tc.file))
		if err != nil || string(b) != tc.want {
			t.Errorf("%s = %q, %v", tc.file, b, err)
		}
	}
}

func TestPackUnpackRoundTrip(t *testing.T) {
	src := t.TempDir()
	write(t, filepath.Join(src, "a.txt"), "A")
	write(t, filepath.Join(src, "d", "e", "b.txt"), "B")
	if err := os.Symlink("a.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(src, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	st, err := Pack(context.Background(), src, &buf)
	if err != nil || st.Files != 2 || st.Symlinks != 1 || strings.Join(st.Skipped, ",") != "fifo (a named pipe)" {
		t.Fatalf("Pack = %+v, %v", st, err)
	}
	dst := t.TempDir()
	if _, err := Unpack(context.Background(), &buf, dst, Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := tree(t, dst); got != "a.txt:A d/ d/e/ d/e/b.txt:B link:A" {
		t.Fatalf("round trip = %s", got)
	}
	if target, err := os.Readlink(filepath.Join(dst, "link")); err != nil || target != "a.txt" {
		t.Fatalf("link: %q %v", target, err)
	}
}

// A file that cannot be read is left out, the archive stays whole, and the
// error names it.
func TestPackReportsUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads everything")
	}
	src := t.TempDir()
	write(t, filepath.Join(src, "a.txt"), "A")
	write(t, filepath.Join(src, "secret.txt"), "S")
	if err := os.Chmod(filepath.Join(src, "secret.txt"), 0); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_, err := Pack(context.Background(), src, &buf)
	var ue *UnreadableError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "secret.txt: permission denied") {
		t.Fatalf("err = %v", err)
	}
	dst := t.TempDir()
	if _, err := Unpack(context.Background(), &buf, dst, Limits{}); err != nil {
		t.Fatalf("the archive is not whole: %v", err)
	}
	if got := tree(t, dst); got != "a.txt:A" {
		t.Fatalf("got %s", got)
	}
}

// archive builds a tar stream from entries.
func archive(t *testing.T, entries ...tar.Header) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		h := h
		body := strings.Repeat("x", int(h.Size))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func TestUnpackIsSafe(t *testing.T) {
	cases := []struct {
		name    string
		entries []tar.Header
		lim     Limits
		wantErr error
		skipped []string
	}{
		{"dot-dot", []tar.Header{{Name: "../evil", Typeflag: tar.TypeReg, Size: 1}}, Limits{}, ErrUnsafePath, nil},
		{"nested dot-dot", []tar.Header{{Name: "a/../../evil", Typeflag: tar.TypeReg, Size: 1}}, Limits{}, ErrUnsafePath, nil},
		{"absolute", []tar.Header{{Name: "/etc/evil", Typeflag: tar.TypeReg, Size: 1}}, Limits{}, ErrUnsafePath, nil},
		{"absolute symlink then write through it", []tar.Header{
			{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc"},
			{Name: "link/passwd", Typeflag: tar.TypeReg, Size: 1},
		}, Limits{}, nil, []string{"link -> /etc (an absolute symlink)"}},
		{"symlink out", []tar.Header{{Name: "d/out", Typeflag: tar.TypeSymlink, Linkname: "../../x"}}, Limits{}, nil, []string{"d/out -> ../../x (a symlink that leads out of the working directory)"}},
		{"write through an inside symlink", []tar.Header{
			{Name: "s", Typeflag: tar.TypeSymlink, Linkname: "."},
			{Name: "a", Typeflag: tar.TypeSymlink, Linkname: "s/.."},
			{Name: "a/evil", Typeflag: tar.TypeReg, Size: 1},
			{Name: "s/x", Typeflag: tar.TypeReg, Size: 1},
		}, Limits{}, nil, []string{"a/evil (under a, a symlink)", "s/x (under s, a symlink)"}},
		{"device", []tar.Header{{Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}}, Limits{}, nil, []string{"dev (a device)"}},
		{"fifo", []tar.Header{{Name: "p", Typeflag: tar.TypeFifo}}, Limits{}, nil, []string{"p (a named pipe)"}},
		{"hard link", []tar.Header{{Name: "hl", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}}, Limits{}, nil, []string{"hl (a hard link)"}},
		{"byte limit", []tar.Header{{Name: "a", Typeflag: tar.TypeReg, Size: 10}, {Name: "b", Typeflag: tar.TypeReg, Size: 10}}, Limits{MaxBytes: 15}, ErrTooLarge, nil},
		{"file limit", []tar.Header{{Name: "a", Typeflag: tar.TypeReg}, {Name: "b", Typeflag: tar.TypeReg}, {Name: "c", Typeflag: tar.TypeReg}}, Limits{MaxFiles: 2}, ErrTooLarge, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "dst")
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			st, err := Unpack(context.Background(), archive(t, tc.entries...), dst, tc.lim)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if strings.Join(st.Skipped, ",") != strings.Join(tc.skipped, ",") {
				t.Errorf("skipped = %v, want %v", st.Skipped, tc.skipped)
			}
			// Nothing may appear outside dst, and every symlink inside it
			// stays inside.
			if entries, _ := os.ReadDir(parent); len(entries) != 1 {
				t.Errorf("extraction wrote outside its directory: %v", entries)
			}
			_ = filepath.Walk(dst, func(p string, info os.FileInfo, err error) error {
				if err == nil && info.Mode()&os.ModeSymlink != 0 {
					target, _ := os.Readlink(p)
					if filepath.IsAbs(target) || strings.HasPrefix(filepath.Join(filepath.Dir(p), target), parent+"/") && !strings.HasPrefix(filepath.Join(filepath.Dir(p), target), dst) {
						t.Errorf("symlink %s -> %s leads out", p, target)
					}
				}
				return nil
			})
		})
	}
}
