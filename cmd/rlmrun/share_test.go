package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rlmrun/rlmrun/internal/registrytest"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

var digestLine = regexp.MustCompile(`(?m)^digest: (sha256:[0-9a-f]{64})$`)

// lastDigest is the last "digest: ..." line of a command's output.
func lastDigest(t *testing.T, out string) string {
	t.Helper()
	m := digestLine.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		t.Fatalf("no digest line in:\n%s", out)
	}
	return m[len(m)-1][1]
}

// shareEnv points the cache and the trust file at fresh folders.
func shareEnv(t *testing.T) (cache string) {
	t.Helper()
	cache = filepath.Join(t.TempDir(), "cache")
	t.Setenv("RLMRUN_CACHE_DIR", cache)
	t.Setenv("RLMRUN_TRUST_FILE", filepath.Join(t.TempDir(), "trusted"))
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	return cache
}

// runDigest runs what and returns the digest of its results and its
// results file's records.
func runDigest(t *testing.T, extra []string, what string) (string, []map[string]any) {
	t.Helper()
	out := t.TempDir()
	args := append([]string{"run", "--agent-binary", rlmrunBin, "--out-dir", out, "-q"}, extra...)
	code, stdout, stderr := runCLI(t, append(args, what)...)
	if code != 0 {
		t.Fatalf("run %s: exit %d\n%s%s", what, code, stdout, stderr)
	}
	results, _ := filepath.Glob(filepath.Join(out, "*", "results.jsonl"))
	if len(results) != 1 {
		t.Fatalf("results: %v", results)
	}
	return lastDigest(t, stdout), readResults(t, results[0])
}

const secrets = "../../examples/rlm-secrets/bash.yaml"

// TestPackAndRunArchive: the archive of an example runs to the same
// results as its folder, records where it came from, and packs the same
// bytes twice.
func TestPackAndRunArchive(t *testing.T) {
	cache := shareEnv(t)
	dir := t.TempDir()
	archive := filepath.Join(dir, "secrets.tar.gz")
	code, stdout, stderr := runCLI(t, "pack", "-o", archive, secrets)
	if code != 0 {
		t.Fatalf("pack: exit %d\n%s%s", code, stdout, stderr)
	}
	packed := lastDigest(t, stdout)
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(data); "sha256:"+hex.EncodeToString(sum[:]) != packed {
		t.Errorf("printed digest %s is not the archive's", packed)
	}
	again := filepath.Join(dir, "again.tar.gz")
	if code, stdout, _ := runCLI(t, "pack", "-o", again, secrets); code != 0 || lastDigest(t, stdout) != packed {
		t.Errorf("packing twice: exit %d, %s", code, stdout)
	}
	folder, _ := runDigest(t, nil, secrets)
	fromArchive, results := runDigest(t, nil, archive)
	if fromArchive != folder {
		t.Errorf("the archive's results digest %s, the folder's %s", fromArchive, folder)
	}
	env, _ := results[0]["volatile"].(map[string]any)["environment"].(map[string]any)
	if env["ref"] != archive || env["digest"] != packed {
		t.Errorf("results record the environment %v, want %s %s", env, archive, packed)
	}
	// Unpacked into the cache, by digest; nothing next to the archive.
	if _, err := os.Stat(filepath.Join(cache, "envs", "sha256", strings.TrimPrefix(packed, "sha256:"), "bash.yaml")); err != nil {
		t.Errorf("not in the cache: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 2 {
		t.Errorf("next to the archive: %v", left)
	}
	if code, stdout, stderr := runCLI(t, "validate", archive); code != 0 || !strings.Contains(stdout, "ok: "+archive) {
		t.Errorf("validate the archive: exit %d\n%s%s", code, stdout, stderr)
	}
	// The shortcut: rlmrun ENV.tar.gz is rlmrun run ENV.tar.gz.
	if code, stdout, stderr := runCLI(t, archive, "--dry-run"); code != 0 || !strings.Contains(stdout, "plan: rlm-secrets-bash") {
		t.Errorf("rlmrun ENV.tar.gz --dry-run: exit %d\n%s%s", code, stdout, stderr)
	}
}

func TestPackRefuses(t *testing.T) {
	shareEnv(t)
	abs, _ := filepath.Abs("../../examples/rlm-secrets/context")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"the archive inside the context", []string{"pack", "-o", filepath.Join(abs, "x.tar.gz"), secrets}, "would overwrite"},
		{"a spec whose files lie outside its folder", []string{"pack", "-o", filepath.Join(t.TempDir(), "x.tar.gz"), "../../examples/real-model/rlm-secrets.yaml"}, "is outside the spec's folder"},
		{"a registry reference", []string{"pack", "oci://127.0.0.1:1/x:1"}, "already in a registry"},
		{"a folder of several specs", []string{"pack", "../../examples/rlm-secrets"}, "name one of its specs (bash-sandbox.yaml, bash.yaml, python-sandbox.yaml, python.yaml)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.args...)
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, want an error saying %q\n%s%s", code, tc.want, stdout, stderr)
			}
		})
	}
}

