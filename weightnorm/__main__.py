"""Command line: `python -m weightnorm demo`, `python -m weightnorm convert`, `--version`."""

from __future__ import annotations

import argparse
import sys

from . import __version__, _demo
from .port import cli


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs the command; returns its exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m weightnorm",
        description="One exact weight normalization for every JAX framework.",
    )
    parser.add_argument("--version", action="version", version=f"weightnorm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _demo.add_parser(commands)
    cli.add_parser(commands)
    args = parser.parse_args(argv)
    return cli.run(args) if args.command == "convert" else _demo.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
