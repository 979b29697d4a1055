"""SynthVOC generator: layout, mask/XML consistency, occlusion, determinism, splits, sampling."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from robustbench_seg.constants import CLASS_INDEX, IGNORE_INDEX, VOC_CLASSES
from robustbench_seg.data import synth, voc
from robustbench_seg.errors import RbsegError

SPLITS = ("train", "val", "trainval", "train_aug", "ooc")
PERSON = CLASS_INDEX["person"]


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _fg(mask: np.ndarray) -> frozenset[int]:
    return frozenset(int(v) for v in np.unique(mask) if 0 < v < IGNORE_INDEX)


def _class_sets(root: Path, split: str) -> dict[str, frozenset[int]]:
    return {i: _fg(voc.read_mask(voc.mask_path(root, i, split))) for i in voc.read_split(root, split)}


# --- layout ------------------------------------------------------------------------------------

def test_layout_and_split_lists(synth_micro_root):
    root = synth_micro_root
    assert root.name == "VOC2012" and voc.resolve_root(root) == root
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "SegmentationObject", "Annotations"):
        assert (root / folder).is_dir(), folder
    assert not list(root.parent.glob(".VOC2012.tmp-*")), "temporary folder left behind"
    ids = {s: voc.read_split(root, s) for s in SPLITS}
    p = synth.PRESETS["micro"]
    assert (len(ids["train"]), len(ids["val"]), len(ids["ooc"])) == (p.n_train, p.n_val, p.n_ooc)
    assert ids["train_aug"] == ids["train"]
    assert ids["trainval"] == ids["train"] + ids["val"]
    assert not set(ids["train"]) & set(ids["val"]) and not set(ids["ooc"]) & set(ids["trainval"])
    for s in SPLITS:
        assert len(set(ids[s])) == len(ids[s])
    every = set(ids["trainval"]) | set(ids["ooc"])
    assert {p.stem for p in (root / "JPEGImages").glob("*.jpg")} == every
    assert {p.stem for p in (root / "SegmentationClassAug").glob("*.png")} == set(ids["train_aug"])
    for i in ids["train"]:  # train_aug masks: the same content as SegmentationClass
        assert (root / "SegmentationClassAug" / f"{i}.png").read_bytes() == (root / "SegmentationClass" / f"{i}.png").read_bytes()
    meta = json.loads((root / "synthvoc.json").read_text())
    assert meta["dataset"] == "SynthVOC-micro" and meta["seed"] == 0 and meta["splits"]["val"] == p.n_val


def test_images_and_masks_are_valid_palette_pngs(synth_micro_root):
    root = synth_micro_root
    ids = voc.read_split(root, "trainval") + voc.read_split(root, "ooc")
    sizes = set()
    for i in ids:
        img = voc.read_image(voc.image_path(root, i))
        cls = voc.read_mask(voc.mask_path(root, i, "val"), require_palette=True)
        inst, mode = voc.read_label_png(voc.instance_path(root, i), require_palette=True)
        assert mode == "P"
        assert img.shape == (*cls.shape, 3) and inst.shape == cls.shape
        lo, hi = synth.PRESETS["micro"].min_side, synth.PRESETS["micro"].max_side
        assert lo <= cls.shape[0] <= hi and lo <= cls.shape[1] <= hi
        # background, foreground and a void boundary are all present; void is shared by both masks
        assert (cls == 0).any() and _fg(cls) and (cls == IGNORE_INDEX).any()
        assert np.array_equal(cls == IGNORE_INDEX, inst == IGNORE_INDEX)
        assert np.array_equal(cls == 0, inst == 0)
        sizes.add(cls.shape)
    assert len(sizes) > 5  # image sizes vary
    ds = voc.VOCSegmentation(root, "train_aug")
    x, y, _ = ds[0]
    assert x.shape[0] == 3 and x.shape[1:] == y.shape


def test_annotations_agree_with_instance_masks(synth_micro_root):
    root = synth_micro_root
    n_occluded = n_truncated = n_objects = 0
    for i in voc.read_split(root, "trainval") + voc.read_split(root, "ooc"):
        cls = voc.read_mask(voc.mask_path(root, i, "val"))
        inst, _ = voc.read_label_png(voc.instance_path(root, i))
        objs = voc.read_annotation(voc.annotation_path(root, i))
        ids_present = sorted(int(v) for v in np.unique(inst) if 0 < v < IGNORE_INDEX)
        assert ids_present == list(range(1, len(objs) + 1)), i
        H, W = cls.shape
        for k, obj in enumerate(objs, start=1):
            pix = inst == k
            assert set(np.unique(cls[pix]).tolist()) == {obj.label}, (i, k)  # one class per instance
            ys, xs = np.nonzero(pix)
            x0, y0, x1, y1 = obj.bbox  # 1-based inclusive; covers every labelled pixel
            assert 1 <= x0 <= xs.min() + 1 and xs.max() + 1 <= x1 <= W, (i, k)
            assert 1 <= y0 <= ys.min() + 1 and ys.max() + 1 <= y1 <= H, (i, k)
            if xs.min() == 0 or ys.min() == 0 or xs.max() == W - 1 or ys.max() == H - 1:
                assert obj.truncated, (i, k)
            assert not obj.difficult
            n_occluded += obj.occluded
            n_truncated += obj.truncated
            n_objects += 1
        assert _fg(cls) == {o.label for o in objs}
    assert 0 < n_occluded < n_objects and 0 < n_truncated < n_objects


def test_annotation_xml_fields(synth_micro_root):
    import xml.etree.ElementTree as ET

    root = synth_micro_root
    i = voc.read_split(root, "val")[0]
    tree = ET.parse(voc.annotation_path(root, i)).getroot()
    assert tree.findtext("filename") == f"{i}.jpg"
    H, W = voc.read_mask(voc.mask_path(root, i, "val")).shape
    assert (int(tree.findtext("size/width")), int(tree.findtext("size/height")), int(tree.findtext("size/depth"))) == (W, H, 3)
    for obj in tree.iter("object"):
        for key in ("name", "truncated", "occluded", "difficult", "bndbox/xmin", "bndbox/ymin", "bndbox/xmax", "bndbox/ymax"):
            assert obj.findtext(key) is not None, key


# --- occlusion, recomputed from the depth order ------------------------------------------------

def test_occlusion_recomputed_from_depth_order():
    seen_occluded = seen_clear = 0
    for idx in range(12):
        rng = np.random.default_rng(idx)
        classes = ((PERSON, 3), (CLASS_INDEX["car"], 2), (CLASS_INDEX["dog"], 1))
        scene = synth.render_scene(rng, 80, 96, classes, occluder_prob=0.5, keep_layers=True)
        for k, obj in enumerate(scene.objects, start=1):
            pos = next(j for j, (oid, _) in enumerate(scene.layers) if oid == k)
            drawn = scene.layers[pos][1]
            # instance pixels and layers of different draw order: occluders are drawn after all instances
            later = [m for j, (oid, m) in enumerate(scene.layers) if j > pos]
            covered = np.logical_or.reduce([drawn & m for m in later]) if later else np.zeros_like(drawn)
            assert obj.drawn == int(drawn.sum()) and obj.visible == int((drawn & ~covered).sum())
            occ = covered.sum() / drawn.sum()
            assert obj.occlusion == pytest.approx(occ)
            assert obj.occluded == (occ >= synth.OCCLUSION_THRESHOLD)
            assert obj.visible >= max(12, int(0.004 * 80 * 96))
            labelled = scene.objects_map == k
            assert not (labelled & ~drawn).any() and not (labelled & covered).any()
            truncated = drawn[0].any() or drawn[-1].any() or drawn[:, 0].any() or drawn[:, -1].any()
            assert obj.truncated == truncated
            seen_occluded += obj.occluded
            seen_clear += not obj.occluded
        # a dropped instance leaves void where it stayed visible, never a label
        for j, (oid, m) in enumerate(scene.layers):
            if oid == -1:
                later = [mm for jj, (_, mm) in enumerate(scene.layers) if jj > j]
                vis = m & ~np.logical_or.reduce(later) if later else m
                assert np.all(scene.classes[vis] == IGNORE_INDEX)
    assert seen_occluded > 0 and seen_clear > 0


def test_occlude_all_and_object_count_specs():
    p = synth.PRESETS["micro"]
    spec = synth.SceneSpec((PERSON,), (2,), occlude_all=True, pattern="occall")
    scene = synth.make_scene(5, "val", 0, spec, p)
    assert scene.objects and all(o.occluded for o in scene.objects)
    spec = synth.SceneSpec((CLASS_INDEX["cat"], PERSON), (1, 3), total=4, pattern="obj4")
    scene = synth.make_scene(5, "val", 1, spec, p)
    assert len(scene.objects) == 4 and {o.label for o in scene.objects} == {CLASS_INDEX["cat"], PERSON}


def test_void_boundary_sides():
    depth = np.zeros((5, 6), dtype=np.int16)
    depth[1:4, 1:3] = 1
    depth[1:4, 3:5] = 2  # instance 2 in front of instance 1
    void = synth._void_boundary(depth, 1)
    # background side around the union; the behind instance (1) side between the two instances
    assert void[0, 1] and void[1, 0] and void[4, 4] and void[2, 5]
    assert void[2, 2] and not void[2, 3]
    assert not void[2, 1] and not void[2, 4] and not void[0, 0]


# --- classes: shapes, colours, sampling --------------------------------------------------------

def test_every_class_has_its_own_shape_and_shared_palettes():
    fg = VOC_CLASSES[1:]
    assert set(synth._SHAPES) == set(fg) == set(synth._STYLES)
    ys, xs = np.mgrid[-1:1:97j, -1.6:1.6:155j]
    q = np.full(4, 0.5)
    masks = {}
    for name in fg:
        m, part = synth._SHAPES[name](xs, ys, 1.6, q)
        assert 0.05 < m.mean() < 0.95, name
        masks[name] = m
    for a in fg:
        for b in fg:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.85, (a, b, iou)
    # colour alone does not separate classes: every class shares a palette with >= 2 others
    pals = {n: set(s.palettes) | set(s.part_palettes) for n, s in synth._STYLES.items()}
    for n in fg:
        assert sum(bool(pals[n] & pals[o]) for o in fg if o != n) >= 2, n
    assert len({(s.texture.family, s.texture.freq) for s in synth._STYLES.values()}) >= 15


def test_class_set_sampler_mirrors_voc_frequencies():
    table = synth.load_class_sets()
    assert int(table.counts.sum()) == 10582
    rng = np.random.default_rng(0)
    sets = [synth.sample_class_set(rng) for _ in range(3000)]
    freq = Counter(c for s in sets for c in s)
    assert freq.most_common(1)[0][0] == PERSON
    expected = sum(n for s, n in zip(table.sets, table.counts) if PERSON in s) / table.counts.sum()
    assert abs(freq[PERSON] / len(sets) - expected) < 4 * np.sqrt(expected * (1 - expected) / len(sets))
    cooc = synth.cooccurrence(sets)
    partners = [c for c in range(1, 21) if c != PERSON and cooc[PERSON, c] > 0]
    assert len(partners) >= 17  # person co-occurs with almost every class
    top = max((c for c in range(1, 21) if c != PERSON), key=lambda c: cooc[PERSON, c])
    assert cooc[PERSON, top] > max(cooc[a, b] for a in range(1, 21) for b in range(a + 1, 21) if PERSON not in (a, b))
    # restricted sampling, as the val stratification uses it
    assert all(len(synth.sample_class_set(rng, lambda s: len(s) == 4)) == 4 for _ in range(20))


def test_sample_counts():
    rng = np.random.default_rng(1)
    for _ in range(200):
        c = synth.sample_counts(rng, (PERSON, 7, 12), max_instances=5)
        assert len(c) == 3 and min(c) >= 1 and sum(c) <= 5
    assert sum(synth.sample_counts(rng, (PERSON, 7), 5, total=4)) == 4
    many = [synth.sample_counts(rng, (PERSON,), 6)[0] for _ in range(500)]
    assert max(many) > 1 and np.mean(many) > 1.3  # people come in groups


# --- splits ------------------------------------------------------------------------------------

def test_ooc_pairs_never_cooccur_in_train(synth_micro_root):
    root = synth_micro_root
    train = synth.cooccurrence(_class_sets(root, "train").values())
    ooc = _class_sets(root, "ooc")
    assert ooc
    for i, s in ooc.items():
        assert len(s) == 2, i
        a, b = sorted(s)
        assert train[a, b] == 0, (i, VOC_CLASSES[a], VOC_CLASSES[b])
    meta = json.loads((root / "synthvoc.json").read_text())
    assert {"+".join(VOC_CLASSES[c] for c in sorted(s)) for s in ooc.values()} <= set(meta["ooc_pairs"])


def test_val_stratification_makes_every_paper_subset_nonempty(synth_micro_root):
    subsets = pytest.importorskip("robustbench_seg.data.subsets")
    report = subsets.compute_subsets(synth_micro_root, "val")
    assert not report.unavailable
    empty = [name for name in subsets.SUBSET_NAMES if not report.subsets.get(name)]
    assert not empty, empty


def test_plan_val_quota_tops_up_rare_class_sets():
    p = synth.PRESETS["tiny"]
    specs = synth.plan_val(0, p)
    assert len(specs) == p.n_val
    sets = [s.classes for s in specs]
    for pattern in synth.CLASS_SET_PATTERNS:
        assert sum(synth._matches(pattern, s) for s in sets) >= p.val_quota, pattern
    for pattern in synth.RENDER_PATTERNS:
        assert sum(s.pattern == pattern for s in specs) == p.val_quota
    free = [s for s in specs if not s.pattern]
    assert len(free) > p.n_val // 2  # most of val keeps the VOC frequencies


def _bench_plan(seed: int = 0):
    p = synth.PRESETS["bench"]
    train_sets = [synth.plan_free(seed, "train", i, p).classes for i in range(p.n_train)]
    return p, train_sets, synth.plan_val(seed, p, train_sets)


def test_bench_plan_gives_every_paper_subset_at_least_20_val_images():
    """The bench preset's val plan (class sets are exact: a scene is redrawn until its classes match)."""
    from itertools import combinations

    from robustbench_seg.data.subsets import scaled_thresholds

    p, train_sets, specs = _bench_plan()
    assert len(specs) == p.n_val and p.val_quota >= 20 and p.n_ooc >= 100
    sets = [s.classes for s in specs]
    for pattern in synth.CLASS_SET_PATTERNS:
        assert sum(synth._matches(pattern, s) for s in sets) >= 20, pattern
    for pattern in synth.RENDER_PATTERNS:
        assert sum(s.pattern == pattern for s in specs) >= 20, pattern
    # co-occurrence subsets at the scaled thresholds, counted over train + val as data/subsets.py does
    cooc = synth.cooccurrence(train_sets + sets)
    thresholds = scaled_thresholds(p.n_train + p.n_val)
    worst = [max(int(cooc[a, b]) for a, b in combinations(s, 2)) for s in sets if len(s) >= 2]
    sizes = [sum(w < t for w in worst) for t in thresholds]
    assert sizes[-1] >= 20, sizes  # cooc10, the smallest
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes  # five different, nested subsets
    assert sum(s.pattern == "cooc" for s in specs) > 0  # the top-up was needed and is recorded


