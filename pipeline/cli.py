"""Shared command-line plumbing: one parser per stage, logging set-up, the stage dispatcher."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from pipeline import STAGES


def stage_main(module_name: str, argv: list[str] | None = None) -> None:
    """Parse `argv` with a stage's options and run it."""
    module = importlib.import_module(f"pipeline.{module_name}")
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {module_name}",
                                     description=module.__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=module_name != "evaluate",
                        help="the data directory every stage reads and writes (see data/README.md)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        module.main(args)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input of the user's (a missing folder, a wrong column): say what, not a traceback.
        logging.getLogger(module_name).debug("failed", exc_info=True)
        sys.exit(f"error: {exc}")


def main(argv: list[str] | None = None) -> None:
    """Dispatch `python -m pipeline <stage> ...` to the stage's own parser."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = (*STAGES, "run")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: python -m pipeline {{{','.join(commands)}}} [--help] ...\n\n"
              "Stages run in order: acquire -> finetune -> vectorize -> index -> evaluate; `run` does them all.",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    stage_main(argv[0], argv[1:])
