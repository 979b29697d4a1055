"""Issue 10: user model builders that fail, modules in the current folder, ``finished`` in load_model's
info, and ``zoo list``/``zoo verify`` with a missing ``--models-dir``."""
from __future__ import annotations

import sys
import uuid

import pytest
import torch

from robustbench_seg.cli import main
from robustbench_seg.errors import RbsegError
from robustbench_seg.models import build_model, load_model, model_config
from robustbench_seg.models.checkpoint import make_checkpoint, save_checkpoint
from robustbench_seg.models.loading import ModelBuildError
from usermodels import USER_MODULE

pytestmark = pytest.mark.usefixtures("one_thread")


def _module_name() -> str:
    return f"rbseg_user_{uuid.uuid4().hex[:8]}"  # fresh per test: nothing cached in sys.modules


def test_builder_that_raises_is_one_line_naming_the_spec(tmp_path, monkeypatch):
    name = _module_name()
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelBuildError) as exc:
        load_model(f"{name}:broken")
    msg = str(exc.value)
    assert "\n" not in msg and f"{name}:broken" in msg and "ValueError: width must be even, got 7" in msg
    assert isinstance(exc.value.__cause__, ValueError)  # chained: `rbseg --debug` shows the traceback


def test_module_that_raises_on_import_is_one_line(tmp_path, monkeypatch):
    name = _module_name()
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('needs a GPU driver')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelBuildError, match=r"RuntimeError: needs a GPU driver") as exc:
        load_model(f"{name}:build")
    assert "\n" not in str(exc.value) and f"{name}:build" in str(exc.value)


def test_module_in_the_current_folder_is_found_without_pythonpath(tmp_path, monkeypatch):
    name = _module_name()
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    path_before = list(sys.path)
    model, info = load_model(f"{name}:build")
    assert info["source"] == "module" and info["finished"] is True
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 8, 8))["out"].shape == (1, 21, 8, 8)
    assert sys.path == path_before  # the current folder was only searched for that import
    with pytest.raises(RbsegError, match="current folder"):
        load_model(f"{_module_name()}:build")


def test_builder_failure_through_the_cli_is_one_line(tmp_path, monkeypatch, capsys, synth_micro_root):
    name = _module_name()
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    rc = main(["evaluate", "--model", f"{name}:broken", "--data", str(synth_micro_root), "--perturbations", "none",
               "--subsets", "none", "--out", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "ValueError: width must be even" in err
    rc = main(["--debug", "evaluate", "--model", f"{name}:broken", "--data", str(synth_micro_root), "--perturbations",
               "none", "--subsets", "none", "--out", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" in err and 'raise ValueError("width must be even' in err  # the builder's own frame


def test_info_finished_of_checkpoint_kinds(tmp_path):
    model = build_model("deeplabv3_tiny")
    mcfg = model_config("deeplabv3_tiny")
    for kind, sections, expected in (
        ("inference", {}, True),  # an export or zoo file without the key
        ("training", {"finished": False, "progress": {"global_step": 3}}, False),
        ("training", {"progress": {"global_step": 3}, "training": {"steps": 10}}, False),  # old, mid-run
        ("training", {"progress": {"global_step": 10, "finished": True}, "training": {"steps": 10}}, True),
    ):
        path = tmp_path / f"{kind}-{expected}-{len(sections)}.pt"
        save_checkpoint(path, make_checkpoint(model, mcfg, kind, **sections))
        _, info = load_model(str(path))
        assert info["finished"] is expected, (kind, sections)


@pytest.mark.parametrize("command", ["list", "verify"])
def test_zoo_commands_with_a_missing_models_dir_fail_in_one_line(tmp_path, capsys, command):
    missing = tmp_path / "nonexistent"
    rc = main(["zoo", command, "--models-dir", str(missing)])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and str(missing) in err and "not found" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["zoo", command, "--models-dir", str(empty), "--json"]) == 0
