"""The paper's subsets (NOTES.md "Evaluation subsets") on hand-built trees with hand-computed members."""
from __future__ import annotations

import json

import numpy as np
import pytest
from vocfactory import VOCTree, stripes

from robustbench_seg.cli import main
from robustbench_seg.constants import CLASS_INDEX, NUM_CLASSES, VOC_CLASSES
from robustbench_seg.data.subsets import (
    SUBSET_NAMES,
    CooccurSplitMissing,
    compute_subsets,
    cooccurrence_subsets,
    VOC_COOCCUR_IMAGES,
    max_pair_count,
    scaled_thresholds,
    subset_class,
)
from robustbench_seg.errors import RbsegError

P, HORSE, MBIKE, BIKE, BOTTLE, CAR = (CLASS_INDEX[c] for c in ("person", "horse", "motorbike", "bicycle", "bottle", "car"))
CHAIR, CAT, PLANE, BIRD, BOAT = (CLASS_INDEX[c] for c in ("chair", "cat", "aeroplane", "bird", "boat"))


def _void_bands(labels):
    """Bands of labels with a void column between neighbours (as VOC's object boundaries)."""
    seq = []
    for k, label in enumerate(labels):
        seq += [label] if k == 0 else [255, label]
    return stripes(seq)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """val: ten images A..J with known classes / instances / XML; train_aug: 12 person+horse images."""
    t = VOCTree(tmp_path_factory.mktemp("subsets"))
    for k in range(12):
        t.add(f"2009_{k:06d}", stripes([0, P, HORSE]), splits=("train_aug",))
    # A: person + horse, 2 instances, person occluded -> occ1, obj2, uniq2, person-horse; cooc count 13
    t.add("2008_00000A", stripes([0, P, HORSE]), instances=stripes([0, 1, 2]),
          objects=[("person", True), ("horse", False)])
    # B: one occluded horse -> occ1, occall, obj1, only-horse
    t.add("2008_00000B", stripes([0, HORSE]), instances=stripes([0, 1]), objects=[("horse", True)])
    # C: three cars, all occluded -> occ1, occall, obj3, only-car
    t.add("2008_00000C", stripes([0, CAR, CAR, CAR]), instances=stripes([0, 1, 2, 3]),
          objects=[("car", True)] * 3)
    # D: person, bottle, chair; 5 instances (void boundaries between) -> uniq3, no objK; cooc all
    t.add("2008_00000D", _void_bands([0, P, BOTTLE, CHAIR, P, CHAIR]), instances=_void_bands([0, 1, 2, 3, 4, 5]),
          objects=[("person", False), ("bottle", False), ("chair", False), ("person", False), ("chair", False)])
    # E: void-only mask, XML without objects, no instance mask -> 0 objects: in no subset
    t.add("2008_00000E", np.full((8, 8), 255, np.uint8), objects=[])
    # F: four classes, no instance mask, XML with 4 objects -> obj4 (XML fallback), uniq4
    t.add("2008_00000F", stripes([PLANE, BIKE, BIRD, BOAT]),
          objects=[("aeroplane", False), ("bicycle", True), ("bird", False), ("boat", False)])
    # G: person + motorbike; instance mask has 2 ids though the XML lists 3 objects -> obj2 (mask wins)
    t.add("2008_00000G", stripes([0, P, MBIKE]), instances=stripes([0, 1, 2]),
          objects=[("person", False), ("motorbike", False), ("person", True)])
    # H: background only, one object in the XML that the mask does not show -> obj1 only
    t.add("2008_00000H", stripes([0, 0]), objects=[("cat", False)])
    # I: only bottle, two instances -> obj2, only-bottle
    t.add("2008_00000I", stripes([0, BOTTLE, BOTTLE]), instances=stripes([0, 1, 2]),
          objects=[("bottle", False), ("bottle", True)])
    # J: person + bicycle + void -> person-bicycle, uniq2
    t.add("2008_00000J", _void_bands([0, P, BIKE]), instances=_void_bands([0, 1, 2]),
          objects=[("person", False), ("bicycle", False)])
    return t


