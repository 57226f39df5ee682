package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/rlmrun/rlmrun/internal/registrytest"
)

// BenchmarkRunByReference: what running a packed environment adds over
// running its folder, from a warm cache (the target: at most 20 ms).
// The spec's one rollout runs no code, so the run itself is as short as
// runs get and the difference is the loading: archive (hashing it),
// oci://REF:TAG (one manifest HEAD to the registry), oci://REF@DIGEST (no
// network at all).
//
//	go test ./cmd/rlmrun -run '^$' -bench RunByReference -benchtime 50x -count 5
func BenchmarkRunByReference(b *testing.B) {
	b.Setenv("RLMRUN_CACHE_DIR", filepath.Join(b.TempDir(), "cache"))
	b.Setenv("RLMRUN_TRUST_FILE", filepath.Join(b.TempDir(), "trusted"))
	b.Setenv("DOCKER_CONFIG", b.TempDir())
	dir := b.TempDir()
	spec := filepath.Join(dir, "spec.yaml")
	if err := os.MkdirAll(filepath.Join(dir, "ctx"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ctx", "a.txt"), []byte("a\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(spec, []byte("version: 1\nname: bench\nfilesystem: {context_dir: ctx}\nrollouts: [{id: r, turns: []}]\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	reg := registrytest.Start(b, registrytest.Options{})
	cli := func(args ...string) string {
		var out, errb bytes.Buffer
		if code := runMain(append([]string{"rlmrun"}, args...), &out, &errb); code != 0 {
			b.Fatalf("rlmrun %v: exit %d\n%s%s", args, code, out.String(), errb.String())
		}
		return out.String()
	}
	archive := filepath.Join(b.TempDir(), "bench.tar.gz")
	cli("pack", "-o", archive, spec)
	ref := reg.Host + "/bench/env:1"
	pushed := cli("push", "--insecure-registry", reg.Host, spec, ref)
	pinned := regexp.MustCompile(`(?m)^(\S+@sha256:[0-9a-f]{64})$`).FindStringSubmatch(pushed)[1]
	out := b.TempDir()
	for _, tc := range []struct{ name, what string }{
		{"folder", spec},
		{"archive", archive},
		{"oci-tag", "oci://" + ref},
		{"oci-digest", "oci://" + pinned},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cli("run", "-q", "--insecure-registry", reg.Host, "--out-dir", out, tc.what) // warm the cache
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cli("run", "-q", "--insecure-registry", reg.Host, "--out-dir", out, tc.what)
			}
		})
	}
}
