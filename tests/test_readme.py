"""Every Python and shell example of README.md runs as written, taken from the README itself.

The fenced ```python and ```bash blocks are extracted in order; HTML comments on the lines just
above a fence say how to treat it:

- ``<!-- not run: REASON -->``: not run (a ``make`` line, a PostgreSQL cluster); the reason is required;
- ``<!-- slow: TIME on 2 CPU cores -->``: run only with ``-m slow`` (``make test-slow``);
- ``<!-- continues -->``: a Python block that goes on from the previous Python block (run together).

Python blocks run in a fresh interpreter; each line of a bash block must be a ``nas-sepconv``
command, run as ``python -m nas_sepconv.cli ...``.  All run in one temporary folder, in README
order (the pandas example reads the results of the search example before it).  Output listings
are ```text blocks.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RUNNABLE = ("python", "bash")
MARK = re.compile(r"^<!--\s*(not run|slow|continues)\s*:?\s*(.*?)\s*-->\s*$")
TIMEOUT_S, SLOW_TIMEOUT_S = 300, 1200


@dataclass
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    marks: dict[str, str] = field(default_factory=dict)
    before: str = ""  # the code of the Python blocks it continues

    @property
    def id(self) -> str:
        return f"{self.lang}-L{self.line}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text``, with the marks of the comment lines just above each."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        marks, j = {}, i - 1
        while j >= 0 and (m := MARK.match(lines[j].strip())):
            marks[m.group(1)] = m.group(2)
            j -= 1
        end = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), None)
        assert end is not None, f"README.md:{i + 1}: a fence is never closed"
        blocks.append(Block(lines[i][3:].strip(), "\n".join(lines[i + 1 : end]) + "\n", i + 1, marks))
        i = end + 1
    previous = ""
    for b in blocks:
        if b.lang == "python":
            b.before = previous if "continues" in b.marks else ""
            previous = b.before + b.code
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUN = [b for b in BLOCKS if b.lang in RUNNABLE and "not run" not in b.marks]


def test_every_example_is_run_or_says_why_not():
    assert len(RUN) >= 5, [b.id for b in BLOCKS]
    for b in BLOCKS:
        assert b.lang in (*RUNNABLE, "text"), (
            f"README.md:{b.line}: a ```{b.lang} block: use python, bash, or text for output"
        )
        if "not run" in b.marks:
            assert b.lang in RUNNABLE and len(b.marks["not run"]) > 10, f"README.md:{b.line}: say why it is not run"
        if "slow" in b.marks:
            assert re.search(r"\d+ ?(s|min)\b", b.marks["slow"]), f"README.md:{b.line}: state the measured time"
        if "continues" in b.marks:
            assert b.lang == "python" and b.before, f"README.md:{b.line}: continues no Python block"


def _commands(block: Block) -> list[list[str]]:
    """The argument lists of a bash block's ``nas-sepconv`` commands (continuations joined)."""
    commands = []
    for line in block.code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assert words[0] == "nas-sepconv", (
            f"README.md:{block.line}: {line.strip()!r} is not a nas-sepconv command; mark the block not run"
        )
        commands.append(words[1:])
    assert commands, f"README.md:{block.line}: no command"
    return commands


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


def _run(args: list[str], cwd: Path, timeout: float) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), MPLBACKEND="Agg")
    env["OMP_NUM_THREADS"] = os.environ.get("NAS_SEPCONV_TEST_THREADS", "2")
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if "slow" in b.marks else []) for b in RUN]
)
def test_readme_example_runs(block: Block, workdir: Path):
    timeout = SLOW_TIMEOUT_S if "slow" in block.marks else TIMEOUT_S
    if block.lang == "python":
        _run(["-c", block.before + block.code], workdir, timeout)
    else:
        for args in _commands(block):
            _run(["-m", "nas_sepconv.cli", *args], workdir, timeout)
