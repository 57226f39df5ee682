"""The rlm-secrets puzzle: helpers shared by its tools.

Each tool is run by rlmrun with the call as JSON on stdin
({"tool", "args", "kwargs", "arguments", "role", "rollout", "vars"}) and the
spec's folder as working directory; what it prints is the result.
"""
import json
import sys


def load():
    with open("puzzle.json", encoding="utf-8") as f:
        return json.load(f)


def call():
    return json.load(sys.stdin)


def reply(value):
    print(json.dumps(value))


def fake_code(filename, content):
    """A plausible but wrong code, the same for the same input."""
    import hashlib  # only here: every tool pays for what it imports

    digest = hashlib.sha256(("fake:" + filename + ":" + content).encode()).hexdigest().upper()
    return digest[:16]