def test_subset_names_and_classes():
    assert len(SUBSET_NAMES) == len(set(SUBSET_NAMES)) == 2 + 4 + 3 + 5 + 5 + 5
    assert SUBSET_NAMES[:2] == ("occ1", "occall") and SUBSET_NAMES[-5:] == ("cooc50", "cooc40", "cooc30", "cooc20", "cooc10")
    assert subset_class("person-horse") == 13 and subset_class("only-car") == 7 and subset_class("only-bottle") == 5
    assert subset_class("obj2") is None and subset_class("cooc10") is None
    with pytest.raises(RbsegError, match="unknown subset"):
        subset_class("person-dog")


def test_every_subset_hand_computed(tree):
    rep = compute_subsets(tree.root)
    ids = lambda *letters: [f"2008_00000{x}" for x in letters]  # noqa: E731
    expected = {
        "occ1": ids("A", "B", "C", "F", "G", "I"),
        "occall": ids("B", "C"),
        "obj1": ids("B", "H"),
        "obj2": ids("A", "G", "I", "J"),
        "obj3": ids("C"),
        "obj4": ids("F"),
        "uniq2": ids("A", "G", "J"),
        "uniq3": ids("D"),
        "uniq4": ids("F"),
        "person-horse": ids("A"),
        "person-motorbike": ids("G"),
        "person-bicycle": ids("J"),
        "person-bottle": [],
        "person-car": [],
        "only-horse": ids("B"),
        "only-motorbike": [],
        "only-bicycle": [],
        "only-bottle": ids("I"),
        "only-car": ids("C"),
        # person-horse co-occurs 12 (train_aug) + 1 (A) = 13 times; every other pair at most twice
        "cooc50": ids("A", "D", "F", "G", "J"),
        "cooc40": ids("A", "D", "F", "G", "J"),
        "cooc30": ids("A", "D", "F", "G", "J"),
        "cooc20": ids("A", "D", "F", "G", "J"),
        "cooc10": ids("D", "F", "G", "J"),
    }
    assert rep.unavailable == {}
    assert list(rep.subsets) == list(SUBSET_NAMES)
    assert rep.subsets == expected
    assert rep.cooccur_splits == ["train_aug", "val"]
    c = rep.cooccurrence
    assert c.dtype == np.int64 and c.shape == (NUM_CLASSES, NUM_CLASSES) and (c == c.T).all()
    assert c[P, HORSE] == 13 and c[HORSE, HORSE] == 14 and c[P, P] == 12 + 4  # A, D, G, J
    assert c[P, BIKE] == 1 and c[BOTTLE, BOTTLE] == 2 and c[0, 0] == 12 + 8  # E and F have no background


def test_cooccur_splits_option_and_fallback(tree):
    only_val = compute_subsets(tree.root, cooccur_splits=("val",))
    assert only_val.cooccurrence[P, HORSE] == 1
    assert "2008_00000A" in only_val.subsets["cooc10"]
    with pytest.warns(CooccurSplitMissing, match="trainval"):
        fallback = compute_subsets(tree.root, cooccur_splits=("train_aug", "trainval"))
    assert fallback.cooccur_splits == ["train_aug"] and fallback.requested_cooccur_splits == ["train_aug", "trainval"]
    assert fallback.cooccurrence[P, HORSE] == 12
    with pytest.warns(CooccurSplitMissing, match="nosuchsplit"):
        none = compute_subsets(tree.root, cooccur_splits=("nosuchsplit",))
    assert all(f"cooc{t}" in none.unavailable for t in (50, 40, 30, 20, 10))
    assert not any(name.startswith("cooc") for name in none.subsets)
    assert "nosuchsplit" in none.unavailable["cooc50"] and none.cooccur_splits == []


