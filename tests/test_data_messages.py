"""Messages of ``rbseg data ...`` / ``rbseg score``: counts pluralised, CLI flags named as the user types them."""
from __future__ import annotations

import numpy as np
import pytest
from vocfactory import VOCTree, stripes, write_png

from robustbench_seg.cli import main
from robustbench_seg.constants import CLASS_INDEX
from robustbench_seg.data import synth
from robustbench_seg.data.check import check_tree, plural
from robustbench_seg.errors import RbsegError

P = CLASS_INDEX["person"]


def test_plural_helper():
    assert plural(0, "problem") == "0 problems"
    assert plural(1, "problem") == "1 problem"
    assert plural(2, "warning") == "2 warnings"
    assert plural(1449, "id") == "1,449 ids"
    assert plural(1, "image") == "1 image" and plural(3, "child", "children") == "3 children"


def test_check_output_says_1_problem_and_1_warning(tmp_path, capsys):
    t = VOCTree(tmp_path)
    t.add("2008_000001", stripes([0, P]), splits=("val",))  # real-VOC ids, 1 of 1,449: one size warning
    write_png(t.root / "SegmentationClass" / "2008_000001.png", stripes([0, 30]))  # one problem
    rep = check_tree(t.root)
    assert len(rep.problems) == 1 and len(rep.warnings) == 1
    assert main(["data", "check", "--data", str(t.root)]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "1 problem (1 warning)" in text
    assert "1 problems" not in text and "1 warnings" not in text
    assert "1 id listed" in text and "1 ids" not in text


def test_clean_check_output_says_1_warning(tmp_path, capsys):
    t = VOCTree(tmp_path)
    t.add("2008_000001", stripes([0, P]), splits=("val",))
    assert main(["data", "check", "--data", str(t.root)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "no problems (1 warning)" in text and "1 warnings" not in text


def test_score_title_says_1_image(tmp_path, capsys):
    t = VOCTree(tmp_path / "voc")
    t.add("2008_000001", stripes([0, P]), splits=("val",))
    pred = tmp_path / "pred"
    write_png(pred / "2008_000001.png", stripes([0, P]))
    assert main(["score", "--pred-dir", str(pred), "--data", str(t.root), "--split", "val"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(1 image)" in text and "1 images" not in text


def test_synth_into_existing_folder_names_only_the_cli_flag(tmp_path, capsys):
    (tmp_path / "VOC2012").mkdir()
    (tmp_path / "VOC2012" / "keep.txt").write_text("not a dataset")
    assert main(["data", "synth", "--out", str(tmp_path), "--preset", "micro"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rbseg: error:") and str(tmp_path / "VOC2012") in err
    assert "--overwrite" in err and "overwrite=True" not in err
    with pytest.raises(RbsegError) as info:
        synth.generate(tmp_path, preset="micro")
    assert "overwrite=True" not in str(info.value) and "--overwrite" in str(info.value)
    assert (tmp_path / "VOC2012" / "keep.txt").read_text() == "not a dataset"


def test_synth_install_race_names_only_the_cli_flag(tmp_path):
    """The second refusal (a tree appeared while generating) words it the same way."""
    tmp = tmp_path / ".VOC2012.tmp-x"
    tmp.mkdir()
    final = tmp_path / "VOC2012"
    final.mkdir()
    (final / "a").write_bytes(np.zeros(1, np.uint8).tobytes())
    with pytest.raises(RbsegError) as info:
        synth._install(tmp, final, overwrite=False)
    assert "overwrite=True" not in str(info.value) and "--overwrite" in str(info.value)
