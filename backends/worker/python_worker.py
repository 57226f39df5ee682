# The rlmrun Python REPL worker. The agent starts it with the spec's
# interpreter: requests arrive on fd 3, replies leave on fd 4, and fd 1/2 are
# the cell's own stdout and stderr (so output of os.system or a subprocess
# reaches the model too). After each cell the worker writes an end marker to
# fd 1 and fd 2 so the agent knows where the cell's output ends.
#
# Standard library only (images without pip work), and nothing imported at
# start-up that a cell does not need: json, ast, traceback and linecache cost
# ~20 ms together, so the protocol is length-prefixed text and the rest is
# imported on first use.
import os
import sys


def _rlm_main():
    import _ast
    import builtins

    # Out of memory, the kernel must kill the cell, not the agent: the
    # worker raises its own score (children inherit it).
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass

    req_fd = os.dup(3)
    rep_fd = os.dup(4)
    os.close(3)
    os.close(4)
    requests = os.fdopen(req_fd, "rb", buffering=0)

    def read_request():
        line = requests.readline()
        if not line:
            return None, 0, b""
        op, seq, size = line.split()
        size = int(size)
        data = b""
        while len(data) < size:
            chunk = requests.read(size - len(data))
            if not chunk:
                return None, 0, b""
            data += chunk
        return op, int(seq), data

    # The worker is started before its rollout is known; the first request
    # configures it: marker, working directory, fs metadata, root tool
    # names, then the environment (NUL-separated).
    op, _, data = read_request()
    if op != b"c":
        return
    fields = data.decode("utf-8", "surrogateescape").split("\0")
    marker = fields[0].encode("latin-1")
    workdir = fields[1]
    file_count, total_size = int(fields[2]), int(fields[3])
    tool_names = fields[4].split()
    os.environ.clear()
    for entry in fields[5:]:
        key, sep, value = entry.partition("=")
        if sep:
            os.environ[key] = value
    os.chdir(workdir)

    def write_all(fd, data):
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except OSError:
                return
            view = view[n:]

    def reply(seq, status, count, ready, error, result, content):
        fields = [
            (error or "").encode("utf-8", "replace"),
            (result or "").encode("utf-8", "replace"),
            content.encode("utf-8", "replace"),
        ]
        head = "%d %s %d %d %d %d %d %d\n" % (
            seq, status, count, 1 if ready else 0,
            len(fields[0]), len(fields[1]), 0 if result is None else 1, len(fields[2]),
        )
        write_all(rep_fd, head.encode("ascii") + b"".join(fields))

    def end_marks():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        write_all(1, marker)
        write_all(2, marker)

    namespace = {
        "__name__": "__main__",
        "__builtins__": builtins,
        "answer": {"ready": False, "content": ""},
        "extra_data": workdir,
        "fs_metadata": {"file_count": file_count, "total_size": total_size},
    }
    if tool_names:
        namespace.update(_rlm_make_tools(tool_names))

    real_stdout, real_stderr = sys.stdout, sys.stderr
    sources = {}

    def read_answer():
        ans = namespace.get("answer")
        if not isinstance(ans, dict):
            return False, ""
        content = ans.get("content", "")
        try:
            if content is None:
                content = ""
            elif not isinstance(content, str):
                content = str(content)
            return bool(ans.get("ready", False)), content
        except Exception:
            return False, ""

    def format_error(exc, in_cell):
        import linecache
        import traceback

        # Tracebacks show the lines of earlier cells too.
        for name, code in sources.items():
            linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        if isinstance(exc, SyntaxError) and not in_cell:
            return "".join(traceback.format_exception_only(type(exc), exc))
        te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
        # The worker's own frames (this script, the tool functions) are noise.
        seen = set()
        todo = [te]
        while todo:
            cur = todo.pop()
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            cur.stack = traceback.StackSummary.from_list(
                [f for f in cur.stack if f.filename != "<rlmrun-worker>"])
            todo.extend(x for x in (cur.__cause__, cur.__context__) if x is not None)
        return "".join(te.format())

    def run_cell(code, count):
        filename = "<cell-%d>" % count
        sources[filename] = code
        try:
            # PyCF_ONLY_AST (0x400) parses without importing the ast module.
            tree = compile(code, filename, "exec", 0x400)
        except SyntaxError as exc:
            return "error", format_error(exc, False), None
        except Exception as exc:  # e.g. ValueError for a NUL byte
            return "error", format_error(exc, False), None
        body = list(tree.body)
        last = None
        if body and isinstance(body[-1], _ast.Expr):
            last = body.pop()
        result = None
        try:
            if body:
                exec(compile(_ast.Module(body=body, type_ignores=[]), filename, "exec"), namespace)
            if last is not None:
                value = eval(compile(_ast.Expression(body=last.value), filename, "eval"), namespace)
                if value is not None:
                    result = repr(value)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt end the cell, not the REPL
            return "error", format_error(exc, True), None
        finally:
            sys.stdout, sys.stderr = real_stdout, real_stderr
        return "ok", None, result

    end_marks()
    write_all(rep_fd, b"R %d\n" % os.getpid())
    count = 0
    while True:
        op, seq, data = read_request()
        if op is None:
            return
        if op == b"a":
            end_marks()
            ready, content = read_answer()
            reply(seq, "ok", count, ready, None, None, content)
            continue
        count += 1
        status, error, result = run_cell(data.decode("utf-8", "replace"), count)
        end_marks()
        ready, content = read_answer()
        reply(seq, status, count, ready, error, result, content)


def _rlm_make_tools(names):
    """Root tools as functions that call the interception server over HTTP,
    with the standard library only. print_lines (llm_batch's summary) are
    printed; a tool's error is raised as RuntimeError."""
    url = os.environ.get("RLM_ROOT_TOOL_URL", "")
    secret = os.environ.get("RLM_SECRET", "")
    timeout = int(os.environ.get("RLM_TOOL_TIMEOUT_MS", "300000")) / 1000.0

    def call(name, args, kwargs):
        import http.client
        import json
        import urllib.parse

        if not url:
            raise RuntimeError("Root tool URL not configured")
        parts = urllib.parse.urlsplit(url)
        conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_type(parts.hostname, parts.port, timeout=timeout)
        body = json.dumps({"tool_name": name, "args": list(args), "kwargs": kwargs})
        try:
            conn.request("POST", parts.path, body, {
                "Content-Type": "application/json",
                "Authorization": "Bearer " + secret,
            })
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        try:
            reply = json.loads(data)
        except ValueError:
            raise RuntimeError("HTTP %d: %s" % (resp.status, data[:500].decode("utf-8", "replace"))) from None
        for line in reply.get("print_lines") or []:
            print(line)
        if reply.get("error") is not None:
            raise RuntimeError(reply["error"])
        return reply.get("result")

    def make(name):
        def tool(*args, **kwargs):
            return call(name, args, kwargs)

        tool.__name__ = tool.__qualname__ = name
        return tool

    return {name: make(name) for name in names}


_rlm_main()
