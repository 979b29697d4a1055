"""Class sets, frequencies and the co-occurrence matrix on a hand-built tree."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from vocfactory import VOCTree, stripes, write_png

from robustbench_seg.cli import main
from robustbench_seg.constants import CLASS_INDEX, VOC_CLASSES
from robustbench_seg.data import stats
from robustbench_seg.errors import DataError

P, DOG, CAT, CAR = (CLASS_INDEX[c] for c in ("person", "dog", "cat", "car"))


@pytest.fixture()
def tree(tmp_path):
    t = VOCTree(tmp_path)
    t.add("2008_000001", stripes([0, P, DOG]), splits=("train_aug",))
    t.add("2008_000002", stripes([0, P, CAT, DOG]), splits=("train_aug",))
    t.add("2008_000003", stripes([255, CAT]), splits=("train_aug",))
    t.add("2008_000004", stripes([0, P]), splits=("val",))
    t.add("2008_000005", np.full((4, 4), 255, np.uint8), splits=("val",))  # void only
    return t


def test_labels_present_and_foreground():
    m = np.array([[0, 255], [15, 15]], np.uint8)
    assert stats.labels_present(m) == {0, 15}
    assert stats.foreground({0, 15, 3}) == {3, 15}
    assert stats.labels_present(np.full((2, 2), 255, np.uint8)) == frozenset()


def test_class_sets_frequencies_cooccurrence(tree):
    sets = stats.class_sets(tree.root, "train_aug")
    assert list(sets) == ["2008_000001", "2008_000002", "2008_000003"]
    assert sets["2008_000002"] == {0, P, CAT, DOG} and sets["2008_000003"] == {CAT}
    freq = stats.class_frequencies(sets)
    assert freq.tolist() == [2 if c == 0 else {P: 2, DOG: 2, CAT: 2}.get(c, 0) for c in range(21)]
    c = stats.cooccurrence_matrix(sets)
    assert c.dtype == np.int64 and c.shape == (21, 21) and (c == c.T).all()
    assert np.array_equal(np.diag(c), freq)
    assert c[P, DOG] == 2 and c[P, CAT] == 1 and c[CAT, DOG] == 1 and c[0, CAT] == 1 and c[CAR].sum() == 0
    both = stats.dataset_stats(tree.root, ["train_aug", "val"])
    assert both.n_images == 5 and both.per_split_images == {"train_aug": 3, "val": 2}
    assert both.frequencies[P] == 3 and both.cooccurrence[0, P] == 3 and both.frequencies[0] == 3
    js = both.to_json()
    assert js["classes"] == list(VOC_CLASSES) and js["frequencies"]["person"] == 3


def test_merged_sets_count_an_id_once(tree):
    tree.add("2008_000001", stripes([0, P, DOG]), splits=("val",))
    merged = stats.merged_class_sets(tree.root, ["train_aug", "val"])
    assert len(merged) == 5
    assert stats.cooccurrence_matrix(merged)[P, DOG] == 2


def test_cache_is_reused_and_invalidated(tree, monkeypatch):
    stats._MEMORY_CACHE.clear()
    first = stats.class_sets(tree.root, "val")
    assert first["2008_000004"] == {0, P}
    stats._MEMORY_CACHE.clear()
    calls = []
    real = stats.voc.read_mask
    monkeypatch.setattr(stats.voc, "read_mask", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert stats.class_sets(tree.root, "val") == first and calls == []  # from the disk cache
    path = tree.root / "SegmentationClass" / "2008_000004.png"
    write_png(path, stripes([0, CAR]))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert stats.class_sets(tree.root, "val")["2008_000004"] == {0, CAR} and len(calls) == 2


def test_bad_mask_and_missing_split(tree):
    write_png(tree.root / "SegmentationClass" / "2008_000004.png", stripes([0, 40]))
    with pytest.raises(DataError, match="2008_000004.png: label values outside"):
        stats.class_sets(tree.root, "val", cache=False)
    with pytest.raises(DataError, match="train"):
        stats.dataset_stats(tree.root, ["train"])


def test_cli_stats(tree, capsys):
    assert main(["data", "stats", "--data", str(tree.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"] == ["train_aug", "val"] and out["cooccurrence"][P][DOG] == 2
    assert main(["data", "stats", "--data", str(tree.root), "--splits", "val"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "class frequencies over val (2 images)" in text and "co-occurrence" in text
    assert main(["data", "stats", "--data", str(tree.root), "--splits", "test"]) == 2
    assert capsys.readouterr().err.startswith("rbseg: error:")


def test_stats_on_voc_samples(voc_samples_root):
    s = stats.dataset_stats(voc_samples_root, ["train_aug", "val"])
    assert s.n_images == 6 and s.frequencies[P] == 5 and s.frequencies[0] == 6
