package worker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/rlmrun/rlmrun/backends/protocol"
	rlmfs "github.com/rlmrun/rlmrun/fs"
)

func startWorker(t testing.TB, lang string) (*Worker, string) {
	t.Helper()
	root := t.TempDir()
	work := filepath.Join(root, "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	w, err := Start(context.Background(), SpawnConfig{
		Language: lang,
		Python:   "/usr/bin/python3",
		StateDir: filepath.Join(root, "state"),
	}, Config{
		Workdir:    work,
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=" + root},
		FSMetadata: rlmfs.Metadata{},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Kill)
	return w, work
}

type cell struct {
	code    string
	timeout time.Duration
	want    protocol.ExecReply
	check   func(t *testing.T, r protocol.ExecReply)
}

func runCells(t *testing.T, w *Worker, cells []cell) {
	t.Helper()
	for i, c := range cells {
		to := c.timeout
		if to == 0 {
			to = 10 * time.Second
		}
		r, err := w.Exec(context.Background(), ExecOptions{Seq: i + 1, Code: c.code, Timeout: to, MaxOutputBytes: 1 << 16})
		if err != nil {
			t.Fatalf("cell %d %q: %v", i, c.code, err)
		}
		if c.check != nil {
			c.check(t, r)
			continue
		}
		w := c.want
		if w.Status == "" {
			w.Status = protocol.StatusOK
		}
		if r.Status != w.Status || r.Stdout != w.Stdout || r.Stderr != w.Stderr || r.ExitCode != w.ExitCode || r.Answer != w.Answer || r.Seq != i+1 {
			t.Errorf("cell %d %q:\n got  status=%s out=%q err=%q code=%d answer=%+v seq=%d\n want status=%s out=%q err=%q code=%d answer=%+v",
				i, c.code, r.Status, r.Stdout, r.Stderr, r.ExitCode, r.Answer, r.Seq, w.Status, w.Stdout, w.Stderr, w.ExitCode, w.Answer)
		}
	}
}

func TestBashPersistentState(t *testing.T) {
	w, work := startWorker(t, "bash")
	runCells(t, w, []cell{
		{code: "x=41; f() { echo \"f:$1\"; }; declare -A m=([k]=v); mkdir -p sub && cd sub", want: protocol.ExecReply{}},
		{code: "echo $((x+1)); f a; echo ${m[k]}; pwd", want: protocol.ExecReply{Stdout: "42\nf:a\nv\n" + work + "/sub\n"}},
		{code: "echo out; echo err >&2; false", want: protocol.ExecReply{Stdout: "out\n", Stderr: "err\n", ExitCode: 1}},
		{code: "printf 'no newline'", want: protocol.ExecReply{Stdout: "no newline"}},
		{code: "export RLM_CONTENT='the answer' RLM_READY=yes", want: protocol.ExecReply{Answer: protocol.Answer{Ready: true, Content: "the answer"}}},
		{code: "RLM_READY=0", want: protocol.ExecReply{Answer: protocol.Answer{Ready: false, Content: "the answer"}}},
	})
}

func TestBashSyntaxProblemsDoNotHang(t *testing.T) {
	w, _ := startWorker(t, "bash")
	runCells(t, w, []cell{
		{code: "echo \"unclosed", want: protocol.ExecReply{Stderr: "/dev/fd/95: line 1: unexpected EOF while looking for matching `\"'\n", ExitCode: 2}},
		{code: "cat <<EOF\nbody", want: protocol.ExecReply{Stdout: "body\n", Stderr: "/dev/fd/95: line 2: warning: here-document at line 1 delimited by end-of-file (wanted `EOF')\n"}},
		{code: "if true; then", want: protocol.ExecReply{Stderr: "/dev/fd/95: line 2: syntax error: unexpected end of file\n", ExitCode: 2}},
		{code: "echo still alive", want: protocol.ExecReply{Stdout: "still alive\n"}},
		{code: "nosuchcommand", want: protocol.ExecReply{Stderr: "/dev/fd/95: line 1: nosuchcommand: command not found\n", ExitCode: 127}},
		{code: "read line; echo \"read=$line\"", want: protocol.ExecReply{Stdout: "read=\n", ExitCode: 0}},
	})
}

func TestBashBackgroundJobDoesNotHoldTheReply(t *testing.T) {
	w, _ := startWorker(t, "bash")
	start := time.Now()
	runCells(t, w, []cell{{code: "sleep 100 & echo started", want: protocol.ExecReply{Stdout: "started\n"}}})
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("cell with a background job took %v", d)
	}
}