// TestHostileArchive: an archive that climbs out of its folder is refused
// and writes nothing outside the cache.
func TestHostileArchive(t *testing.T) {
	cache := shareEnv(t)
	dir := t.TempDir()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range []struct{ name, body string }{
		{"rlmrun-env.json", `{"format":1,"spec":"spec.yaml","name":"x","spec_version":1}`},
		{"spec.yaml", "version: 1\nname: x\nrollouts: [{id: r, turns: []}]\n"},
		{"../../escaped.txt", "gotcha"},
	} {
		_ = tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.body))})
		_, _ = tw.Write([]byte(e.body))
	}
	tw.Close()
	zw.Close()
	archive := filepath.Join(dir, "evil.tar.gz")
	if err := os.WriteFile(archive, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "run", "--out-dir", t.TempDir(), archive)
	if code != 1 || !strings.Contains(stderr, "unsafe path") {
		t.Errorf("exit %d, want 1 and an unsafe path\n%s%s", code, stdout, stderr)
	}
	for _, d := range []string{dir, cache, filepath.Join(cache, "envs"), filepath.Join(cache, "envs", "sha256")} {
		if _, err := os.Stat(filepath.Join(d, "escaped.txt")); err == nil {
			t.Errorf("the archive wrote %s", filepath.Join(d, "escaped.txt"))
		}
	}
	if left, _ := filepath.Glob(filepath.Join(cache, "envs", "sha256", "*")); len(left) > 0 {
		t.Errorf("the cache kept %v", left)
	}
}

