"""The one progress helper (issue 19): a rich bar on a terminal, plain periodic lines with
done/total, rate and time left otherwise, at most 120 columns, cut at a token boundary."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from nas_sepconv.progress import PLAIN_WIDTH, Progress, progress, shorten, track


def _plain_console() -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(file=stream, width=200), stream


def test_plain_lines_every_interval_and_at_the_end_when_not_a_terminal():
    console, stream = _plain_console()
    with Progress("work", 4, unit="items", console=console, interval=0.05) as bar:
        assert not bar.terminal
        for _ in range(4):
            time.sleep(0.06)
            bar.update(advance=1, info="step")
        time.sleep(0.12)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3, lines  # periodic lines, then the final one
    assert all(re.match(r"work: [0-4]/4 items", line) for line in lines), lines
    assert lines[-1].startswith("work: 4/4 items") and "took" in lines[-1] and lines[-1].endswith("| step")
    assert any("ETA" in line for line in lines[:-1]) and any("/s, elapsed" in line for line in lines)
    assert "\x1b" not in stream.getvalue()  # no terminal codes in a log


def test_a_terminal_gets_a_rich_bar_and_no_plain_lines():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=100)
    with Progress("work", 3, unit="items", console=console, interval=0.01) as bar:
        assert bar.terminal
        bar.update(2, info="detail text")
        time.sleep(0.05)
    text = stream.getvalue()
    assert "━" in text and "2/3" in text and "detail text" in text
    assert "work: 2/3 items" not in text  # the plain line is for logs only


def test_nothing_is_shown_before_the_total_is_known_or_when_disabled():
    console, stream = _plain_console()
    with Progress("search", unit="trials", console=console, interval=0.01) as bar:
        bar.update(info="starting")
        time.sleep(0.05)
    assert stream.getvalue() == ""
    with progress(False, "x", 3) as silent:
        silent.update(advance=1, info="y")
    assert list(track([1, 2], False, "x")) == [1, 2]


def test_resume_leaves_earlier_work_out_of_the_rate():
    console, stream = _plain_console()
    with Progress("search", unit="trials", console=console, resume=True, interval=60) as bar:
        bar.update(50, total=60)  # a resumed study: 50 trials from earlier runs
        assert "/s" not in bar.line() and "ETA" not in bar.line()
        time.sleep(0.05)
        bar.update(51)
        assert re.search(r"search: 51/60 trials, [\d.]+/s, elapsed \d+s, ETA \d+s$", bar.line())


def test_lines_fit_the_width_and_are_cut_at_a_token_boundary():
    text = "last: #12 COMPLETE r32 w0.75 d1.0 | " + " ".join(f"{c}:ir_e6_k5x2/s2" for c in range(16, 400, 16))
    cut = shorten(text, 120)
    assert len(cut) <= 120 and cut.endswith("...")
    head = cut[: -len("...")]
    assert text.startswith(head) and text[len(head)] == " "  # a whole token, then the ellipsis
    assert shorten("short", 120) == "short"
    console, _ = _plain_console()  # 200 columns wide, as the CLI's stderr off a terminal
    bar = Progress("search", 10, unit="trials", console=console)
    bar.update(3, info=text)
    assert len(bar.line()) <= PLAIN_WIDTH and bar.line().endswith("...")


def test_the_last_line_says_when_the_work_stopped_early():
    console, stream = _plain_console()
    try:
        with Progress("work", 4, console=console, interval=60) as bar:
            bar.update(1)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert stream.getvalue().startswith("work: 1/4 steps") and "stopped after" in stream.getvalue()