def test_missing_cooccur_split_is_recorded_and_warned(tree):
    with pytest.warns(CooccurSplitMissing) as caught:
        rep = compute_subsets(tree.root, cooccur_splits=("train_aug", "trainval", "val"))
    assert rep.cooccur_splits_used == ["train_aug", "val"] and rep.cooccur_splits_missing == ["trainval"]
    messages = [str(w.message) for w in caught if issubclass(w.category, CooccurSplitMissing)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert str(tree.root / "ImageSets" / "Segmentation" / "trainval.txt") in messages[0]
    js = rep.to_json()
    assert js["cooccur_splits_used"] == ["train_aug", "val"] and js["cooccur_splits_missing"] == ["trainval"]


def test_no_warning_when_every_cooccur_split_exists(tree, recwarn):
    rep = compute_subsets(tree.root)
    assert rep.cooccur_splits_used == ["train_aug", "val"] and rep.cooccur_splits_missing == []
    assert not [w for w in recwarn if issubclass(w.category, CooccurSplitMissing)]


def test_cli_subsets_json_reports_missing_cooccur_split_and_warns_one_line(tree, capsys):
    assert main(["data", "subsets", "--data", str(tree.root), "--cooccur-splits", "train_aug,trainval",
                 "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["cooccur_splits_used"] == ["train_aug"] and out["cooccur_splits_missing"] == ["trainval"]
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbseg: warning:") and "trainval.txt" in lines[0]
    assert main(["data", "subsets", "--data", str(tree.root), "--cooccur-splits", "train_aug,trainval"]) == 0
    captured = capsys.readouterr()
    assert "trainval.txt" in captured.err and "left out: trainval" in captured.out


def test_ids_in_several_cooccur_splits_count_once(tmp_path):
    t = VOCTree(tmp_path)
    t.add("2008_000001", stripes([0, P, CAT]), splits=("train_aug", "val"), objects=[("person", 0), ("cat", 0)])
    t.add("2008_000002", stripes([0, P, CAT]), splits=("train_aug",))
    rep = compute_subsets(t.root)
    assert rep.cooccurrence[P, CAT] == 2


def test_figure4_example_on_constructed_matrix():
    """Paper: cat and bottle co-occur 18 times, so such images are in every subset but cooc10."""
    cooc = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    cooc[CAT, BOTTLE] = cooc[BOTTLE, CAT] = 18
    cooc[P, CAT] = cooc[CAT, P] = 200
    cooc[P, CHAIR] = cooc[CHAIR, P] = 20  # exactly T: not below 20
    sets = {
        "cat-bottle": frozenset({CAT, BOTTLE}),
        "cat-bottle-person": frozenset({CAT, BOTTLE, P}),
        "person-chair": frozenset({P, CHAIR}),
        "cat": frozenset({CAT}),
        "none": frozenset(),
    }
    got = cooccurrence_subsets(sets, cooc)
    assert got == {
        "cooc50": ["cat-bottle", "person-chair"],
        "cooc40": ["cat-bottle", "person-chair"],
        "cooc30": ["cat-bottle", "person-chair"],
        "cooc20": ["cat-bottle"],
        "cooc10": [],
    }
    assert max_pair_count(frozenset({CAT, BOTTLE, P}), cooc) == 200
    assert max_pair_count(frozenset({CAT}), cooc) is None


def test_missing_xml_for_some_images_is_unavailable_not_empty(tmp_path):
    t = VOCTree(tmp_path)
    t.add("2008_000001", stripes([0, P]), instances=stripes([0, 1]), objects=[("person", True)])
    t.add("2008_000002", stripes([0, CAR]), instances=stripes([0, 1]))  # no XML
    t.add("2008_000003", stripes([0, CAR]))  # neither XML nor instance mask
    with pytest.warns(CooccurSplitMissing, match="train_aug"):  # the tree has no train_aug list
        rep = compute_subsets(t.root)
    assert rep.unavailable["occ1"] == rep.unavailable["occall"]
    assert "no Annotations/*.xml for 2 of 3 images" in rep.unavailable["occ1"]
    assert "2008_000002" in rep.unavailable["occ1"]
    assert "for 1 of 3 images" in rep.unavailable["obj1"] and "2008_000003" in rep.unavailable["obj1"]
    assert not any(n in rep.subsets for n in ("occ1", "occall", "obj1", "obj2", "obj3", "obj4"))
    assert rep.subsets["only-car"] == ["2008_000002", "2008_000003"]
    js = rep.to_json()
    assert set(js) == {"split", "subsets", "unavailable", "cooccur_splits_used", "cooccur_splits_missing",
                       "cooc_thresholds", "cooc_scaling", "cooccurrence"}
    assert "occ1" not in js["subsets"] and "occ1" in js["unavailable"]


def test_instance_masks_without_xml_still_give_object_counts(tmp_path):
    t = VOCTree(tmp_path)
    t.add("2008_000001", stripes([0, P, P]), instances=stripes([0, 1, 2]))
    t.add("2008_000002", _void_bands([0, CAR]), instances=_void_bands([0, 1]))
    with pytest.warns(CooccurSplitMissing, match="train_aug"):  # the tree has no train_aug list
        rep = compute_subsets(t.root)
    assert rep.subsets["obj2"] == ["2008_000001"] and rep.subsets["obj1"] == ["2008_000002"]
    assert "occ1" in rep.unavailable and "obj1" not in rep.unavailable


def test_to_json_shape_and_cli(tree, capsys):
    rep = compute_subsets(tree.root)
    js = rep.to_json()
    assert set(js) == {"split", "subsets", "unavailable", "cooccur_splits_used", "cooccur_splits_missing",
                       "cooc_thresholds", "cooc_scaling", "cooccurrence"}
    assert js["cooccur_splits_used"] == ["train_aug", "val"] and js["cooccur_splits_missing"] == []
    assert js["cooc_thresholds"] == {"cooc50": 50, "cooc40": 40, "cooc30": 30, "cooc20": 20, "cooc10": 10}
    assert js["cooc_scaling"] == {"mode": "auto", "scaled": False}
    assert js["cooccurrence"]["classes"] == list(VOC_CLASSES)
    assert js["cooccurrence"]["splits"] == ["train_aug", "val"]
    assert np.array_equal(np.array(js["cooccurrence"]["matrix"]), rep.cooccurrence)
    assert main(["data", "subsets", "--data", str(tree.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(json.dumps(js))
    assert main(["data", "subsets", "--data", str(tree.root), "--cooccur-splits", "val"]) == 0
    text = capsys.readouterr().out
    assert "person-horse" in text and "cooc10" in text


def test_scaled_thresholds_follow_dataset_size_stay_distinct_never_grow():
    assert scaled_thresholds(VOC_COOCCUR_IMAGES) == (50, 40, 30, 20, 10)
    assert scaled_thresholds(3 * VOC_COOCCUR_IMAGES) == (50, 40, 30, 20, 10)  # never scaled up
    assert scaled_thresholds(4600) == (19, 15, 11, 8, 4)  # 4600 / 12031 = 0.382 (the bench preset)
    assert scaled_thresholds(460) == (5, 4, 3, 2, 1)  # rounding would give 2, 2, 1, 1, 0: kept distinct
    assert scaled_thresholds(0) == (5, 4, 3, 2, 1)


def _rare_pairs_tree(root, scaling_flag):
    """train_aug: 6 images person+horse, 2 car+bottle; val: person+horse (count 7), car+bottle (count 3),
    bird+boat (count 1), person alone."""
    t = VOCTree(root)
    for k in range(6):
        t.add(f"2009_{k:06d}", stripes([0, P, HORSE]), splits=("train_aug",))
    for k in range(2):
        t.add(f"2009_1{k:05d}", stripes([0, CAR, BOTTLE]), splits=("train_aug",))
    t.add("2008_00000A", stripes([0, P, HORSE]))
    t.add("2008_00000B", stripes([0, CAR, BOTTLE]))
    t.add("2008_00000C", stripes([0, BIRD, BOAT]))
    t.add("2008_00000D", stripes([0, P]))
    if scaling_flag is not None:
        (t.root / "synthvoc.json").write_text(json.dumps({"dataset": "SynthVOC-x", "cooc_threshold_scaling": scaling_flag}))
    return t


def test_cooc_threshold_scaling_modes_and_record(tmp_path):
    plain = _rare_pairs_tree(tmp_path / "voc", None)  # a non-SynthVOC tree: auto keeps the paper's values
    rep = compute_subsets(plain.root)
    assert rep.cooc_thresholds == {f"cooc{t}": t for t in (50, 40, 30, 20, 10)}
    assert rep.cooc_scaling == {"mode": "auto", "scaled": False}
    assert all(rep.subsets[f"cooc{t}"] == ["2008_00000A", "2008_00000B", "2008_00000C"] for t in (50, 40, 30, 20, 10))
    # 12 images counted: thresholds 5, 4, 3, 2, 1; worst pair counts A 7, B 3, C 1
    on = compute_subsets(plain.root, cooc_scale="on")
    assert on.cooc_thresholds == {"cooc50": 5, "cooc40": 4, "cooc30": 3, "cooc20": 2, "cooc10": 1}
    assert on.cooc_scaling["scaled"] is True and on.cooc_scaling["cooccur_images"] == 12
    assert on.cooc_scaling["reference_images"] == VOC_COOCCUR_IMAGES
    assert on.subsets["cooc50"] == on.subsets["cooc40"] == ["2008_00000B", "2008_00000C"]
    assert on.subsets["cooc30"] == on.subsets["cooc20"] == ["2008_00000C"] and on.subsets["cooc10"] == []
    assert on.to_json()["cooc_thresholds"] == on.cooc_thresholds
    synth_tree = _rare_pairs_tree(tmp_path / "synth", True)  # a tree that asks for scaling: auto scales
    assert compute_subsets(synth_tree.root).subsets == on.subsets
    assert compute_subsets(synth_tree.root, cooc_scale="off").cooc_thresholds == rep.cooc_thresholds
    legacy = _rare_pairs_tree(tmp_path / "legacy", False)  # SynthVOC tiny/micro: not scaled until regenerated
    assert compute_subsets(legacy.root).cooc_thresholds == rep.cooc_thresholds
    with pytest.raises(RbsegError, match="cooc_scale"):
        compute_subsets(plain.root, cooc_scale="yes")


def test_cli_subsets_cooc_scale_option(tmp_path, capsys):
    t = _rare_pairs_tree(tmp_path / "voc", None)
    assert main(["data", "subsets", "--data", str(t.root), "--json", "--cooc-scale", "on"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cooc_thresholds"]["cooc10"] == 1 and out["cooc_scaling"]["mode"] == "on"
    assert main(["data", "subsets", "--data", str(t.root)]) == 0
    assert "thresholds 50/40/30/20/10" in capsys.readouterr().out


def test_bad_inputs(tree, tmp_path, capsys):
    assert main(["data", "subsets", "--data", str(tree.root), "--split", "trainval"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rbseg: error:") and "trainval" in err and err.count("\n") == 1
    t = VOCTree(tmp_path)
    t.add("2008_000001", stripes([0, 22]))  # label 22 is not a VOC label
    with pytest.raises(RbsegError, match="label values outside"):
        compute_subsets(t.root)


def test_voc_samples(voc_samples_root):
    rep = compute_subsets(voc_samples_root)
    assert rep.subsets["uniq2"] == ["2007_000129", "2007_000346"]  # {bicycle, person}, {bottle, person}
    assert rep.subsets["person-bicycle"] == ["2007_000129"] and rep.subsets["person-bottle"] == ["2007_000346"]
    assert set(rep.unavailable) == {"occ1", "occall", "obj1", "obj2", "obj3", "obj4"}
    assert rep.cooccurrence[P, BOTTLE] == 3  # 2007_000346, 2011_000003, 2011_003066
