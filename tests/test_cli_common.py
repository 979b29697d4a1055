"""main(): every command's suite warnings are one line, --debug shows a traceback once, OSError is one line."""
from __future__ import annotations

import errno
import warnings

from robustbench_seg import cli
from robustbench_seg.data.subsets import CooccurSplitMissing
from robustbench_seg.errors import RbsegError


def _patch_command(monkeypatch, func):
    """`rbseg zoo archs` runs ``func`` instead of its own body."""
    real = cli.build_parser

    def build():
        parser = real()
        for action in parser._subparsers._group_actions:
            for name, sub in action.choices.items():
                if name == "zoo":
                    for a in sub._subparsers._group_actions:
                        a.choices["archs"].set_defaults(func=func)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)


def test_suite_warnings_of_any_command_are_one_line(monkeypatch, capsys):
    def func(args):
        warnings.warn("ImageSets/Segmentation/x.txt: co-occurrence split 'x' has no split list", CooccurSplitMissing)
        return 0

    _patch_command(monkeypatch, func)
    assert cli.main(["zoo", "archs"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rbseg: warning: ImageSets/Segmentation/x.txt: co-occurrence split 'x' has no split list"]


def test_debug_prints_the_traceback_of_the_cause_once(monkeypatch, capsys):
    def func(args):
        try:
            raise ZeroDivisionError("inside the user's model")
        except ZeroDivisionError as exc:
            raise RbsegError("my.model:build: ZeroDivisionError: inside the user's model") from exc

    _patch_command(monkeypatch, func)
    assert cli.main(["zoo", "archs"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rbseg: error: my.model:build: ZeroDivisionError: inside the user's model"]
    assert cli.main(["--debug", "zoo", "archs"]) != 0
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 2  # the cause and the error, printed once
    assert err.strip().splitlines()[-1] == "rbseg: error: my.model:build: ZeroDivisionError: inside the user's model"


def test_os_error_of_any_command_is_one_line_naming_the_path(monkeypatch, capsys):
    def func(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/out.json")

    _patch_command(monkeypatch, func)
    assert cli.main(["zoo", "archs"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["rbseg: error: /full/disk/out.json: No space left on device"]
