"""The error a stage's user must fix, as opposed to a bug.

A missing folder or file ("run acquire first"), a wrong option or column, a source that cannot be read, an index
that is not there, another run holding the lock: the stages and their helpers raise `StageError` for these, with a
message that says what to do, and the command line prints it on one line (`cli.invoke`). Any other exception is a
bug: the command line lets it through with its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StageError(Exception):
    """Something the user of a stage must fix; the message says what."""


def require(path: Path, what: str, stage: str) -> Path:
    """Return `path`, or raise a StageError naming the stage that writes it when it is not there.

    Args:
        path: a file or folder a stage reads.
        what: what it is, for the message ("catalog", "embeddings", ...).
        stage: the stage that writes it (`python -m pipeline <stage>`).
    """
    if not Path(path).exists():
        raise StageError(f"no {what} at {path}; run `python -m pipeline {stage}` first")
    return Path(path)


@contextmanager
def user_input(*kinds: type[Exception]) -> Iterator[None]:
    """Turn the given exceptions, raised by the check of the user's input inside the block, into a StageError with
    the same message. Keep the block to that one check: around more, a bug would pass for bad input."""
    try:
        yield
    except kinds as exc:
        raise StageError(str(exc)) from exc
