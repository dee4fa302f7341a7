"""`safekeel` entry point.

Each subcommand lives in its own module under `safekeel.cli` and exposes
`register(subparsers) -> None`, which adds its parser and sets `func=run(args) -> int | None`.
Adding a command is one module and one line in `COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from safekeel import __version__
from safekeel.errors import SafekeelError

# Order is the order shown by `safekeel --help`.
COMMAND_MODULES = [
    "safekeel.cli.models_cmd",
    "safekeel.cli.generate_cmd",
    "safekeel.cli.tokens_cmd",
    "safekeel.cli.layers_cmd",
    "safekeel.cli.data_cmd",
    "safekeel.cli.methods_cmd",
    "safekeel.cli.train_cmd",
    "safekeel.cli.eval_cmd",
    "safekeel.cli.gate_cmd",
    "safekeel.cli.compare_cmd",
    "safekeel.cli.experiment_cmd",
    "safekeel.cli.report_cmd",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the message and where to look), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="safekeel",
        description="Fine-tune language models without losing their safety alignment.",
    )
    parser.add_argument("--version", action="version", version=f"safekeel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed): a status, not an exit
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    verbose = args.verbose or os.environ.get("SAFEKEEL_DEBUG") == "1"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    try:
        code = args.func(args)
    except SafekeelError as exc:
        if verbose:
            raise
        print(f"safekeel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, a path that vanished: the user's to fix
        if verbose:
            raise
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"safekeel {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
