#!/usr/bin/python3 -SE
"""Root tool: the secret position of a file, given its code."""
import os
import sys

sys.path.insert(0, os.path.join(os.getcwd(), "tools"))
import puzzle  # noqa: E402

args = puzzle.call()["arguments"]
name = str(args.get("file_name", ""))
code = str(args.get("code", ""))
entry = puzzle.load()["files"].get(name)
if entry is None:
    puzzle.reply(f"Error: File '{name}' not found in puzzle")
elif entry["code"] != code:
    puzzle.reply(f"Error: Invalid code '{code}' for file '{name}'")
else:
    puzzle.reply(entry["position"])
