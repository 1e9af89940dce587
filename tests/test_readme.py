"""Every Python example in the README runs as written, or says why not.

A block that cannot run here is marked by an HTML comment on the line just
above its fence, which a reader of the rendered README does not see::

    <!-- not run: it needs a PostgreSQL server -->
    ```python
    ...

Its test is skipped with that reason.  Every other block whose fence names
Python (python, py, python3, in any case) is run.
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PYTHON = ("python", "py", "python3")
NOT_RUN = re.compile(r"<!--\s*not run:(.*?)-->\s*$")

with open(README, encoding="utf-8") as f:
    TEXT = f.read()


class Block:
    def __init__(self, line, code, not_run):
        self.line = line  # of its opening fence
        self.code = code
        self.not_run = not_run  # the comment above it says "not run: REASON", or None


def python_blocks(text):
    """The README's fenced code blocks whose info string names Python, read
    as CommonMark does: a fence of 3 or more backticks or tildes, closed by
    one of the same character at least as long, with nothing after it."""
    lines = text.splitlines(keepends=True)
    blocks = []
    fence = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})\s*([^\s`]*)", stripped)
            if match:
                fence, language, start, body = match.group(1), match.group(2), number, []
                above = NOT_RUN.search(lines[number - 2]) if number > 1 else None
        elif re.fullmatch(re.escape(fence[0]) + "{%d,}" % len(fence), stripped):
            if language.lower() in PYTHON:
                blocks.append(Block(start, "".join(body), above and above.group(1).strip()))
            fence = None
        else:
            body.append(line)
    assert fence is None, "README.md: the fence at line %d is never closed" % start
    return blocks


BLOCKS = python_blocks(TEXT)


def test_the_readme_has_examples():
    """Counted another way (lines that open a Python fence), the README has
    as many Python blocks as the tests below run or skip, and at least one."""
    opening = re.compile(r"^[ \t]*(?:`{3,}|~{3,})[ \t]*(?:%s)(?:[ \t].*)?$" % "|".join(PYTHON),
                         re.M | re.I)
    count = len(opening.findall(TEXT))
    assert count >= 1
    assert len(BLOCKS) == count, ["line %d" % b.line for b in BLOCKS]
    for block in BLOCKS:
        assert block.not_run is None or block.not_run, \
            "README.md line %d: 'not run:' without a reason" % block.line


@pytest.mark.parametrize("block", BLOCKS, ids=["line%d" % b.line for b in BLOCKS])
def test_readme_example_runs(block, tmp_path, monkeypatch, capsys):
    if block.not_run:
        pytest.skip("README.md line %d is not run: %s" % (block.line, block.not_run))
    monkeypatch.chdir(tmp_path)
    code = compile(block.code, "README.md example at line %d" % block.line, "exec")
    exec(code, {"__name__": "__main__"})
