"""The Table 4 recipes and the perturbations shipped in perturbations/."""
from __future__ import annotations

import numpy as np
import pytest

from robustbench_seg.attacks.perturbation import load_perturbation
from robustbench_seg.attacks.recipes import GDUAP_PRESETS, SHIPPED, UAP_PRESETS, craft_shipped
from robustbench_seg.errors import RbsegError
from robustbench_seg.paths import shipped_perturbations_dir


def test_shipped_recipes_are_table4():
    assert list(SHIPPED) == ["uap-resnet", "uap-googlenet", "gduap-rno", "gduap-rall", "gduap-rpart"]
    assert [SHIPPED[n].surrogate for n in ("uap-resnet", "uap-googlenet")] == ["resnet152", "googlenet"]
    assert [SHIPPED[n].prior for n in ("gduap-rno", "gduap-rall", "gduap-rpart")] == ["none", "all", "partial"]
    assert GDUAP_PRESETS["paper"].size == (513, 513) and GDUAP_PRESETS["paper"].lr == 0.1
    assert UAP_PRESETS["paper"]["cfg"].xi == 10 and UAP_PRESETS["paper"]["cfg"].delta == 0.2
    assert GDUAP_PRESETS["tiny"].size == (96, 96)


def test_craft_shipped_input_errors(tmp_path):
    with pytest.raises(RbsegError, match="unknown shipped perturbation"):
        craft_shipped("uap-vgg", tmp_path, None, {}, tmp_path)
    with pytest.raises(RbsegError, match="needs a resnet152 surrogate"):
        craft_shipped("uap-resnet", tmp_path, None, {"googlenet": tmp_path / "g.pt"}, tmp_path)


def test_shipped_perturbation_files():
    present = [n for n in SHIPPED if (shipped_perturbations_dir() / f"{n}.npy").is_file()]
    if not present:
        pytest.skip("no shipped perturbations in perturbations/")
    for name in present:
        pert = load_perturbation(name)
        m = pert.meta
        assert m["recipe"] == name and m["table4_column"] == SHIPPED[name].table4_column
        assert m["xi"] == 10.0 and m["norm"] == "inf" and float(np.abs(pert.array).max()) <= 10.0 + 1e-4
        assert m["method"] == ("uap" if SHIPPED[name].kind == "uap" else "gd-uap")
        assert 0.0 <= m["fooling_rate"] <= 1.0 and m["crafting_time_s"] > 0 and m["sha256"] == pert.sha256
        if SHIPPED[name].kind == "gd-uap":
            assert m["prior"] == SHIPPED[name].prior and pert.size == (96, 96)
            # files crafted before issue 10 name the zoo baseline; the next regeneration crafts on gduap-source
            assert m["source_model"]["name"] in ("gduap-source", "baseline")


def test_cli_shipped_rejects_unknown_recipe(capsys, tmp_path):
    from robustbench_seg.cli import main

    assert main(["craft", "shipped", "uap-vgg", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown recipe" in err[0]
