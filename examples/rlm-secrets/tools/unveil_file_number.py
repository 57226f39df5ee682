#!/usr/bin/python3 -SE
"""Root tool: given every file name sorted by secret position, the position
of the file to keep."""
import os
import sys

sys.path.insert(0, os.path.join(os.getcwd(), "tools"))
import puzzle  # noqa: E402

names = puzzle.call()["arguments"].get("sorted_filenames")
data = puzzle.load()
files = data["files"]
if not isinstance(names, list):
    names = [names]
if len(names) != len(files):
    puzzle.reply(f"Error: Expected {len(files)} filenames, got {len(names)}")
elif names != sorted(files, key=lambda n: files[n]["position"]):
    puzzle.reply("Error: Filenames are not in the correct order. Try again.")
else:
    puzzle.reply(data["keep"])