func TestBashExitIsACrash(t *testing.T) {
	w, _ := startWorker(t, "bash")
	runCells(t, w, []cell{{code: "echo bye; exit 3", check: func(t *testing.T, r protocol.ExecReply) {
		if r.Status != protocol.StatusCrashed || r.ExitCode != 3 || r.Stdout != "bye\n" {
			t.Errorf("exit: %+v", r)
		}
	}}})
}

func TestBashKillSelf(t *testing.T) {
	w, _ := startWorker(t, "bash")
	runCells(t, w, []cell{{code: "kill -9 $$", check: func(t *testing.T, r protocol.ExecReply) {
		if r.Status != protocol.StatusCrashed || r.Signal != "killed" {
			t.Errorf("kill -9: %+v", r)
		}
	}}})
}

func TestTimeoutKillsTheProcessGroup(t *testing.T) {
	for _, lang := range []string{"bash", "python"} {
		t.Run(lang, func(t *testing.T) {
			w, work := startWorker(t, lang)
			code := map[string]string{
				"bash":   "(sleep 30; touch late) & sleep 30",
				"python": "import subprocess, time\nsubprocess.Popen(['sh', '-c', 'sleep 30; touch late'])\ntime.sleep(30)",
			}[lang]
			runCells(t, w, []cell{{code: code, timeout: 300 * time.Millisecond, check: func(t *testing.T, r protocol.ExecReply) {
				if r.Status != protocol.StatusTimeout {
					t.Errorf("status = %s", r.Status)
				}
			}}})
			select {
			case <-w.Exited():
			case <-time.After(5 * time.Second):
				t.Fatal("worker still running after timeout")
			}
			if _, err := os.Stat(filepath.Join(work, "late")); err == nil {
				t.Fatal("a child of the timed-out cell survived")
			}
		})
	}
}

func TestHugeOutputIsCappedWhileReading(t *testing.T) {
	for _, lang := range []string{"bash", "python"} {
		t.Run(lang, func(t *testing.T) {
			w, _ := startWorker(t, lang)
			code := map[string]string{
				"bash":   "head -c 100000000 /dev/zero | tr '\\0' x",
				"python": "import os\nos.write(1, b'x' * 100_000_000)",
			}[lang]
			r, err := w.Exec(context.Background(), ExecOptions{Seq: 1, Code: code, Timeout: 60 * time.Second, MaxOutputBytes: 1000})
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Stdout) != 1000 || r.StdoutBytes != 100_000_000 || strings.Trim(r.Stdout, "x") != "" {
				t.Fatalf("kept %d bytes of %d", len(r.Stdout), r.StdoutBytes)
			}
		})
	}
}

func TestPythonREPL(t *testing.T) {
	w, _ := startWorker(t, "python")
	runCells(t, w, []cell{
		{code: "x = 41\ndef f(a):\n    return a * 2", want: protocol.ExecReply{}},
		{code: "print(x + 1)\nf(21)", check: func(t *testing.T, r protocol.ExecReply) {
			if r.Stdout != "42\n" || r.Result == nil || *r.Result != "42" || r.ExecutionCount != 2 {
				t.Errorf("got %+v", r)
			}
		}},
		{code: "import os, sys\nprint('a')\nos.system('echo from-shell')\nsys.stderr.write('warn\\n')\nNone", want: protocol.ExecReply{Stdout: "a\nfrom-shell\n", Stderr: "warn\n"}},
		{code: "1/0", check: func(t *testing.T, r protocol.ExecReply) {
			want := "Traceback (most recent call last):\n  File \"<cell-4>\", line 1, in <module>\n    1/0\n     ~^~\nZeroDivisionError: division by zero\n"
			if r.Status != protocol.StatusError || r.Error != want {
				t.Errorf("traceback:\n%q\nwant\n%q", r.Error, want)
			}
		}},
		{code: "x = (", check: func(t *testing.T, r protocol.ExecReply) {
			if r.Status != protocol.StatusError || !strings.Contains(r.Error, "SyntaxError: '(' was never closed") || strings.Contains(r.Error, "rlm_worker") {
				t.Errorf("syntax error: %q", r.Error)
			}
		}},
		{code: "import sys; sys.exit(4)", check: func(t *testing.T, r protocol.ExecReply) {
			if r.Status != protocol.StatusError || !strings.HasSuffix(r.Error, "SystemExit: 4\n") {
				t.Errorf("sys.exit: %+v", r)
			}
		}},
		{code: "answer['content'] = 7; answer['ready'] = True", want: protocol.ExecReply{Answer: protocol.Answer{Ready: true, Content: "7"}}},
		{code: "print(extra_data == os.getcwd(), fs_metadata)", want: protocol.ExecReply{Stdout: "True {'file_count': 0, 'total_size': 0}\n", Answer: protocol.Answer{Ready: true, Content: "7"}}},
		{code: "input()", check: func(t *testing.T, r protocol.ExecReply) {
			if !strings.Contains(r.Error, "EOFError") {
				t.Errorf("input(): %+v", r)
			}
		}},
	})
	ans, err := w.Answer(context.Background())
	if err != nil || ans != (protocol.Answer{Ready: true, Content: "7"}) {
		t.Fatalf("Answer = %+v, %v", ans, err)
	}
	r, err := w.Exec(context.Background(), ExecOptions{Seq: 99, Code: "1", Timeout: time.Second, MaxOutputBytes: 100})
	if err != nil || r.ExecutionCount != 10 {
		t.Fatalf("answer request counted as a cell: %+v %v", r, err)
	}
}

