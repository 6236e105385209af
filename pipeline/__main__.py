"""Entry point of `python -m pipeline <stage>`."""

from pipeline.cli import main

main()
