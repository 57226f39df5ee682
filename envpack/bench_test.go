package envpack

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/rlmrun/rlmrun/schema"
)

// bigEnv writes a spec whose context is files × size bytes of text-like
// data (base64 of random bytes: as compressible as typical context files).
func bigEnv(b *testing.B, files, size int) string {
	b.Helper()
	dir := b.TempDir()
	rng := rand.New(rand.NewSource(1))
	raw := make([]byte, size*3/4+3)
	for i := 0; i < files; i++ {
		rng.Read(raw)
		p := filepath.Join(dir, "ctx", fmt.Sprintf("d%02d", i%100), fmt.Sprintf("f%05d.txt", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(raw)[:size]), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	spec := filepath.Join(dir, "spec.yaml")
	if err := os.WriteFile(spec, []byte("version: 1\nname: big\nfilesystem: {context_dir: ctx, copy_max_bytes: 1000000000}\nrollouts: [{id: r, turns: []}]\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	return spec
}

// BenchmarkPack packs a 10,000-file, 100 MB context (the target:
// at most 2 s), beside its floor, the bare tools on the same folder:
// `tar -c | gzip -1`.
//
//	go test ./envpack -run '^$' -bench Pack -benchtime 3x -count 5
func BenchmarkPack(b *testing.B) {
	file := bigEnv(b, 10_000, 10_000)
	spec, err := schema.Load(file)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("rlmrun", func(b *testing.B) {
		b.SetBytes(100_000_000)
		for i := 0; i < b.N; i++ {
			if _, err := Pack(context.Background(), spec, io.Discard); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("tar-gzip-floor", func(b *testing.B) {
		b.SetBytes(100_000_000)
		for i := 0; i < b.N; i++ {
			cmd := exec.Command("sh", "-c", `tar -C "$1" -cf - . | gzip -1 > /dev/null`, "sh", filepath.Dir(file))
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
		}
	})
}
