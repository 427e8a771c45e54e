"""Reading spec files for the CLI: file errors become one-line messages, not tracebacks."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterable

from ..spec import Problem, SpecError, TrainingJob, load_job


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


def read_job(path: str, overrides: Iterable[str] = ()) -> TrainingJob:
    p = pathlib.Path(path)
    try:
        text = p.read_text() if path != "-" else sys.stdin.read()
    except FileNotFoundError:
        raise SpecError([Problem("", "no such file")]) from None
    except IsADirectoryError:
        raise SpecError([Problem("", "is a directory, not a TrainingJob file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([Problem("", f"cannot read: {e}")]) from None
    return load_job(text, overrides=overrides)


def read_job_or_report(path: str, overrides: Iterable[str] = ()) -> TrainingJob | None:
    """The job, or None after printing one line per problem (FILE:LINE: field.path: message) to stderr."""
    try:
        return read_job(path, overrides)
    except SpecError as e:
        for problem in e.problems:
            print(problem.render(path), file=sys.stderr)
        return None