func TestExtendsThroughTheCLI(t *testing.T) {
	code, stdout, stderr := runCLI(t, "validate", "--print", "../../examples/rlm-secrets/bash-sandbox.yaml")
	if code != 0 || !strings.Contains(stdout, "provider: bwrap") || !strings.Contains(stdout, "# from ../../examples/rlm-secrets/bash.yaml") || strings.Contains(stdout, "extends:") {
		t.Errorf("validate --print: exit %d\n%s%s", code, stdout, stderr)
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.yaml")
	if err := os.WriteFile(base, []byte("version: 1\nname: base\nrepl:\n  language: cobol\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(dir, "child.yaml")
	if err := os.WriteFile(child, []byte("extends: base.yaml\nname: child\nrollouts: [{id: r, turns: []}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "validate", child)
	if code != 2 || !strings.Contains(stderr, base+":4:13: repl.language: must be one of bash, python") {
		t.Errorf("a problem in the base: exit %d\n%s", code, stderr)
	}
}

// TestInit: every language and provider gives an environment that runs
// and passes at once, and init never overwrites.
func TestInit(t *testing.T) {
	cases := []struct {
		language, provider string
		need               func(t *testing.T) []string
	}{
		{"bash", "local", nil},
		{"python", "local", nil},
		{"bash", "bwrap", func(t *testing.T) []string { needBwrap(t); return nil }},
		{"python", "bwrap", func(t *testing.T) []string { needBwrap(t); return nil }},
		{"python", "docker", func(t *testing.T) []string { needDocker(t); return []string{"--image", dockerTestImage} }},
	}
	for _, tc := range cases {
		t.Run(tc.language+"/"+tc.provider, func(t *testing.T) {
			var extra []string
			if tc.need != nil {
				extra = tc.need(t)
			}
			dir := filepath.Join(t.TempDir(), "My Env")
			args := append([]string{"init", "--language", tc.language, "--provider", tc.provider}, extra...)
			code, stdout, stderr := runCLI(t, append(args, dir)...)
			if code != 0 {
				t.Fatalf("init: exit %d\n%s%s", code, stdout, stderr)
			}
			spec := filepath.Join(dir, "spec.yaml")
			text, _ := os.ReadFile(spec)
			if !strings.HasPrefix(string(text), "# yaml-language-server: $schema=") || !strings.Contains(string(text), "name: my-env") {
				t.Errorf("spec.yaml:\n%s", text)
			}
			_, results := runDigest(t, nil, dir) // the folder stands for its spec.yaml
			if len(results) != 1 || results[0]["passed"] != true {
				t.Errorf("the new environment did not pass: %v", results)
			}
			if code, _, stderr := runCLI(t, "init", dir); code == 0 || !strings.Contains(stderr, "never overwrites") {
				t.Errorf("init over an environment: exit %d %s", code, stderr)
			}
		})
	}
}

func TestGitOriginDropsCredentials(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".git"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := "[core]\n\tbare = false\n[remote \"upstream\"]\n\turl = https://example.com/other\n[remote \"origin\"]\n\turl = https://user:ghp_SECRET@github.com/org/envs.git\n"
	if err := os.WriteFile(filepath.Join(dir, ".git", "config"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "envs", "x")
	_ = os.MkdirAll(sub, 0o755)
	if got := gitOrigin(sub); got != "https://github.com/org/envs.git" {
		t.Errorf("gitOrigin = %q", got)
	}
}

// registryFor starts a registry for a CLI test.
func registryFor(t *testing.T, opts registrytest.Options) *registrytest.Registry {
	t.Helper()
	return registrytest.Start(t, opts)
}

// TestPushAndRunByReference: push an example, run it by tag and by digest
// (the same digest of results as its folder), with trust asked for first.
func TestPushAndRunByReference(t *testing.T) {
	cache := shareEnv(t)
	reg := registryFor(t, registrytest.Options{})
	insecure := []string{"--insecure-registry", reg.Host}
	ref := reg.Host + "/envs/rlm-secrets:1.0.0"
	code, stdout, stderr := runCLI(t, append(append([]string{"push"}, insecure...), secrets, ref)...)
	if code != 0 {
		t.Fatalf("push: exit %d\n%s%s", code, stdout, stderr)
	}
	envDigest := lastDigest(t, stdout)
	pinned := regexp.MustCompile(`(?m)^(` + regexp.QuoteMeta(reg.Host) + `/envs/rlm-secrets@sha256:[0-9a-f]{64})$`).FindStringSubmatch(stdout)
	if pinned == nil {
		t.Fatalf("no pinned reference in:\n%s", stdout)
	}
	// Untrusted: exit 2, listing the host commands.
	code, stdout, stderr = runCLI(t, append(append([]string{"run", "--out-dir", t.TempDir()}, insecure...), "oci://"+ref)...)
	if code != 2 || !strings.Contains(stderr, "would run these commands on this machine") || !strings.Contains(stderr, "root_tools[0] decrypt_position: [\"tools/decrypt_position.py\"]") || !strings.Contains(stderr, "--trust") {
		t.Errorf("untrusted run: exit %d\n%s%s", code, stdout, stderr)
	}
	folder, _ := runDigest(t, nil, secrets)
	byTag, results := runDigest(t, append([]string{"--trust"}, insecure...), "oci://"+ref)
	if byTag != folder {
		t.Errorf("run by tag: results digest %s, the folder's %s", byTag, folder)
	}
	env, _ := results[0]["volatile"].(map[string]any)["environment"].(map[string]any)
	if env["ref"] != "oci://"+ref || env["digest"] != envDigest || env["manifest"] != strings.SplitN(pinned[1], "@", 2)[1] {
		t.Errorf("results record %v", env)
	}
	// Trusted by digest in the trust file; run pinned, without the
	// registry (it is in the cache).
	if err := os.WriteFile(os.Getenv("RLMRUN_TRUST_FILE"), []byte("# rlm-secrets\n"+envDigest+" rlm-secrets 1.0.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if byDigest, _ := runDigest(t, insecure, "oci://"+pinned[1]); byDigest != folder {
		t.Errorf("run by digest: %s, want %s", byDigest, folder)
	}
	// pull -o DIR gives the files to edit.
	into := filepath.Join(t.TempDir(), "edit")
	code, stdout, stderr = runCLI(t, append(append([]string{"pull"}, insecure...), "-o", into, ref)...)
	if code != 0 || !strings.Contains(stdout, "digest: "+envDigest) {
		t.Fatalf("pull -o: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, f := range []string{"bash.yaml", "tools/puzzle.py", "puzzle.json", "context/rsqashub.txt"} {
		if _, err := os.Stat(filepath.Join(into, f)); err != nil {
			t.Errorf("pulled folder lacks %s", f)
		}
	}
	if again, _ := runDigest(t, nil, filepath.Join(into, "bash.yaml")); again != folder {
		t.Errorf("the pulled folder runs to %s, want %s", again, folder)
	}
	// A missing tag, and a spec extending the pushed environment.
	code, _, stderr = runCLI(t, append(append([]string{"pull"}, insecure...), reg.Host+"/envs/rlm-secrets:9.9.9")...)
	if code != 1 || !strings.Contains(stderr, "has no tag 9.9.9") {
		t.Errorf("missing tag: exit %d %s", code, stderr)
	}
	child := filepath.Join(t.TempDir(), "child.yaml")
	if err := os.WriteFile(child, []byte("extends: oci://"+pinned[1]+"\nname: secrets-child\nrepl: {max_iterations: 11}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(os.Getenv("RLMRUN_TRUST_FILE"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runCLI(t, "run", "--out-dir", t.TempDir(), child)
	if code != 2 || !strings.Contains(stderr, "oci://"+pinned[1]+" ("+envDigest+") would run") {
		t.Errorf("a child of an untrusted registry base: exit %d\n%s%s", code, stdout, stderr)
	}
	if d, _ := runDigest(t, []string{"--trust"}, child); d == "" {
		t.Error("no digest")
	}
	// Packed, the child holds itself only: its base stays a reference.
	archive := filepath.Join(t.TempDir(), "child.tar.gz")
	if code, stdout, stderr := runCLI(t, "pack", "-o", archive, child); code != 0 || !strings.Contains(stdout, "1 files") {
		t.Errorf("pack a child of a registry base: exit %d\n%s%s", code, stdout, stderr)
	}
	_ = cache
}

// TestRegistryAuthAndTLSThroughTheCLI: credentials from the Docker config,
// a private CA through SSL_CERT_FILE, and the errors without them.
func TestRegistryAuthAndTLSThroughTheCLI(t *testing.T) {
	shareEnv(t)
	reg := registryFor(t, registrytest.Options{TLS: true, Users: map[string]string{"bob": "hunter2"}})
	ref := reg.Host + "/team/secrets:1"
	code, _, stderr := runCLI(t, "push", secrets, ref)
	if code != 1 || !strings.Contains(stderr, "certificate is not trusted") {
		t.Errorf("push without the CA: exit %d %s", code, stderr)
	}
	t.Setenv("SSL_CERT_FILE", reg.CAFile)
	code, _, stderr = runCLI(t, "push", secrets, ref)
	if code != 1 || !strings.Contains(stderr, "docker login "+reg.Host) {
		t.Errorf("push without credentials: exit %d %s", code, stderr)
	}
	t.Setenv("DOCKER_CONFIG", reg.DockerConfig(t, "bob", "hunter2"))
	if code, stdout, stderr := runCLI(t, "push", secrets, ref); code != 0 {
		t.Fatalf("push: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, stdout, stderr := runCLI(t, "pull", ref); code != 0 || !strings.Contains(stdout, "pulled oci://"+ref) {
		t.Errorf("pull: exit %d\n%s%s", code, stdout, stderr)
	}
}

func needBwrap(t *testing.T) {
	t.Helper()
	_, err := exec.LookPath("bwrap")
	testbin.Need(t, err == nil, "bubblewrap")
}
