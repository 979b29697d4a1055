"""The evaluation engine against a naive reference loop, batching, subsets, caching and resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustbench_seg.attacks.apply import apply_perturbation
from robustbench_seg.attacks.perturbation import save_perturbation
from robustbench_seg.data import voc
from robustbench_seg.data.transforms import normalize
from robustbench_seg.errors import DataError, PerturbationError, RbsegError
from robustbench_seg.evaluation import engine
from robustbench_seg.evaluation.engine import evaluate, evaluate_clean, run_pass, size_batches
from robustbench_seg.evaluation.metric import batched_confusion_matrix, confusion_matrix, count_bins
from robustbench_seg.evaluation.results import load_results
from robustbench_seg.io import safe_torch_load
from vocfactory import VOCTree
from tinynets import TinyNet


def tiny_net() -> torch.nn.Module:
    """``module:function`` entry point used by the CLI tests."""
    return TinyNet(seed=3)


@pytest.fixture(scope="module")
def perts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("perts")
    rng = np.random.default_rng(0)
    meta = {"method": "test", "norm": "inf", "xi": 10}
    a = save_perturbation(folder / "pa.npy", rng.uniform(-10, 10, (3, 24, 20)).astype(np.float32), meta)
    b = save_perturbation(folder / "pb.npy", rng.uniform(-10, 10, (3, 80, 90)).astype(np.float32), meta)
    return [folder / "pa.npy", folder / "pb.npy"], [a, b]


def _numpy_miou(cm: np.ndarray) -> float:
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    ious = [i / u for i, u in zip(inter, union) if u > 0]
    return 100.0 * float(np.mean(ious)) if ious else float("nan")


def _reference_cms(model, root, split, ids, deltas, fit="tile", clip=True):
    """The loop most repositories use: batch 1, one image and one input at a time, numpy counts."""
    cms = {}
    for image_id in ids:
        image = voc.read_image(voc.image_path(root, image_id))
        mask = voc.read_mask(voc.mask_path(root, image_id, split)).astype(np.int64)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        for name, delta in deltas.items():
            xin = x if delta is None else apply_perturbation(x, delta, fit, clip)
            with torch.no_grad():
                logits = model(normalize(xin))["out"]
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            pred = logits.argmax(1)[0].numpy()
            keep = mask != 255
            cm = np.bincount(mask[keep] * 21 + pred[keep], minlength=441).reshape(21, 21)
            cms[(name, image_id)] = cm
    return cms


def test_engine_equals_naive_reference_loop(synth_micro_root, perts, tmp_path):
    paths, loaded = perts
    model = TinyNet()
    records = evaluate(model, synth_micro_root, perturbations=[str(p) for p in paths], subsets="all",
                       out=tmp_path / "res", device="cpu", batch_size=4, progress=False, model_name="tiny")
    assert [r.perturbation["name"] for r in records] == ["clean", "pa", "pb"]
    root = voc.resolve_root(synth_micro_root)
    ids = voc.read_split(root, "val")
    deltas = {"clean": None, "pa": loaded[0].tensor(), "pb": loaded[1].tensor()}
    ref = _reference_cms(TinyNet(), root, "val", ids, deltas)
    from robustbench_seg.data.subsets import compute_subsets

    subsets = {"all": ids, **compute_subsets(root, "val").subsets}
    assert len(subsets) > 5
    compared = 0
    for rec in records:
        name = rec.perturbation["name"]
        assert set(rec.subsets) == set(subsets)
        for subset, members in subsets.items():
            cm = sum(ref[(name, i)] for i in members)
            got = rec.subsets[subset]
            assert got["n_images"] == len(members)
            assert got["metrics"]["pixels"] == int(cm.sum())
            assert got["metrics"]["miou"] == pytest.approx(_numpy_miou(cm), abs=1e-6)
            compared += 1
    assert compared == 3 * len(subsets)
    # perturbations actually change predictions (the comparison is not clean vs clean)
    assert records[1].miou() != records[0].miou()


def test_evaluate_clean_matches_reference_and_restores_mode(synth_micro_root):
    model = TinyNet()
    model.train()
    root = voc.resolve_root(synth_micro_root)
    ids = voc.read_split(root, "val")[:7]
    metrics = evaluate_clean(model, synth_micro_root, ids=ids, batch_size=3)
    assert model.training
    ref = _reference_cms(TinyNet(), root, "val", ids, {"clean": None})
    assert metrics.miou == pytest.approx(_numpy_miou(sum(ref.values())), abs=1e-6)


@pytest.fixture()
def same_size_tree(tmp_path):
    """Ten images in two sizes (so batches hold several images), labels 0-20 and void."""
    tree = VOCTree(tmp_path)
    rng = np.random.default_rng(1)
    for k in range(10):
        h, w = ((30, 40), (40, 30))[k % 2]
        mask = rng.integers(0, 21, (h, w)).astype(np.uint8)
        mask[0] = 255
        tree.add(f"im{k:02d}", mask, splits=("val",))
    return tree.root


def test_size_batches_group_by_size_and_cap():
    sizes = [(2, 3), (3, 2), (2, 3), (2, 3), (3, 2), (2, 3)]
    assert size_batches(sizes, 2) == [[0, 2], [3, 5], [1, 4]]
    assert size_batches(sizes, 8) == [[0, 2, 3, 5], [1, 4]]
    with pytest.raises(RbsegError):
        size_batches(sizes, 0)


def test_batching_changes_no_prediction(same_size_tree, perts):
    _, loaded = perts
    ids = voc.read_split(same_size_tree, "val")
    member = torch.ones(1, len(ids), dtype=torch.bool)
    deltas = [None, loaded[0].tensor()]
    model = TinyNet().eval()
    one = run_pass(model, same_size_tree, "val", ids, deltas, member, batch_size=1)
    calls_one = model.calls
    many = run_pass(model, same_size_tree, "val", ids, deltas, member, batch_size=4)
    assert model.calls - calls_one < calls_one  # fewer forward calls: images were really batched
    assert torch.equal(one.cms, many.cms)


def test_subset_matrices_equal_per_subset_recomputation(same_size_tree):
    ids = voc.read_split(same_size_tree, "val")
    subsets = [ids[:3], ids[2:9:2], [ids[-1]]]
    member = torch.zeros(len(subsets), len(ids), dtype=torch.bool)
    for s, sub in enumerate(subsets):
        member[s, [ids.index(i) for i in sub]] = True
    model = TinyNet().eval()
    together = run_pass(model, same_size_tree, "val", ids, [None], member, batch_size=4)
    for s, sub in enumerate(subsets):
        alone = run_pass(model, same_size_tree, "val", sub, [None], torch.ones(1, len(sub), dtype=torch.bool))
        assert torch.equal(together.cms[0, s], alone.cms[0, 0])


def test_batched_confusion_matrix_equals_unbatched():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 21, (5, 7, 9), generator=g)
    target = torch.randint(0, 21, (5, 7, 9), generator=g)
    target[:, 0] = 255
    target[2] = 255  # an image with no valid pixel
    out = batched_confusion_matrix(pred, target)
    assert out.shape == (5, 21, 21)
    for b in range(5):
        assert torch.equal(out[b], confusion_matrix(pred[b], target[b]))
    assert int(out[2].sum()) == 0
    # hand-computed: 2 pixels of one image
    cm = batched_confusion_matrix(torch.tensor([[1, 2]]), torch.tensor([[1, 1]]))
    assert cm[0, 1, 1] == 1 and cm[0, 1, 2] == 1 and int(cm.sum()) == 2
    with pytest.raises(ValueError):
        batched_confusion_matrix(pred, torch.full_like(target, 30))


def test_count_bins_scatter_and_bincount_agree():
    index = torch.tensor([0, 3, 3, 5, 0, 0])
    expected = torch.tensor([3, 0, 0, 2, 0, 1, 0])
    assert torch.equal(count_bins(index, 7, scatter=False), expected)
    assert torch.equal(count_bins(index, 7, scatter=True), expected)


def test_results_cache_skips_work_and_new_fit_is_new_work(same_size_tree, perts, tmp_path, monkeypatch):
    paths, _ = perts
    out = tmp_path / "res"
    model = TinyNet()
    kw = dict(perturbations=[str(paths[0])], subsets="none", out=out, device="cpu", progress=False, model_name="m")
    first = evaluate(model, same_size_tree, **kw)
    calls = model.calls
    assert calls > 0

    def no_data(*args, **kwargs):
        raise AssertionError("data read on a fully cached run")

    with monkeypatch.context() as mp:
        mp.setattr(engine.EvalImages, "__getitem__", no_data)
        mp.setattr(engine, "image_size", no_data)
        second = evaluate(model, same_size_tree, **kw)
    assert model.calls == calls
    assert [r.to_dict() for r in second] == [r.to_dict() for r in first]

    third = evaluate(model, same_size_tree, fit="resize", **kw)
    assert model.calls > calls
    assert third[0].protocol["fit"] == "resize"
    assert len(load_results(out)) == 4  # clean + pa, for tile and resize, side by side
    # forced re-run recomputes
    calls = model.calls
    evaluate(model, same_size_tree, force=True, **kw)
    assert model.calls > calls
    # a new perturbation only computes that input
    calls = model.calls
    evaluate(model, same_size_tree, **{**kw, "perturbations": [str(p) for p in paths]})
    assert model.calls - calls == 2  # one pass: 2 batches (10 images, 2 sizes, batch 8), one input


def test_interrupted_run_resumes(same_size_tree, perts, tmp_path):
    paths, _ = perts
    kw = dict(perturbations=[str(paths[0])], subsets="none", device="cpu", progress=False, model_name="m",
              batch_size=2, checkpoint_every_s=0.0)
    reference = evaluate(TinyNet(), same_size_tree, out=tmp_path / "ref", **kw)

    model = TinyNet()
    model.fail_after = 5  # 2 inputs per batch: fails during the third batch
    with pytest.raises(RbsegError, match="simulated") as info:  # the model's error, as one line
        evaluate(model, same_size_tree, out=tmp_path / "res", **kw)
    assert isinstance(info.value.__cause__, RuntimeError)
    partial = list((tmp_path / "res").rglob(".partial-*.pt"))
    assert len(partial) == 1
    assert load_results(tmp_path / "res") == []

    saved = safe_torch_load(partial[0])
    batches = size_batches([(30, 40), (40, 30)] * 5, 2)
    assert saved["batches_done"] == 3  # batches of 2, 2, 1 images: 2 + 2 + 1 forward calls of 2 inputs
    model.fail_after, model.calls = None, 0
    resumed = evaluate(model, same_size_tree, out=tmp_path / "res", **kw)
    # only the batches not yet counted: each runs its 2 inputs x B images in forward chunks of 2
    assert model.calls == sum(-(-2 * len(b) // 2) for b in batches[3:])
    assert not list((tmp_path / "res").rglob(".partial-*.pt"))
    for a, b in zip(resumed, reference):
        assert a.subsets == b.subsets


def test_result_protocol_and_schema(same_size_tree, tmp_path):
    recs = evaluate(TinyNet(), same_size_tree, perturbations="none", subsets="none", out=tmp_path, device="cpu",
                    progress=False, model_name="m")
    assert len(recs) == 1
    path = tmp_path / "m" / "VOC2012" / "val-tile-clip-fp32" / "clean.json"
    data = json.loads(path.read_text())
    assert data["schema"] == "rbseg-result/1"
    proto = data["protocol"]
    for key in ("dataset", "data_fingerprint", "split", "fit", "clip", "dtype", "device", "batch_size",
                "package_version", "torch", "torchvision", "seed"):
        assert key in proto
    assert proto["dtype"] == "float32" and proto["device"] == "cpu"
    assert len(data["model"]["sha256"]) == 64
    assert data["subsets"]["all"]["n_images"] == 10 and len(data["subsets"]["all"]["ids_hash"]) == 16
    assert len(data["subsets"]["all"]["metrics"]["iou"]) == 21


def test_data_fingerprint_is_content_not_location(same_size_tree, tmp_path):
    import shutil

    ids = voc.read_split(same_size_tree, "val")
    first = engine.data_fingerprint(same_size_tree, "val", ids)
    copy = tmp_path / "copy" / "VOC2012"
    shutil.copytree(same_size_tree, copy)
    assert engine.data_fingerprint(copy, "val", ids) == first
    mask = voc.read_mask(voc.mask_path(copy, ids[0], "val")).copy()
    mask[5, 5] = (int(mask[5, 5]) + 1) % 21
    voc.write_index_png(voc.mask_path(copy, ids[0], "val"), mask)
    assert engine.data_fingerprint(copy, "val", ids) != first


def test_ooc_split_records_ooc_subset(synth_micro_root, tmp_path):
    recs = evaluate(TinyNet(), synth_micro_root, split="ooc", perturbations="none", subsets="none", out=tmp_path,
                    device="cpu", progress=False, model_name="m")
    assert recs[0].protocol["dataset"] == "SynthVOC-micro"
    assert recs[0].subsets["ooc"] == recs[0].subsets["all"]
    assert recs[0].miou("ooc") is not None


def test_bad_inputs(same_size_tree, tmp_path):
    with pytest.raises(DataError, match="not found"):
        evaluate(TinyNet(), tmp_path / "nowhere", perturbations="none", out=tmp_path, progress=False)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 8, 8), dtype=np.float32))
    with pytest.raises(PerturbationError, match=r"shape \(3, H, W\)"):
        evaluate(TinyNet(), same_size_tree, perturbations=str(bad), out=tmp_path, progress=False)
    with pytest.raises(RbsegError, match="unknown subset"):
        evaluate(TinyNet(), same_size_tree, perturbations="none", subsets="occ9", out=tmp_path, progress=False)
    with pytest.raises(RbsegError, match="fit mode"):
        evaluate(TinyNet(), same_size_tree, perturbations="none", fit="stretch", out=tmp_path, progress=False)
    # a corrupt image is a one-line DataError naming the file
    voc.image_path(same_size_tree, "im03").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="im03.jpg") as info:
        evaluate(TinyNet(), same_size_tree, perturbations="none", subsets="none", out=tmp_path, progress=False)
    assert "\n" not in str(info.value)

