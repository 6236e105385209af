"""Command-line plumbing every stage shares: its parser from its own `add_arguments`, logging, one-line errors for
what the user must fix (`errors.StageError`).

A stage module has `run(**options)`, `add_arguments(parser)` (one flag per keyword of `run`) and
`describe(summary, options)` (what the command line prints); `python -m pipeline.<stage>` calls
`main(module)` and `python -m pipeline <stage>` builds the same parser as a subcommand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType
from typing import Any

from pipeline.common.errors import StageError


def stage_name(module: ModuleType) -> str:
    """The stage's command name (`pipeline.acquire` -> `acquire`, also when run as `__main__`)."""
    spec = getattr(module, "__spec__", None)
    return (spec.name if spec else module.__name__).rsplit(".", 1)[-1]


def summary_line(module: ModuleType) -> str:
    """The first line of a module's docstring."""
    return (module.__doc__ or stage_name(module)).strip().splitlines()[0]


def configure(parser: argparse.ArgumentParser, module: ModuleType) -> argparse.ArgumentParser:
    """Give a parser the stage's own options and the shared ones (--verbose)."""
    parser.description = module.__doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    module.add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def invoke(module: ModuleType, options: dict[str, Any]) -> dict:
    """Set up logging, call the stage's `run(**options)` and print what it made.

    What the user must fix (`StageError`: a missing folder, a wrong column) ends the process with a one-line
    `error: ...` and exit status 1; --verbose logs its traceback too. Any other exception is a bug and goes up with
    its traceback.
    """
    options = dict(options)
    verbose = options.pop("verbose", False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = module.run(**options)
    except StageError as exc:
        logging.getLogger(stage_name(module)).debug("failed", exc_info=True)
        sys.exit(f"error: {exc}")
    print(module.describe(summary, options))
    return summary


def threshold(text: str) -> float | None:
    """A near-duplicate threshold option: `auto` (None: calibrated per index) or a cosine similarity in (0, 1]."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'auto' or a cosine similarity in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"'auto' or a cosine similarity in (0, 1], got {text!r}")
    return value


def main(module: ModuleType, argv: list[str] | None = None) -> dict:
    """Parse `argv` with the stage's options and run it (`python -m pipeline.<stage>`)."""
    parser = configure(argparse.ArgumentParser(prog=f"python -m pipeline.{stage_name(module)}"), module)
    return invoke(module, vars(parser.parse_args(argv)))
