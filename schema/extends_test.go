package schema

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExtendsMerges(t *testing.T) {
	spec, err := Load("testdata/extends/child/child.yaml")
	if err != nil {
		t.Fatal(err)
	}
	baseDir, _ := filepath.Abs("testdata/extends/base")
	if spec.Name != "child-env" || spec.Description != "The base environment." {
		t.Errorf("name %q description %q: want the child's name and the base's description", spec.Name, spec.Description)
	}
	if spec.REPL.Language != "bash" || spec.REPL.MaxIterations != 3 || spec.REPL.CodeExecutionTimeout.String() != "10s" {
		t.Errorf("repl = %+v: want bash from the base, 3 iterations from the child, 10s from the base", spec.REPL)
	}
	var names []string
	for _, tl := range spec.RootTools {
		names = append(names, tl.Name)
	}
	if got := strings.Join(names, ","); got != "shout,whisper,count" {
		t.Errorf("root tools %s, want shout,whisper,count (merged by name, in the base's order)", got)
	}
	if len(spec.RootTools) == 3 {
		if shout := spec.RootTools[0]; shout.Run.Dir != baseDir || spec.CommandDir(shout.Run) != baseDir {
			t.Errorf("the base's tool runs from %q, want the base's folder %q", shout.Run.Dir, baseDir)
		}
		if w := spec.RootTools[1]; w.Run.Shell != "tr A-Z a-z" || spec.CommandDir(w.Run) != spec.Dir {
			t.Errorf("whisper = %+v: want the child's own, run from the child's folder", w.Run)
		}
	}
	if len(spec.Rewards) != 1 || spec.Rewards[0].Name != "base_reward" {
		t.Errorf("rewards %+v: want the base's (the child sets none)", spec.Rewards)
	}
	if len(spec.Rollouts) != 1 || spec.Rollouts[0].ID != "child-rollout" {
		t.Errorf("rollouts %+v: want only the child's (lists replace)", spec.Rollouts)
	}
	if want := filepath.Join(baseDir, "ctx"); spec.Filesystem.ContextDir != want {
		t.Errorf("context_dir %q, want the base's own %q", spec.Filesystem.ContextDir, want)
	}
	if len(spec.Bases) != 1 || spec.Bases[0].File != "testdata/extends/base/base.yaml" || spec.Bases[0].Dir != baseDir {
		t.Errorf("bases = %+v", spec.Bases)
	}
	inputs := strings.Join(spec.Inputs(), "\n")
	for _, want := range []string{"extends/base/base.yaml", "extends/base/ctx", "extends/base/tools/shout.sh", "extends/child/child.yaml"} {
		if !strings.Contains(inputs, filepath.Join(filepath.Dir(baseDir), want[len("extends/"):])) {
			t.Errorf("inputs lack %s:\n%s", want, inputs)
		}
	}
}

func TestExtendsChain(t *testing.T) {
	spec, err := Load("testdata/extends/chain/three.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if spec.Name != "three" || spec.Description != "from one" || spec.REPL.Language != "python" || spec.REPL.MaxIterations != 8 || spec.Backend.Type != "local" {
		t.Errorf("merged chain: name %q desc %q repl %+v backend %q", spec.Name, spec.Description, spec.REPL, spec.Backend.Type)
	}
	if len(spec.Rollouts) != 1 || spec.Rollouts[0].ID != "three" {
		t.Errorf("rollouts %+v", spec.Rollouts)
	}
	if len(spec.Bases) != 2 || filepath.Base(spec.Bases[0].File) != "two.yaml" || filepath.Base(spec.Bases[1].File) != "one.yaml" {
		t.Errorf("bases %+v, want two then one", spec.Bases)
	}
}

