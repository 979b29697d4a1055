"""``rbseg data ...`` and ``rbseg score`` through ``robustbench_seg.cli.main``: exit codes and output."""
from __future__ import annotations

import json

import pytest

from robustbench_seg.cli import main
from robustbench_seg.data.subsets import SUBSET_NAMES


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "check", "--help"], ["data", "stats", "--help"],
                                  ["data", "subsets", "--help"], ["data", "synth", "--help"], ["score", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0 and "usage: rbseg" in capsys.readouterr().out


def test_data_without_subcommand_and_bad_option(capsys):
    assert main(["data"]) == 2
    assert "SUBCOMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["data", "synth", "--out", "x", "--preset", "huge"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["data", "subsets", "--data", "x", "--cooccur-splits", ","])


def test_synth_then_check_and_subsets(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["data", "synth", "--out", str(out), "--preset", "micro", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    root = out / "VOC2012"
    assert info == {"root": str(root), "preset": "micro", "seed": 0}
    assert main(["data", "synth", "--out", str(out), "--preset", "micro"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rbseg: error:") and "--overwrite" in err and err.count("\n") == 1
    assert main(["data", "synth", "--out", str(out), "--preset", "micro", "--overwrite", "--json"]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--data", str(root)]) == 0
    capsys.readouterr()
    assert main(["data", "subsets", "--data", str(root), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["unavailable"] == {} and list(rep["subsets"]) == list(SUBSET_NAMES)
    assert all(rep["subsets"][name] for name in SUBSET_NAMES), {k: len(v) for k, v in rep["subsets"].items()}
    assert rep["cooccurrence"]["splits"] == ["train_aug", "val"]


def test_subsets_on_ooc_split(synth_micro_root, capsys):
    assert main(["data", "subsets", "--data", str(synth_micro_root), "--split", "ooc", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["split"] == "ooc" and rep["subsets"]["uniq2"]  # every ooc scene holds exactly one pair


def test_voc_samples_commands(voc_samples_root, capsys):
    assert main(["data", "check", "--data", str(voc_samples_root)]) == 0
    capsys.readouterr()
    assert main(["data", "subsets", "--data", str(voc_samples_root)]) == 0
    text = capsys.readouterr().out
    assert "unavailable" in text and "person-bicycle" in text
    assert main(["data", "stats", "--data", str(voc_samples_root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 6
