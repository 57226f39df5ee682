#!/usr/bin/python3 -SE
"""The rlm-secrets puzzle's three tools as one MCP server (stdio transport).

rlmrun starts it once per run (mcp_servers, scope: run) in the spec's folder,
so the tools' start-up — Python, json, the puzzle file — is paid once, not
per call. It speaks just enough of the Model Context Protocol for a tool
server: initialize, tools/list, tools/call and ping, one JSON-RPC message per
line on stdin and stdout; its stderr is the run's log for it. The answers
are exactly those of the command tools in this folder.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.getcwd(), "tools"))
import puzzle  # noqa: E402

PUZZLE = puzzle.load()
FILES = PUZZLE["files"]
VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")


def decrypt_position(args):
    name = str(args.get("file_name", ""))
    code = str(args.get("code", ""))
    entry = FILES.get(name)
    if entry is None:
        return f"Error: File '{name}' not found in puzzle"
    if entry["code"] != code:
        return f"Error: Invalid code '{code}' for file '{name}'"
    return entry["position"]


def unveil_file_number(args):
    names = args.get("sorted_filenames")
    if not isinstance(names, list):
        names = [names]
    if len(names) != len(FILES):
        return f"Error: Expected {len(FILES)} filenames, got {len(names)}"
    if names != sorted(FILES, key=lambda n: FILES[n]["position"]):
        return "Error: Filenames are not in the correct order. Try again."
    return PUZZLE["keep"]


def get_code_from_file_data(args):
    name = str(args.get("filename", ""))
    content = str(args.get("filecontent", "")).strip()
    entry = FILES.get(name)
    if entry is not None and entry["content"] == content:
        return entry["code"]
    return puzzle.fake_code(name, content)


def schema(properties, required):
    return {"type": "object", "properties": properties, "required": required}


TOOLS = {
    "decrypt_position": (decrypt_position, "Decrypt the position of a file using its code.", schema(
        {"file_name": {"type": "string", "description": "The file's name."},
         "code": {"type": "string", "description": "The file's 16-character code."}},
        ["file_name", "code"])),
    "unveil_file_number": (unveil_file_number, "Given every file name sorted by secret position, tell the position of the file to keep.", schema(
        {"sorted_filenames": {"type": "array", "items": {"type": "string"}}},
        ["sorted_filenames"])),
    "get_code_from_file_data": (get_code_from_file_data, "Get a file's code from its name and content.", schema(
        {"filename": {"type": "string"}, "filecontent": {"type": "string"}},
        ["filename", "filecontent"])),
}


def handle(method, params):
    if method == "initialize":
        asked = params.get("protocolVersion")
        return {
            "protocolVersion": asked if asked in VERSIONS else VERSIONS[1],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "rlm-secrets", "version": "1"},
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": [{"name": n, "description": d, "inputSchema": s} for n, (_, d, s) in TOOLS.items()]}
    if method == "tools/call":
        tool = TOOLS.get(params.get("name"))
        if tool is None:
            return {"content": [{"type": "text", "text": f"unknown tool {params.get('name')!r}"}], "isError": True}
        value = tool[0](params.get("arguments") or {})
        return {"content": [{"type": "text", "text": json.dumps(value)}]}
    raise LookupError(method)


def main():
    out = sys.stdout
    for line in iter(sys.stdin.buffer.readline, b""):
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "id" not in msg or "method" not in msg:
            continue  # notifications, and answers to requests it never sends
        reply = {"jsonrpc": "2.0", "id": msg["id"]}
        try:
            reply["result"] = handle(msg["method"], msg.get("params") or {})
        except LookupError:
            reply["error"] = {"code": -32601, "message": "method not found: " + str(msg["method"])}
        except Exception as e:  # noqa: BLE001 - a tool's bug is the caller's error, not the server's end
            reply["error"] = {"code": -32603, "message": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


main()
