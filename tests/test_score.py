"""``rbseg score``: prediction PNGs against the ground truth; every bad-prediction case is one clear line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from vocfactory import VOCTree, stripes, write_png

from robustbench_seg.cli import main
from robustbench_seg.constants import CLASS_INDEX
from robustbench_seg.data import voc
from robustbench_seg.errors import DataError
from robustbench_seg.evaluation.score import format_ids, score_predictions

P, DOG, CAR = CLASS_INDEX["person"], CLASS_INDEX["dog"], CLASS_INDEX["car"]
IDS = ("2008_000001", "2008_000002", "2008_000003")


@pytest.fixture()
def tree(tmp_path):
    t = VOCTree(tmp_path)
    t.add(IDS[0], stripes([0, P, DOG]))  # 8 x 12: 32 px per band
    t.add(IDS[1], stripes([0, 255, CAR]))
    t.add(IDS[2], stripes([P, P]))  # 8 x 8
    return t


def gt_preds(tree, out, mode="P"):
    out.mkdir(exist_ok=True)
    for i in IDS:
        gt = voc.read_mask(voc.mask_path(tree.root, i, "val"))
        write_png(out / f"{i}.png", np.where(gt == 255, 0, gt), mode)  # void pixels: any class, ignored
    return out


def test_ground_truth_scores_100(tree, tmp_path):
    for mode in ("P", "L"):
        res = score_predictions(gt_preds(tree, tmp_path / mode, mode), tree.root, "val")
        m = res.metrics
        assert m.miou == 100.0 and m.pixel_acc == 100.0 and m.classes_counted == 4  # bg, car, dog, person
        assert res.n_images == 3 and m.pixels == 96 + 64 + 64


def test_perturbed_prediction_hand_computed(tree, tmp_path):
    pred_dir = gt_preds(tree, tmp_path / "p")
    write_png(pred_dir / f"{IDS[0]}.png", stripes([0, P, P]))  # the dog band (32 px) predicted as person
    write_png(pred_dir / f"{IDS[1]}.png", stripes([0, 0, 0]))  # the car band (32 px) missed; void ignored
    m = score_predictions(pred_dir, tree.root).metrics
    # bg: gt 32 + 32 = 64, predicted 64 + 32 = 96 -> 64 / 96; person: gt 32 + 64 = 96, pred 128 -> 96 / 128;
    # dog: 0 / 32; car: 0 / 32
    assert m.iou[0] == pytest.approx(100 * 64 / 96) and m.iou[P] == pytest.approx(75.0)
    assert m.iou[DOG] == 0.0 and m.iou[CAR] == 0.0 and m.classes_counted == 4
    assert m.miou == pytest.approx((100 * 64 / 96 + 75) / 4)
    assert m.pixel_acc == pytest.approx(100 * 160 / 224)


def test_format_ids():
    assert format_ids(["a", "b"]) == "a, b"
    assert format_ids([str(k) for k in range(7)]) == "0, 1, 2, 3, 4 and 2 more"


def _error(pred_dir, root) -> str:
    with pytest.raises(DataError) as info:
        score_predictions(pred_dir, root)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(pred_dir))
    return msg


def test_missing_and_extra(tree, tmp_path):
    pred_dir = gt_preds(tree, tmp_path / "p")
    (pred_dir / f"{IDS[1]}.png").unlink()
    write_png(pred_dir / "2011_999999.png", stripes([0]))
    (pred_dir / "notes.txt").write_text("not a prediction")  # non-PNG files are ignored
    msg = _error(pred_dir, tree.root)
    assert f"1 prediction missing for split 'val': {IDS[1]}" in msg
    assert "1 extra prediction for ids not in split 'val': 2011_999999" in msg


def test_many_missing_lists_five_and_a_count(tmp_path):
    t = VOCTree(tmp_path)
    ids = [t.add(f"2008_{k:06d}", stripes([0, P])) for k in range(8)]
    (tmp_path / "p").mkdir()
    write_png(tmp_path / "p" / f"{ids[0]}.png", stripes([0, P]))
    msg = _error(tmp_path / "p", t.root)
    assert "7 predictions missing" in msg and ", ".join(ids[1:6]) + " and 2 more" in msg


def test_mis_sized_bad_values_and_rgb(tree, tmp_path):
    pred_dir = gt_preds(tree, tmp_path / "p")
    write_png(pred_dir / f"{IDS[0]}.png", stripes([0, P]))  # 8 x 8 instead of 8 x 12
    write_png(pred_dir / f"{IDS[1]}.png", stripes([0, 255, 21]))
    write_png(pred_dir / f"{IDS[2]}.png", stripes([P, P]), mode="RGB")
    msg = _error(pred_dir, tree.root)
    assert f"1 prediction of the wrong size: {IDS[0]} (8x8, gt 12x8)" in msg
    assert f"1 prediction with values outside 0-20: {IDS[1]}" in msg
    assert f"1 prediction unreadable or not an index PNG: {IDS[2]}" in msg


def test_void_value_in_prediction_is_an_error(tree, tmp_path):
    pred_dir = gt_preds(tree, tmp_path / "p")
    write_png(pred_dir / f"{IDS[1]}.png", stripes([0, 255, CAR]))  # copied the gt's void
    assert f"values outside 0-20: {IDS[1]}" in _error(pred_dir, tree.root)


def test_missing_folder(tree, tmp_path):
    with pytest.raises(DataError, match="prediction folder not found"):
        score_predictions(tmp_path / "nope", tree.root)


def test_cli(tree, tmp_path, capsys):
    pred_dir = gt_preds(tree, tmp_path / "p")
    assert main(["score", "--pred-dir", str(pred_dir), "--data", str(tree.root), "--split", "val", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["miou"] == 100.0 and out["metrics"]["iou"]["person"] == 100.0
    assert out["metrics"]["iou"]["cat"] is None and out["n_images"] == 3 and out["split"] == "val"
    assert main(["score", "--pred-dir", str(pred_dir), "--data", str(tree.root)]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "100.00" in text and "4 / 21" in text
    (pred_dir / f"{IDS[0]}.png").unlink()
    assert main(["score", "--pred-dir", str(pred_dir), "--data", str(tree.root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("rbseg: error:") and IDS[0] in captured.err


def test_voc_samples_gt_and_perturbed(voc_samples_root, tmp_path):
    ids = voc.read_split(voc_samples_root, "val")
    gts = {i: voc.read_mask(voc.mask_path(voc_samples_root, i, "val")) for i in ids}
    for i, g in gts.items():
        write_png(tmp_path / "gt" / f"{i}.png", np.where(g == 255, 0, g))
    m = score_predictions(tmp_path / "gt", voc_samples_root, "val").metrics
    assert m.miou == 100.0 and m.classes_counted == 4  # background, bicycle, bottle, person

    # every person pixel predicted as background: person IoU 0, background IoU bg / (bg + person)
    for i, g in gts.items():
        write_png(tmp_path / "pert" / f"{i}.png", np.where((g == 255) | (g == P), 0, g), mode="L")
    n_bg = sum(int((g == 0).sum()) for g in gts.values())
    n_person = sum(int((g == P).sum()) for g in gts.values())
    n_valid = sum(int((g != 255).sum()) for g in gts.values())
    m = score_predictions(tmp_path / "pert", voc_samples_root, "val").metrics
    bg_iou = 100 * n_bg / (n_bg + n_person)
    assert m.iou[P] == 0.0 and m.iou[0] == pytest.approx(bg_iou)
    assert m.miou == pytest.approx((bg_iou + 100 + 100 + 0) / 4)
    assert m.pixel_acc == pytest.approx(100 * (n_valid - n_person) / n_valid)
    assert 0 < n_person < n_bg
