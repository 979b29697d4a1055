"""Helpers shared by the command modules: JSON output, rich console, common options."""
from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    from ..io import _json_default

    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def add_data_arg(parser, required: bool = True) -> None:
    parser.add_argument(
        "--data", required=required, metavar="ROOT",
        help="the VOC2012/ folder that holds JPEGImages/ (real VOC or SynthVOC)",
    )


def add_device_arg(parser) -> None:
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda when available)")


def resolve_device(name: str):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
