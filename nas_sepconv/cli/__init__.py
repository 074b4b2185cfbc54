"""The ``nas-sepconv`` command: thin commands, each parsing its flags and calling one library
function, one module per command (``convert``, ``profile``, ``spaces``, ``search``, ``report``,
``export``) and ``common`` for what they share.  Bad input: one line on stderr naming what was
wrong and how to mend it, exit status 2, no traceback (``--debug`` shows it).  A storage that
cannot be written mid-run (disk full, database gone; not the user's input): one line, exit
status 1, and the same command resumes.  Ctrl-C: exit status 130."""

from __future__ import annotations

from .common import Command, app, example_input, main, parse_input_size, print_frame
from .convert import convert
from .export import export
from .profile import profile
from .report import report
from .search import search
from .spaces import spaces

# the commands, in the order ``--help`` lists them
for _command in (convert, profile, spaces, search, report, export):
    app.command(cls=Command)(_command)

__all__ = [
    "app",
    "main",
    "convert",
    "profile",
    "spaces",
    "search",
    "report",
    "export",
    "parse_input_size",
    "example_input",
    "print_frame",
]
