"""Exceptions.  The library raises; only the CLI prints and exits.

:class:`UserInputError` is every mistake in what a user typed (a flag, a YAML field, a policy, a
model name, an input size, a path).  Its message is one line naming the field and the fix; the
CLI prints it and exits with status 2.
"""

from __future__ import annotations

__all__ = ["NasSepconvError", "UserInputError", "TrainingDiverged", "CandidateError", "StorageError", "SearchFailed"]


class NasSepconvError(Exception):
    """Base class of nas-sepconv's own exceptions."""


class UserInputError(NasSepconvError, ValueError):
    """Bad input: the message names the field and how to mend it, on one line (a line break that
    came with the input, such as a JSON key holding ``\\n``, is shown escaped)."""

    def __init__(self, field: str, problem: str, fix: str | None = None):
        self.field = field
        self.problem = problem
        self.fix = fix
        text = f"{field}: {problem}" if field else problem
        if fix:
            text += f"; {fix}"
        super().__init__(text.replace("\r", "\\r").replace("\n", "\\n"))


class TrainingDiverged(NasSepconvError, FloatingPointError):
    """The loss became NaN or infinite; the trial that trained the model fails with this reason."""


class CandidateError(NasSepconvError):
    """A candidate architecture cannot be built or run (the trial fails, the study goes on)."""


class StorageError(NasSepconvError):
    """The study's storage cannot be written (disk full, database gone): the run stops; what
    was recorded stays, and the same command resumes.  The CLI prints its one line, status 1."""


class SearchFailed(NasSepconvError):
    """Every trial of a search run failed, or so many that the failure limit stopped it, for a
    reason that is not the user's input (a fault of the machine, training that diverges): the
    message says why, from the reasons recorded on the trials.  What finished stays, and the
    same command resumes.  The CLI prints its one line, status 1."""
