"""``rbseg``: a thin argparse layer over the Python API.

Each command group lives in its own module here and exposes ``register(subparsers)``, which adds
its parsers and sets ``func`` (a callable taking the parsed args and returning an exit status).
User errors (:class:`RbsegError`) print one line and exit non-zero, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import RbsegError

# Command-group modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "data", "score", "zoo", "train", "perturbation", "craft",
    "evaluate", "report", "check", "predict", "reproduce",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rbseg",
        description="Robustness evaluation suite for semantic segmentation (feature binding, BMVC 2020).",
    )
    parser.add_argument("--version", action="version", version=f"rbseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status = args.func(args)
    except RbsegError as exc:
        print(f"rbseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rbseg: interrupted (finished work is saved; re-run with --resume where supported)", file=sys.stderr)
        return 130
    return int(status or 0)