def test_bench_plan_is_deterministic_and_seed_dependent():
    assert _bench_plan(0)[2] == _bench_plan(0)[2]
    assert _bench_plan(0)[2] != _bench_plan(1)[2]


def test_older_presets_plan_and_metadata_unchanged(synth_micro_root):
    """bench's new fields default off: tiny/micro plans ignore the train sets, their synthvoc.json has no new key."""
    for name in ("tiny", "micro"):
        p = synth.PRESETS[name]
        assert p.cooc_quota == 0 and not p.cooc_scale
        assert synth.plan_val(0, p) == synth.plan_val(0, p, [(PERSON,)] * 5)
    meta = json.loads((synth_micro_root / "synthvoc.json").read_text())
    assert "cooc_threshold_scaling" not in meta
    assert not {"cooc_quota", "cooc_scale"} & set(meta["preset"])
    with pytest.raises(ValueError, match="train class sets"):
        synth.plan_val(0, synth.PRESETS["bench"])


# --- determinism, safety -----------------------------------------------------------------------

def test_deterministic_across_runs_and_workers(synth_micro_root, tmp_path):
    again = synth.generate(tmp_path / "a", preset="micro", seed=0, workers=2)
    assert _tree_hashes(again) == _tree_hashes(synth_micro_root)
    other = synth.generate(tmp_path / "b", preset="micro", seed=1)
    h0, h1 = _tree_hashes(synth_micro_root), _tree_hashes(other)
    assert h0.keys() == h1.keys()
    jpgs = [k for k in h0 if k.endswith(".jpg")]
    assert sum(h0[k] != h1[k] for k in jpgs) == len(jpgs)


