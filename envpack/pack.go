package envpack

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	"github.com/rlmrun/rlmrun/schema"
)

// Manifest is the archive's first entry.
type Manifest struct {
	// Format is the archive format's version (1).
	Format int `json:"format"`
	// Spec is the spec's name in the archive.
	Spec        string `json:"spec"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// SpecVersion is the spec format's version.
	SpecVersion int `json:"spec_version"`
}

// FormatVersion is the archive format Pack writes and Unpack reads.
const FormatVersion = 1

// MediaType is an archive's media type (an OCI layer's).
const MediaType = "application/vnd.rlmrun.env.layer.v1.tar+gzip"

// epoch is every entry's modification time: fixed, so packing is
// reproducible (1980-01-01, the oldest time every archive format holds).
var epoch = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)

// Packed describes a written archive.
type Packed struct {
	// Digest is "sha256:" and the archive's SHA-256: the environment's
	// digest.
	Digest   string
	Size     int64
	Files    int
	Bytes    int64 // of file contents
	Manifest Manifest
}

// Pack writes the spec's archive to w: the manifest, then every file of
// Files in name order (folders before what they hold), with fixed times,
// owners and modes (0644, or 0755 for a file anyone may execute), gzip
// compressed without a name or time. skip names files never to pack.
func Pack(ctx context.Context, spec *schema.Spec, w io.Writer, skip ...string) (Packed, error) {
	files, err := Files(spec, skip...)
	if err != nil {
		return Packed{}, err
	}
	specName := ""
	abs := absPath(spec.File, "")
	for _, f := range files {
		if f.Path == abs {
			specName = f.Name
		}
	}
	if specName == "" {
		return Packed{}, fmt.Errorf("pack %s: the spec itself is excluded (package.exclude)", spec.File)
	}
	m := Manifest{Format: FormatVersion, Spec: specName, Name: spec.Name, Description: spec.Description, SpecVersion: spec.Version}
	return write(ctx, w, m, files)
}

func write(ctx context.Context, w io.Writer, m Manifest, files []File) (Packed, error) {
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	zw, err := gzip.NewWriterLevel(cw, gzip.BestSpeed)
	if err != nil {
		return Packed{}, err
	}
	tw := tar.NewWriter(zw)
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Packed{}, err
	}
	manifest = append(manifest, '\n')
	if err := tw.WriteHeader(header(ManifestName, tar.TypeReg, 0o644, int64(len(manifest)))); err != nil {
		return Packed{}, err
	}
	if _, err := tw.Write(manifest); err != nil {
		return Packed{}, err
	}
	p := Packed{Manifest: m, Files: len(files)}
	buf := make([]byte, 256<<10)
	for _, e := range entries(files) {
		if err := ctx.Err(); err != nil {
			return Packed{}, err
		}
		if e.dir {
			if err := tw.WriteHeader(header(e.name+"/", tar.TypeDir, 0o755, 0)); err != nil {
				return Packed{}, err
			}
			continue
		}
		if err := addFile(tw, e.file, buf); err != nil {
			return Packed{}, err
		}
		p.Bytes += e.file.Size
	}
	if err := tw.Close(); err != nil {
		return Packed{}, err
	}
	if err := zw.Close(); err != nil {
		return Packed{}, err
	}
	p.Size = cw.n
	p.Digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return p, nil
}

func addFile(tw *tar.Writer, f File, buf []byte) error {
	src, err := os.Open(f.Path)
	if err != nil {
		return fmt.Errorf("pack %s: %w", f.Path, err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return fmt.Errorf("pack %s: %w", f.Path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("pack %s: no longer a regular file", f.Path)
	}
	mode := int64(0o644)
	if st.Mode()&0o111 != 0 {
		mode = 0o755
	}
	if err := tw.WriteHeader(header(f.Name, tar.TypeReg, mode, st.Size())); err != nil {
		return err
	}
	// Exactly the size written in the header, even if the file changes.
	n, err := io.CopyBuffer(tw, io.LimitReader(src, st.Size()), buf)
	if err != nil {
		return fmt.Errorf("pack %s: %w", f.Path, err)
	}
	if n != st.Size() {
		return fmt.Errorf("pack %s: the file shrank while it was packed", f.Path)
	}
	return nil
}

func header(name string, typ byte, mode, size int64) *tar.Header {
	return &tar.Header{Typeflag: typ, Name: name, Mode: mode, Size: size, ModTime: epoch, Format: tar.FormatPAX}
}

type entry struct {
	name string
	dir  bool
	file File
}

// entries are the files with their folders, each folder just before what
// it holds.
func entries(files []File) []entry {
	dirs := map[string]bool{}
	var out []entry
	for _, f := range files {
		for d := path.Dir(f.Name); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			out = append(out, entry{name: d, dir: true})
		}
		out = append(out, entry{name: f.Name, file: f})
	}
	sort.SliceStable(out, func(i, j int) bool { return less(out[i].name, out[j].name) })
	return out
}

// less orders names as a walk would: a folder's entries right after it
// ("a", "a/b", "a-c"), whatever bytes follow.
func less(a, b string) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		if ca == '/' {
			return true
		}
		if cb == '/' {
			return false
		}
		return ca < cb
	}
	return len(a) < len(b)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
