#!/usr/bin/python3 -SE
"""Sub tool: the file's code when its name and (trimmed) content match the
puzzle, else a fake code."""
import os
import sys

sys.path.insert(0, os.path.join(os.getcwd(), "tools"))
import puzzle  # noqa: E402

args = puzzle.call()["arguments"]
name = str(args.get("filename", ""))
content = str(args.get("filecontent", "")).strip()
entry = puzzle.load()["files"].get(name)
if entry is not None and entry["content"] == content:
    puzzle.reply(entry["code"])
else:
    puzzle.reply(puzzle.fake_code(name, content))
