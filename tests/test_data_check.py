"""``data check``: a clean tree passes; every kind of broken file is reported with its name."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from vocfactory import VOCTree, stripes, write_jpeg, write_png, write_split, write_xml

from robustbench_seg.cli import main
from robustbench_seg.constants import CLASS_INDEX
from robustbench_seg.data.check import check_tree, looks_like_real_voc
from robustbench_seg.data.voc import read_mask
from robustbench_seg.errors import DataError

P, HORSE, CAR = CLASS_INDEX["person"], CLASS_INDEX["horse"], CLASS_INDEX["car"]


def build(tmp_path) -> VOCTree:
    """A clean little tree: train, val, trainval, train_aug, XML and instance masks."""
    t = VOCTree(tmp_path)
    t.add("2008_000001", stripes([0, P, HORSE]), splits=("train", "trainval", "train_aug"),
          instances=stripes([0, 1, 2]), objects=[("person", True), ("horse", False)])
    t.add("2008_000002", stripes([0, CAR]), splits=("train", "trainval", "train_aug"), mask_mode="P")
    t.add("2008_000003", stripes([0, 255, P]), splits=("val", "trainval"),
          instances=stripes([0, 255, 1]), objects=[("person", False)])
    return t


def problems(root, **kw) -> list[tuple[str, str]]:
    return [(p.file, p.problem) for p in check_tree(root, **kw).problems]


def test_clean_tree(tmp_path):
    t = build(tmp_path)
    rep = check_tree(t.root)
    assert rep.ok and rep.problems == []
    assert rep.splits == {"train": 2, "train_aug": 2, "trainval": 3, "val": 1}
    assert rep.checked == {"images": 3, "masks": 5, "annotations": 2, "instance masks": 2}
    assert rep.real_voc and len(rep.warnings) == 4  # partial: sizes are warnings, not problems


def test_l_mode_allowed_in_aug_only(tmp_path):
    t = build(tmp_path)
    write_png(t.root / "SegmentationClassAug" / "2008_000002.png", stripes([0, CAR]), mode="L")
    assert problems(t.root) == []
    write_png(t.root / "SegmentationClass" / "2008_000002.png", stripes([0, CAR]), mode="L")
    assert problems(t.root) == [("SegmentationClass/2008_000002.png", "mask is mode L, expected a palette ('P') PNG")]


@pytest.mark.parametrize(
    "breakage, file, words",
    [
        ("missing_image", "JPEGImages/2008_000002.jpg", "file not found"),
        ("missing_mask", "SegmentationClass/2008_000003.png", "file not found"),
        ("missing_aug_mask", "SegmentationClassAug/2008_000001.png", "file not found"),
        ("size_mismatch", "SegmentationClass/2008_000003.png", "mask size 16x8 != image size 12x8"),
        ("bad_label", "SegmentationClass/2008_000003.png", "label values outside 0-20/255: [21, 77]"),
        ("truncated_jpeg", "JPEGImages/2008_000003.jpg", "unreadable or truncated image"),
        ("garbage_png", "SegmentationClassAug/2008_000002.png", "unreadable or truncated image"),
        ("rgb_mask", "SegmentationClassAug/2008_000002.png", "mask is mode RGB"),
        ("rgb_mask_voc", "SegmentationClass/2008_000003.png", "mask is mode RGB"),
        ("duplicate_id", "ImageSets/Segmentation/val.txt", "duplicate id '2008_000003' (listed 2 times)"),
        ("listed_without_files", "JPEGImages/2008_000009.jpg", "file not found"),
        ("bad_xml", "Annotations/2008_000001.xml", "malformed XML"),
        ("xml_size", "Annotations/2008_000003.xml", "<size> 20x8 != image size 12x8"),
        ("xml_class", "Annotations/2008_000003.xml", "'unicorn' is not a VOC class"),
        ("bbox_outside", "Annotations/2008_000003.xml", "outside the 12x8 image"),
        ("instance_size", "SegmentationObject/2008_000001.png", "instance mask size 8x8 != image size 12x8"),
        ("instance_beyond_xml", "SegmentationObject/2008_000003.png", "instance ids [2]"),
        ("instance_wrong_class", "SegmentationObject/2008_000001.png", "instance 2 is a horse in the XML"),
        ("trainval", "ImageSets/Segmentation/trainval.txt", "trainval != train + val"),
        ("empty_split", "ImageSets/Segmentation/val.txt", "split list is empty"),
    ],
)
def test_each_problem_is_named(tmp_path, breakage, file, words):
    t = build(tmp_path)
    r = t.root
    if breakage == "missing_image":
        (r / file).unlink()
    elif breakage in ("missing_mask", "missing_aug_mask"):
        (r / file).unlink()
    elif breakage == "size_mismatch":
        write_png(r / file, stripes([0, 0, 0, P]))
    elif breakage == "bad_label":
        write_png(r / file, stripes([0, 21, 77]))
    elif breakage == "truncated_jpeg":
        data = (r / file).read_bytes()
        (r / file).write_bytes(data[: len(data) // 2])
    elif breakage == "garbage_png":
        (r / file).write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    elif breakage in ("rgb_mask", "rgb_mask_voc"):
        write_png(r / file, stripes([0, CAR] if "Aug" in file else [0, 255, P]), mode="RGB")
    elif breakage == "duplicate_id":
        write_split(r, "val", ["2008_000003", "2008_000003"])
    elif breakage == "listed_without_files":
        write_split(r, "val", ["2008_000003", "2008_000009"])
        write_split(r, "trainval", ["2008_000001", "2008_000002", "2008_000003", "2008_000009"])
    elif breakage == "bad_xml":
        (r / file).write_text("<annotation><object><name>person</name>", encoding="utf-8")
    elif breakage == "xml_size":
        write_xml(r / file, [("person", False, (1, 1, 5, 5))], size=(20, 8))
    elif breakage == "xml_class":
        write_xml(r / file, [("unicorn", False)], size=(12, 8))
    elif breakage == "bbox_outside":
        write_xml(r / file, [("person", False, (3, 1, 40, 8))], size=(12, 8))
    elif breakage == "instance_size":
        write_png(r / file, np.zeros((8, 8), np.uint8))
    elif breakage == "instance_beyond_xml":
        write_png(r / file, stripes([0, 255, 2]))
    elif breakage == "instance_wrong_class":
        write_png(r / file, stripes([0, 2, 1]))  # swapped: instance 2 (horse) now over the person band
    elif breakage == "trainval":
        write_split(r, "trainval", ["2008_000001", "2008_000003"])
    elif breakage == "empty_split":
        write_split(r, "val", [])
        write_split(r, "trainval", ["2008_000001", "2008_000002"])
    found = problems(r)
    assert any(f == file and words in msg for f, msg in found), found
    # one problem each, except: an id without files lacks its image and its mask; swapped instances
    # put each of the two on the other's class
    assert len(found) == (2 if breakage in ("listed_without_files", "instance_wrong_class") else 1), found


def test_bad_tree_cli_exit_1_and_json(tmp_path, capsys):
    t = build(tmp_path)
    (t.root / "JPEGImages" / "2008_000002.jpg").unlink()
    write_png(t.root / "SegmentationClass" / "2008_000003.png", stripes([0, 255, 30]))
    assert main(["data", "check", "--data", str(t.root), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert {p["file"] for p in out["problems"]} == {"JPEGImages/2008_000002.jpg", "SegmentationClass/2008_000003.png"}
    assert main(["data", "check", "--data", str(t.root)]) == 1
    text = capsys.readouterr().out
    assert "2 problems" in text and "JPEGImages/2008_000002.jpg" in text


def test_cli_clean_and_missing_root(tmp_path, capsys):
    t = build(tmp_path)
    assert main(["data", "check", "--data", str(t.root)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["data", "check", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rbseg: error:") and "not found" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", "--data", str(tmp_path / "empty")]) == 2


def test_no_split_lists(tmp_path):
    t = VOCTree(tmp_path)
    write_jpeg(t.root / "JPEGImages" / "a.jpg", 4, 4)
    assert problems(t.root) == [("ImageSets/Segmentation", "no split lists (*.txt) found")]


def test_test_split_needs_no_masks(tmp_path):
    t = build(tmp_path)
    t.add("2008_000010", stripes([0, P]), splits=("test",))
    assert not (t.root / "SegmentationClass" / "2008_000010.png").exists()
    assert problems(t.root) == []


def test_real_voc_rule(tmp_path):
    assert looks_like_real_voc(tmp_path, ["2007_000129", "2011_003066"])
    assert not looks_like_real_voc(tmp_path, ["2007_000129", "val_000001"])
    assert not looks_like_real_voc(tmp_path, [])
    (tmp_path / "synthvoc.json").write_text("{}")
    assert not looks_like_real_voc(tmp_path, ["2007_000129"])


def test_split_sizes_partial_warning_strict_error_and_near_complete_error(tmp_path):
    t = build(tmp_path)
    rep = check_tree(t.root)
    assert rep.ok and {w.file for w in rep.warnings} == {
        f"ImageSets/Segmentation/{s}.txt" for s in ("train", "val", "trainval", "train_aug")}
    strict = problems(t.root, strict_sizes=True)
    assert ("ImageSets/Segmentation/val.txt", "1 id listed, real VOC 2012 val has 1,449") in strict
    # a val list with more than half the real ids but not all of them is a damaged list: an error
    ids = [f"2009_{k:06d}" for k in range(800)]
    mask = stripes([0, P], h=2, w=2)
    for i in ids:
        write_jpeg(t.root / "JPEGImages" / f"{i}.jpg", 2, 2)
        write_png(t.root / "SegmentationClass" / f"{i}.png", mask)
    write_split(t.root, "val", ids)
    write_split(t.root, "trainval", ["2008_000001", "2008_000002"] + ids)
    found = problems(t.root)
    assert found == [("ImageSets/Segmentation/val.txt", "800 ids listed, real VOC 2012 val has 1,449")]


def test_synth_tree_is_not_size_checked(synth_micro_root, capsys):
    rep = check_tree(synth_micro_root)
    assert rep.ok and rep.synthetic and not rep.real_voc and rep.warnings == [], rep.problems[:5]
    assert rep.checked["instance masks"] == rep.checked["images"] > 0
    assert main(["data", "check", "--data", str(synth_micro_root), "--strict-sizes"]) == 0


def test_voc_samples_clean_with_size_warnings(voc_samples_root, capsys):
    rep = check_tree(voc_samples_root)
    assert rep.ok, rep.problems
    assert rep.real_voc and rep.splits == {"train_aug": 4, "val": 2}
    assert rep.checked == {"images": 6, "masks": 6}
    assert {w.file for w in rep.warnings} == {"ImageSets/Segmentation/val.txt", "ImageSets/Segmentation/train_aug.txt"}
    assert main(["data", "check", "--data", str(voc_samples_root)]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--data", str(voc_samples_root), "--strict-sizes", "--json"]) == 1
    assert len(json.loads(capsys.readouterr().out)["problems"]) == 2


def test_voc_samples_copy_with_damage(voc_samples_root, tmp_path):
    root = tmp_path / "VOC2012"
    shutil.copytree(voc_samples_root, root)
    mask = root / "SegmentationClass" / "2007_000129.png"
    mask.write_bytes(mask.read_bytes()[:200])
    found = problems(root)
    assert len(found) == 1 and found[0][0] == "SegmentationClass/2007_000129.png"
    assert "unreadable or truncated" in found[0][1]
    with pytest.raises(DataError, match="2007_000129.png"):
        read_mask(mask)
