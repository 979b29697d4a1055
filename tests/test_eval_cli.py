"""``rbseg evaluate`` and ``rbseg predict`` from the command line: user models, output, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_seg.attacks.perturbation import save_perturbation
from robustbench_seg.cli import main
from robustbench_seg.evaluation.engine import evaluate
from robustbench_seg.io import sha256_file
from test_eval_engine import TinyNet
from vocfactory import VOCTree

SPEC = "test_eval_engine:tiny_net"


@pytest.fixture()
def tree(tmp_path):
    tree = VOCTree(tmp_path / "data")
    rng = np.random.default_rng(2)
    for k in range(6):
        h, w = ((24, 32), (32, 24))[k % 2]
        tree.add(f"im{k:02d}", rng.integers(0, 21, (h, w)).astype(np.uint8), splits=("val",))
    tree.add("t0", np.zeros((20, 28), dtype=np.uint8), splits=("test",))
    return tree.root


@pytest.fixture()
def pert(tmp_path):
    save_perturbation(tmp_path / "p" / "wave.npy", np.full((3, 16, 16), 8.0, dtype=np.float32),
                      {"method": "test", "norm": "inf", "xi": 10})
    return tmp_path / "p" / "wave.npy"


def test_evaluate_module_function_with_weights(tree, pert, tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.save(TinyNet(seed=7).state_dict(), weights)
    argv = ["evaluate", "--model", SPEC, "--weights", str(weights), "--data", str(tree), "--perturbations",
            str(pert), "--subsets", "none", "--out", str(tmp_path / "res"), "--device", "cpu", "--json"]
    assert main(argv) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["perturbation"]["name"] for r in records] == ["clean", "wave"]
    assert records[0]["model"]["sha256"] == sha256_file(weights)
    # the weights were really loaded: same numbers as the seed-7 net given directly
    direct = evaluate(TinyNet(seed=7), tree, perturbations=[str(pert)], subsets="none", out=tmp_path / "direct",
                      device="cpu", progress=False)
    assert [r["subsets"]["all"]["metrics"]["miou"] for r in records] == [r.miou() for r in direct]
    without = evaluate(TinyNet(seed=3), tree, perturbations="none", subsets="none", out=tmp_path / "d3",
                       device="cpu", progress=False)
    assert without[0].miou() != direct[0].miou()

    # the table: one row per input with its drop from clean; a re-run is served from the store
    assert main(argv[:-1]) == 0
    out = capsys.readouterr().out
    assert "clean" in out and "wave" in out and "drop" in out
    drop = records[0]["subsets"]["all"]["metrics"]["miou"] - records[1]["subsets"]["all"]["metrics"]["miou"]
    assert f"{drop:+.2f}" in out


def test_evaluate_show_subsets_on_synth(synth_micro_root, tmp_path, capsys):
    argv = ["evaluate", "--model", SPEC, "--data", str(synth_micro_root), "--perturbations", "none",
            "--subsets", "uniq2,person-horse", "--out", str(tmp_path), "--device", "cpu", "--show-subsets"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "uniq2" in out and "person-horse" in out and "SynthVOC-micro" in out


def test_evaluate_bad_input_one_line(tree, tmp_path, capsys):
    def one_line_error(argv, needle):
        code = main(argv)
        err = capsys.readouterr().err
        assert code != 0
        assert err.count("\n") == 1 and err.startswith("rbseg: error:") and needle in err, err

    base = ["evaluate", "--model", SPEC, "--out", str(tmp_path / "r"), "--device", "cpu", "--subsets", "none"]
    one_line_error(base + ["--data", str(tmp_path / "missing"), "--perturbations", "none"], "missing")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 8), dtype=np.float32))
    one_line_error(base + ["--data", str(tree), "--perturbations", str(bad)], "bad.npy")
    one_line_error(base + ["--data", str(tree), "--perturbations", "no_such_uap"], "no_such_uap")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": [1, 2, 3]}, foreign)
    one_line_error(base + ["--data", str(tree), "--perturbations", "none", "--weights", str(foreign)], "foreign.pt")
    one_line_error(base + ["--data", str(tree), "--perturbations", "none", "--split", "test"], "t0.png")
    one_line_error(base + ["--data", str(tree), "--perturbations", "none", "--batch-size", "0"], "batch")
    one_line_error(["evaluate", "--model", "no.such.module:fn", "--data", str(tree), "--out", str(tmp_path)], "no.such")


def test_predict_cli(tree, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.open(tree / "JPEGImages" / "im00.jpg").save(images / "x.jpg")
    assert main(["predict", "--model", SPEC, "--images", str(images), "--out", str(tmp_path / "o"), "--confidence",
                 "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "o" / "pred" / "x.png").size == (32, 24)
    assert (tmp_path / "o" / "confidence" / "x.png").is_file()
    capsys.readouterr()
    assert main(["predict", "--model", SPEC, "--data", str(tree), "--voc-submission", "--out", str(tmp_path / "s"),
                 "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == 1
    sub = tmp_path / "s" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls" / "t0.png"
    assert Image.open(sub).mode == "P" and Image.open(sub).size == (28, 20)
    assert main(["predict", "--model", SPEC, "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) != 0
    assert capsys.readouterr().err.count("\n") == 1
