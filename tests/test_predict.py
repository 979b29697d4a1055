"""``rbseg predict``: palette predictions, confidence maps and the VOC submission layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_seg.constants import VOC_PALETTE
from robustbench_seg.data import voc
from robustbench_seg.errors import DataError
from robustbench_seg.evaluation.engine import forward_logits
from robustbench_seg.evaluation.predict import folder_images, jet_png, predict_images, split_images
from test_eval_engine import TinyNet
from vocfactory import write_jpeg


class TwoBranch(TinyNet):
    """Adds binding-style "dominant" / "phantom" outputs."""

    def forward(self, x):
        out = super().forward(x)
        return {**out, "dominant": out["out"] * 2, "phantom": -out["out"]}


@pytest.fixture()
def image_dir(tmp_path):
    folder = tmp_path / "imgs"
    write_jpeg(folder / "a.jpg", 30, 40, seed=1)
    write_jpeg(folder / "b.jpg", 30, 40, seed=2)
    write_jpeg(folder / "c.jpg", 44, 28, seed=3)
    Image.fromarray(np.zeros((12, 16, 3), dtype=np.uint8)).save(folder / "d.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_folder_writes_palette_pngs_and_confidence(image_dir, tmp_path):
    model = TwoBranch()
    paths = folder_images(image_dir)
    assert [p.name for p in paths] == ["a.jpg", "b.jpg", "c.jpg", "d.png"]
    summary = predict_images(model, paths, tmp_path / "out", confidence=True, device="cpu", progress=False)
    assert summary.n_images == 4
    for p in paths:
        img = Image.open(summary.label_dir / f"{p.stem}.png")
        src = Image.open(p)
        assert img.mode == "P" and img.size == src.size
        assert img.getpalette()[:63] == VOC_PALETTE[:63]
        labels = np.array(img)
        x = torch.from_numpy(voc.read_image(p)).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            expected = forward_logits(model.eval(), x).argmax(1)[0].numpy()
        assert np.array_equal(labels, expected)
        for folder in ("confidence", "confidence-dominant", "confidence-phantom"):
            conf = Image.open(tmp_path / "out" / folder / f"{p.stem}.png")
            assert conf.mode == "RGB" and conf.size == src.size
    assert [d.name for d in summary.confidence_dirs] == ["confidence", "confidence-dominant", "confidence-phantom"]


def test_jet_png_colours():
    img = np.array(Image.open(__import__("io").BytesIO(jet_png(np.array([[0.0, 1.0]])))))
    assert img.shape == (1, 2, 3)
    assert img[0, 0, 2] > 100 and img[0, 0, 0] == 0  # low confidence: blue
    assert img[0, 1, 0] > 100 and img[0, 1, 2] == 0  # high confidence: red


def test_voc_submission_layout(tmp_path):
    from vocfactory import VOCTree, stripes

    tree = VOCTree(tmp_path / "tree")
    tree.add("2008_000001", stripes([0, 15]), splits=("test",))
    tree.add("2008_000002", stripes([0, 13], h=10, w=6), splits=("test",))
    paths = split_images(tree.root, "test")
    summary = predict_images(TinyNet(), paths, tmp_path / "sub", voc_submission=True, device="cpu", progress=False)
    folder = tmp_path / "sub" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert summary.label_dir == folder
    assert sorted(p.name for p in folder.iterdir()) == ["2008_000001.png", "2008_000002.png"]
    img = Image.open(folder / "2008_000002.png")
    assert img.mode == "P" and img.size == (6, 10)


def test_predict_bad_inputs(tmp_path, image_dir):
    with pytest.raises(DataError, match="not found"):
        folder_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        folder_images(tmp_path / "empty")
    (image_dir / "a.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="share a name"):
        folder_images(image_dir)
    (image_dir / "a.png").unlink()
    (image_dir / "c.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="c.jpg"):
        predict_images(TinyNet(), folder_images(image_dir), tmp_path / "o", device="cpu", progress=False)