def test_refuses_to_overwrite_and_cleans_up(tmp_path, monkeypatch):
    (tmp_path / "VOC2012").mkdir()
    (tmp_path / "VOC2012" / "keep.txt").write_text("x")
    with pytest.raises(RbsegError, match="already holds a dataset"):
        synth.generate(tmp_path, preset="micro")
    assert (tmp_path / "VOC2012" / "keep.txt").is_file()
    with pytest.raises(RbsegError, match="unknown SynthVOC preset"):
        synth.generate(tmp_path / "x", preset="huge")

    def boom(args):
        raise RuntimeError("crash mid-way")

    monkeypatch.setattr(synth, "_task", boom)
    with pytest.raises(RuntimeError):
        synth.generate(tmp_path / "crash", preset="micro")
    assert not (tmp_path / "crash" / "VOC2012").exists()
    assert not list((tmp_path / "crash").glob(".VOC2012.tmp-*"))


def test_overwrite_replaces_tree(tmp_path):
    (tmp_path / "VOC2012").mkdir()
    (tmp_path / "VOC2012" / "old.txt").write_text("x")
    root = synth.generate(tmp_path, preset="micro", seed=3, overwrite=True)
    assert not (root / "old.txt").exists() and (root / "synthvoc.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "VOC2012"]


def test_default_dataset_generated_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("RBSEG_CACHE", str(tmp_path / "cache"))
    assert synth.DEFAULT_PRESET == "bench"  # the shipped models' data
    monkeypatch.setitem(synth.PRESETS, "bench", synth.PRESETS["micro"])  # keep the test fast
    stale = tmp_path / "cache" / "synthvoc-bench-seed0" / "VOC2012"  # a cache from another version
    assert synth.default_dataset_root() == stale
    (stale / "ImageSets" / "Segmentation").mkdir(parents=True)
    (stale / "ImageSets" / "Segmentation" / "ooc.txt").write_text("x\n")
    (stale / "synthvoc.json").write_text(json.dumps({"generator_version": "0"}))
    root = synth.default_dataset()
    assert root == stale
    assert json.loads((root / "synthvoc.json").read_text())["generator_version"] == synth.GENERATOR_VERSION
    assert voc.read_split(root, "val") and (root / "JPEGImages").is_dir()
    assert oct(root.stat().st_mode & 0o777) == oct(0o755)

    def fail(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synth, "generate", fail)
    assert synth.default_dataset() == root
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name != "synthvoc-bench-seed0"]


def test_synth_meta_is_the_one_reader_of_synthvoc_json(tmp_path):
    from robustbench_seg.data.subsets import tree_asks_scaling
    from robustbench_seg.evaluation.engine import dataset_name

    assert voc.synth_meta(tmp_path) is None and dataset_name(tmp_path) == tmp_path.name  # real VOC: no file
    (tmp_path / "synthvoc.json").write_text("{damaged")
    assert voc.synth_meta(tmp_path) is None and not tree_asks_scaling(tmp_path)
    (tmp_path / "synthvoc.json").write_text("[1, 2]")  # valid JSON, not an object
    assert voc.synth_meta(tmp_path) is None
    (tmp_path / "synthvoc.json").write_text(json.dumps({"dataset": "SynthVOC-bench", "cooc_threshold_scaling": True}))
    assert voc.synth_meta(tmp_path)["dataset"] == "SynthVOC-bench"
    assert dataset_name(tmp_path) == "SynthVOC-bench" and tree_asks_scaling(tmp_path)