// TestExtendsProblems: every problem names the file that wrote the value,
// at its true line and column.
func TestExtendsProblems(t *testing.T) {
	cases := []struct {
		file string
		want []string
	}{
		{"testdata/extends/bad/child.yaml", []string{
			"testdata/extends/bad/child.yaml:4:19: repl.max_iterations: must be >= 1, got integer -1",
			"testdata/extends/bad/base.yaml:4:13: repl.language: must be one of bash, python, got string \"cobol\"",
		}},
		{"testdata/extends/bad/missing.yaml", []string{
			"testdata/extends/bad/missing.yaml:3:10: extends: cannot read the base testdata/extends/bad/nowhere.yaml: no such file",
		}},
		{"testdata/extends/cycle/a.yaml", []string{
			"testdata/extends/cycle/c.yaml:1:10: extends: a cycle: testdata/extends/cycle/a.yaml → testdata/extends/cycle/b.yaml → testdata/extends/cycle/c.yaml → testdata/extends/cycle/a.yaml",
		}},
	}
	dir, _ := filepath.Abs("testdata/extends")
	for _, tc := range cases {
		t.Run(filepath.Base(filepath.Dir(tc.file))+"/"+filepath.Base(tc.file), func(t *testing.T) {
			_, err := Load(tc.file)
			if err == nil {
				t.Fatal("loaded, want problems")
			}
			got := strings.ReplaceAll(err.Error(), dir, "$DIR")
			if want := strings.Join(tc.want, "\n"); got != want {
				t.Errorf("problems:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestExtendsRemote(t *testing.T) {
	dir := t.TempDir()
	base, _ := filepath.Abs("testdata/extends/chain/one.yaml")
	child := filepath.Join(dir, "child.yaml")
	if err := os.WriteFile(child, []byte("extends: oci://registry.example/envs/one:1\nname: remote-child\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(child); err == nil || !strings.Contains(err.Error(), "child.yaml:1:10: extends: oci:// bases need the rlmrun command") {
		t.Errorf("without a Remote hook: %v", err)
	}
	l, _ := NewLoader()
	var asked string
	l.Remote = func(ref string) (RemoteBase, error) {
		asked = ref
		return RemoteBase{File: base, Ref: ref, Digest: "sha256:abc"}, nil
	}
	spec, err := l.Load(child)
	if err != nil {
		t.Fatal(err)
	}
	if asked != "registry.example/envs/one:1" || spec.Name != "remote-child" || spec.REPL.Language != "python" {
		t.Errorf("asked %q, spec %q %+v", asked, spec.Name, spec.REPL)
	}
	if len(spec.Bases) != 1 || spec.Bases[0].Digest != "sha256:abc" || spec.Bases[0].Ref != "registry.example/envs/one:1" {
		t.Errorf("bases %+v", spec.Bases)
	}
	l.Remote = func(string) (RemoteBase, error) { return RemoteBase{}, errors.New("unauthorized") }
	if _, err := l.Load(child); err == nil || !strings.Contains(err.Error(), "cannot pull oci://registry.example/envs/one:1: unauthorized") {
		t.Errorf("a failed pull: %v", err)
	}
}

func TestMergedYAML(t *testing.T) {
	spec, err := Load("testdata/extends/child/child.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := spec.MergedYAML()
	if err != nil {
		t.Fatal(err)
	}
	text := string(out)
	for _, want := range []string{"name: child-env", "description: The base environment. # from ", "max_iterations: 3", "- name: count"} {
		if !strings.Contains(text, want) {
			t.Errorf("merged YAML lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "extends:") {
		t.Errorf("the merged spec still extends:\n%s", text)
	}
	// The printed spec is itself a spec (the base's folder holds its paths).
	again := filepath.Join("testdata/extends/base", "merged-tmp.yaml")
	if err := os.WriteFile(again, out, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(again)
	if s2, err := Load(again); err != nil || s2.Name != "child-env" || len(s2.RootTools) != 3 {
		t.Errorf("the merged spec does not load the same: %v", err)
	}
}

// TestExtendsPackageGlobs: a base's package globs keep meaning its own
// files, relative to the spec being packed.
func TestExtendsPackageGlobs(t *testing.T) {
	spec, err := Load("testdata/extends/nested/spec.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(spec.Package.Include, ",") + "|" + strings.Join(spec.Package.Exclude, ","); got != "sub/tools/*.txt|sub/tools/skip*" {
		t.Errorf("package globs %s", got)
	}
}
