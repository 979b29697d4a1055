"""Helpers shared by the command modules: JSON output, rich console, common options."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
import warnings
from typing import Any

from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    from ..io import _json_default

    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def add_data_arg(parser, required: bool = True, help_text: str | None = None) -> None:
    """``--data ROOT``, the VOC tree; ``help_text`` for a command whose --data means more (a default, a use)."""
    parser.add_argument(
        "--data", required=required, metavar="ROOT",
        help=help_text or "the VOC2012/ folder that holds JPEGImages/ (real VOC or SynthVOC)",
    )


def add_device_arg(parser) -> None:
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda when available)")


def resolve_device(name: str):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def add_resume_flag(parser, saved: str) -> None:
    """``--resume``; ``saved`` says when the state it continues from was saved ("after the last finished pass")."""
    parser.add_argument("--resume", action="store_true", help=f"continue from the state saved {saved}")


def finish_command(parser, func, *, resume: str | None = None, device: bool = False) -> None:
    """The options a command's parser ends with, in this order, and the function it runs:
    ``--resume`` (when ``resume`` says when the state was saved), ``--device`` (when ``device``), ``--json``."""
    if resume is not None:
        add_resume_flag(parser, resume)
    if device:
        add_device_arg(parser)
    add_json_flag(parser)
    parser.set_defaults(func=func)


def add_command_group(subparsers, name: str, dest: str, **kwargs):
    """A command with subcommands (``rbseg NAME SUBCOMMAND``); on its own it prints its help and exits 2.
    ``kwargs`` go to ``add_parser`` (help, description); returns the subparsers to add the subcommands to."""
    parser = subparsers.add_parser(name, **kwargs)
    sub = parser.add_subparsers(dest=dest, metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    return sub


def comma_separated(text: str, message: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated option value; none: an argparse error ``message``."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError(message)
    return items


@contextlib.contextmanager
def one_line_warnings():
    """Warnings of the suite (``UserWarning`` subclasses defined in ``robustbench_seg``: duplicate ids,
    unfinished checkpoints, missing co-occurrence splits, fp16 export keeping fp32) as one
    ``rbseg: warning:`` line each on stderr, when they happen. ``main()`` wraps every command in it."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, UserWarning) and (getattr(category, "__module__", "") or "").startswith("robustbench_seg"):
                print(f"rbseg: warning: {message}", file=sys.stderr)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def debug_tracebacks(args: argparse.Namespace):
    """Under ``rbseg --debug`` the full traceback of the error behind a one-line error (its cause, e.g.
    a user model's own exception) is printed before that line, once. ``main()`` wraps every command."""
    from ..errors import RbsegError

    try:
        yield
    except RbsegError as exc:
        if getattr(args, "debug", False) and not getattr(exc, "_rbseg_traceback_shown", False):
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            exc._rbseg_traceback_shown = True
        raise
