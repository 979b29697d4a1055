"""``rbseg``: a thin argparse layer over the Python API.

Each command group lives in its own module here and exposes ``register(subparsers)``, which adds
its parsers and sets ``func`` (a callable taking the parsed args and returning an exit status).
User errors (:class:`RbsegError`) print one line and exit non-zero, without a traceback.
"""
from __future__ import annotations

import os


def busy_machine(load1: float, cpus: int) -> bool:
    """More runnable jobs than cores (1-minute load average above 1.25 x the usable cores)."""
    return load1 > 1.25 * max(cpus, 1)


def _omp_wait_policy() -> None:
    """Choose libgomp's wait policy before torch loads (an explicit OMP_WAIT_POLICY always wins).

    Spin-waiting OpenMP threads collapse when other jobs share the cores (one forward 1.05 s instead
    of 0.08 s on a busy 2-core machine), while passive waiting makes an idle machine 1.7x slower on the
    tiny models' small kernels (training step 57 vs 32-35 ms). So: PASSIVE only when the machine is busy.
    """
    if "OMP_WAIT_POLICY" in os.environ or not hasattr(os, "getloadavg"):
        return
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    if busy_machine(os.getloadavg()[0], cpus):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


_omp_wait_policy()

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402

from .. import __version__  # noqa: E402
from ..errors import RbsegError  # noqa: E402

# Command-group modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "data", "score", "zoo", "train", "perturbation", "craft",
    "evaluate", "report", "leaderboard", "check", "predict", "reproduce",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rbseg",
        description="Robustness evaluation suite for semantic segmentation (feature binding, BMVC 2020).",
    )
    parser.add_argument("--version", action="version", version=f"rbseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
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
    from .common import debug_tracebacks, one_line_warnings

    try:
        with one_line_warnings(), debug_tracebacks(args):
            status = args.func(args)
    except RbsegError as exc:
        print(f"rbseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # a read-only or full disk, a missing permission: one line naming the path, never a traceback
        if getattr(args, "debug", False):
            raise
        where = exc.filename or ""
        print(f"rbseg: error: {where + ': ' if where else ''}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rbseg: interrupted (finished work is saved; re-run with --resume where supported)", file=sys.stderr)
        return 130
    return int(status or 0)
