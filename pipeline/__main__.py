"""`python -m pipeline <stage> ...`: one subcommand per stage, each with the stage's own options, and `run`."""

from __future__ import annotations

import argparse

from pipeline import acquire, analytics, duplicates, evaluate, finetune, index, remove, run, vectorize
from pipeline.common import cli

COMMANDS = (acquire, finetune, vectorize, index, evaluate, duplicates, remove, run, analytics)


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m pipeline`: a subparser per stage, assembled from the stage's `add_arguments`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description="Visual product search pipeline. Stages run in order: "
        "acquire -> finetune -> vectorize -> index -> evaluate; `duplicates` reports near-duplicate products of the "
        "index; `remove` takes products out of the served index at once (a delta version); `run` does them all. "
        "They share only the data directory (--data-dir, see data/README.md). `analytics` reports what shoppers "
        "searched and clicked, from the service's events.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        name = cli.stage_name(module)
        cli.configure(commands.add_parser(name, help=cli.summary_line(module)), module)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen stage."""
    options = vars(build_parser().parse_args(argv))
    name = options.pop("command")
    cli.invoke(next(m for m in COMMANDS if cli.stage_name(m) == name), options)


if __name__ == "__main__":
    main()
