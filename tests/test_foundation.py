"""Shared foundation: atomic I/O, safe loading, the VOC reader, transforms, the perturbation format."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_seg.attacks.perturbation import load_perturbation, save_perturbation, validate_array
from robustbench_seg.constants import VOC_PALETTE
from robustbench_seg.data.transforms import normalize, train_transforms
from robustbench_seg.data.voc import (
    read_annotation, read_image, read_mask, resolve_root, write_index_png, VOCSegmentation,
)
from robustbench_seg.errors import CheckpointError, DataError, PerturbationError, RbsegError
from robustbench_seg.io import atomic_torch_save, atomic_write_json, ids_hash, load_npy, read_json, safe_torch_load


def test_palette_matches_voc_colours():
    pal = np.array(VOC_PALETTE).reshape(256, 3)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]  # aeroplane
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # void


def test_atomic_json_roundtrip_and_no_temp_left(tmp_path):
    path = atomic_write_json(tmp_path / "a" / "r.json", {"x": np.float32(1.5), "n": np.int64(3)})
    assert read_json(path) == {"n": 3, "x": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_read_json_errors(tmp_path):
    with pytest.raises(RbsegError, match="file not found"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(RbsegError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


class _Evil:
    pass


def test_safe_torch_load_refuses_pickled_objects_and_truncation(tmp_path):
    good = atomic_torch_save(tmp_path / "good.pt", {"w": torch.ones(2)})
    assert torch.equal(safe_torch_load(good)["w"], torch.ones(2))
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="trunc.pt: corrupt or truncated"):
        safe_torch_load(truncated)

    evil = tmp_path / "evil.pt"
    torch.save({"obj": _Evil()}, evil)  # an arbitrary class must never be unpickled
    with pytest.raises(CheckpointError, match="evil.pt: refused"):
        safe_torch_load(evil)
    with pytest.raises(CheckpointError, match="file not found"):
        safe_torch_load(tmp_path / "none.pt")


def test_load_npy_refuses_object_arrays(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RbsegError, match="obj.npy: not a plain numeric"):
        load_npy(path)


def test_ids_hash_is_order_independent():
    assert ids_hash(["b", "a"]) == ids_hash(["a", "b"]) != ids_hash(["a"])


def test_voc_reader_on_real_samples(voc_samples_root):
    ds = VOCSegmentation(voc_samples_root, "val")
    assert ds.ids == ["2007_000129", "2007_000346"]
    img, mask, image_id = ds[0]
    assert img.dtype == torch.uint8 and img.shape[0] == 3
    assert mask.shape == img.shape[1:]
    assert set(mask.unique().tolist()) <= set(range(21)) | {255}
    aug = VOCSegmentation(voc_samples_root, "train_aug")
    assert len(aug) == 4  # the sample list holds 4 ids; train_aug reads SegmentationClassAug
    assert aug[0][1].shape == aug[0][0].shape[1:]


def test_resolve_root_accepts_parent_and_rejects_other(tmp_path, voc_samples_root):
    assert resolve_root(voc_samples_root.parent) == voc_samples_root
    with pytest.raises(DataError, match="not found"):
        resolve_root(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no JPEGImages"):
        resolve_root(tmp_path)


def _png(path, array, mode):
    Image.fromarray(array.astype(np.uint8), mode=mode).save(path)


def test_read_mask_errors(tmp_path):
    mask = np.zeros((4, 5), np.uint8)
    mask[0, 0] = 21
    write_index_png(tmp_path / "bad.png", mask)
    with pytest.raises(DataError, match=r"bad.png: label values outside 0-20/255: \[21\]"):
        read_mask(tmp_path / "bad.png")
    _png(tmp_path / "rgb.png", np.zeros((4, 5, 3)), "RGB")
    with pytest.raises(DataError, match="rgb.png: mask is mode RGB"):
        read_mask(tmp_path / "rgb.png")
    _png(tmp_path / "gray.png", np.zeros((4, 5)), "L")
    assert read_mask(tmp_path / "gray.png").shape == (4, 5)
    with pytest.raises(DataError, match="expected a palette"):
        read_mask(tmp_path / "gray.png", require_palette=True)


def test_read_image_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:300])
    with pytest.raises(DataError, match="t.jpg: unreadable or truncated"):
        read_image(tmp_path / "t.jpg")


def test_read_annotation(tmp_path):
    (tmp_path / "a.xml").write_text(
        "<annotation><object><name>person</name><occluded>1</occluded><truncated>0</truncated>"
        "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>5</xmax><ymax>6</ymax></bndbox></object>"
        "</annotation>"
    )
    objs = read_annotation(tmp_path / "a.xml")
    assert [(o.name, o.label, o.occluded, o.bbox) for o in objs] == [
        ("person", 15, True, (1, 2, 30, 40)), ("dog", 12, False, (3, 4, 5, 6))
    ]
    (tmp_path / "b.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match="b.xml: malformed XML"):
        read_annotation(tmp_path / "b.xml")


def test_train_transforms_pad_with_void_and_keep_alignment():
    torch.manual_seed(0)
    from torchvision import tv_tensors

    img = torch.arange(3 * 10 * 12, dtype=torch.uint8).reshape(3, 10, 12)
    mask = torch.zeros(10, 12, dtype=torch.int64)
    mask[:, :6] = 7
    t = train_transforms(crop_size=32, scale=(1.0, 1.0), flip=False)
    out_img, out_mask = t(tv_tensors.Image(img), tv_tensors.Mask(mask))
    assert out_img.shape == (3, 32, 32) and out_mask.shape == (32, 32)
    assert int((out_mask == 255).sum()) == 32 * 32 - 10 * 12  # padding is void
    assert int((out_mask == 7).sum()) == 10 * 6  # nearest keeps labels, no blending


def test_normalize_imagenet_stats():
    x = torch.full((1, 3, 2, 2), 255 * 0.485)
    assert torch.allclose(normalize(x)[0, 0], torch.zeros(2, 2), atol=1e-5)


def test_perturbation_format_roundtrip_and_validation(tmp_path):
    arr = np.random.default_rng(0).uniform(-10, 10, (3, 8, 6)).astype(np.float32)
    p = save_perturbation(tmp_path / "p.npy", arr, {"method": "uap", "norm": "inf", "xi": 10})
    q = load_perturbation(tmp_path / "p.npy")
    assert np.array_equal(q.array, arr) and q.sha256 == p.sha256 and q.meta["size"] == [8, 6]
    with pytest.raises(PerturbationError, match=r"expected shape \(3, H, W\)"):
        validate_array(np.zeros((8, 6, 3), np.float32), "x.npy")
    with pytest.raises(PerturbationError, match="NaN"):
        validate_array(np.full((3, 2, 2), np.nan, np.float32), "x.npy")
    with pytest.raises(PerturbationError, match="exceeds the stated xi"):
        validate_array(np.full((3, 2, 2), 11, np.float32), "x.npy", xi=10)
    with pytest.raises(PerturbationError, match="no such perturbation"):
        load_perturbation(tmp_path / "missing")


def test_passive_openmp_waiting_only_on_a_busy_machine():
    from robustbench_seg.cli import busy_machine

    assert busy_machine(5.0, 2) and busy_machine(2.6, 2)
    assert not busy_machine(2.0, 2) and not busy_machine(0.3, 2) and not busy_machine(9.0, 8)
