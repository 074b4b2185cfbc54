"""``nas-sepconv spaces``: list the bundled search spaces (``list_spaces``)."""

from __future__ import annotations

from rich.text import Text

from ..search import list_spaces
from .common import guard, out


def spaces() -> None:
    """List the bundled search spaces."""

    def run() -> None:
        for name, description in list_spaces().items():
            out.print(Text.assemble((name, "bold"), f"  {description}"), highlight=False)

    guard(run)
