"""A stage's lock on its folder, and the staging folders a run that failed or was killed left behind."""

from __future__ import annotations

import fcntl
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.common.errors import StageError
from runtime.layout import LOCK

log = logging.getLogger(__name__)


@contextmanager
def locked(folder: Path, stage: str) -> Iterator[None]:
    """Hold `folder/.lock` for one run of a stage; a second run on the same folder fails at once, clearly (the
    operating system releases it when the process ends, however it ends).

    Raises:
        StageError: another run holds the lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StageError(f"another {stage} run is working in {folder} (it holds {folder / LOCK}); wait for it "
                             "to end") from None
        yield


def remove_leftovers(folder: Path, patterns: tuple[str, ...]) -> int:
    """Delete what an earlier run that failed or was killed left under `folder` (call it holding the lock);
    return how many entries went."""
    removed = 0
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d staging folder(s) an earlier run left in %s", removed, folder)
    return removed