func TestPythonCrash(t *testing.T) {
	w, _ := startWorker(t, "python")
	runCells(t, w, []cell{{code: "import os\nprint('before', flush=True)\nos._exit(3)", check: func(t *testing.T, r protocol.ExecReply) {
		if r.Status != protocol.StatusCrashed || r.ExitCode != 3 || r.Stdout != "before\n" {
			t.Errorf("os._exit: %+v", r)
		}
	}}})
}

func TestBinaryOutputArrivesAsBytes(t *testing.T) {
	w, _ := startWorker(t, "bash")
	runCells(t, w, []cell{{code: `printf 'a\xff\xfeb'`, want: protocol.ExecReply{Stdout: "a\xff\xfeb"}}})
}

func BenchmarkTrivialCell(b *testing.B) {
	for _, lang := range []string{"bash", "python"} {
		b.Run(lang, func(b *testing.B) {
			w, _ := startWorker(b, lang)
			code := map[string]string{"bash": "true", "python": "pass"}[lang]
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := w.Exec(context.Background(), ExecOptions{Seq: i + 1, Code: code, Timeout: 10 * time.Second, MaxOutputBytes: 1 << 16}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A cell that closes the worker's own channels (its output, its status
// pipe) breaks the worker: that is found at once, not at the cell timeout.
func TestClosedPrivateDescriptorsEndTheWorker(t *testing.T) {
	cases := []struct{ lang, code string }{
		{"python", "import os\nos.close(1)\nos.close(2)"},
		{"bash", "exec 91>&- 92>&- 93>&-"},
		{"bash", "exec 93>&-"},
	}
	for _, c := range cases {
		t.Run(c.lang+" "+c.code, func(t *testing.T) {
			w, _ := startWorker(t, c.lang)
			done := make(chan struct{})
			var r protocol.ExecReply
			var err error
			go func() {
				defer close(done)
				r, err = w.Exec(context.Background(), ExecOptions{Seq: 1, Code: c.code, Timeout: time.Hour, MaxOutputBytes: 1 << 10})
			}()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				w.Kill()
				<-done
				t.Fatal("the cell held the worker until it was killed")
			}
			if err != nil || r.Status != protocol.StatusCrashed || !strings.Contains(r.Reason, "closed the REPL's own") {
				t.Fatalf("reply %+v, err %v", r, err)
			}
		})
	}
}

// An answer over MaxAnswerBytes is cut (on a character boundary) and
// marked, and costs the agent no more than the limit.
func TestAnswerIsCapped(t *testing.T) {
	for _, c := range []struct{ lang, code string }{
		{"bash", `RLM_CONTENT=$(/usr/bin/python3 -c 'print("é" * 3000000, end="")'); export RLM_CONTENT RLM_READY=1`},
		{"python", `answer["content"] = "é" * 3000000; answer["ready"] = True`},
	} {
		t.Run(c.lang, func(t *testing.T) {
			w, _ := startWorker(t, c.lang)
			r, err := w.Exec(context.Background(), ExecOptions{Seq: 1, Code: c.code, Timeout: time.Minute, MaxOutputBytes: 1 << 10})
			if err != nil || r.Status != protocol.StatusOK {
				t.Fatalf("%+v %v", r.Status, err)
			}
			a := r.Answer
			if !a.Truncated || len(a.Content) > protocol.MaxAnswerBytes || len(a.Content) < protocol.MaxAnswerBytes-4 || !utf8.ValidString(a.Content) {
				t.Fatalf("answer: truncated %v, %d bytes, valid %v", a.Truncated, len(a.Content), utf8.ValidString(a.Content))
			}
		})
	}
}
