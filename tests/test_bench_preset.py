"""The ``bench`` preset (issue 12): one name for data, training, crafting and reproduce; the shared
pre-trained backbone (training/pretrain.py) and its wiring into training records and the reproduce plan."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from robustbench_seg.data import synth
from robustbench_seg.errors import RbsegError
from robustbench_seg.io import sha256_file
from robustbench_seg.models import build_model
from robustbench_seg.models.checkpoint import read_checkpoint
from robustbench_seg.reproduce import PRESETS as REPRO_PRESETS, reproduce
from robustbench_seg.training import config as train_config
from robustbench_seg.training.pretrain import (
    PRETRAIN_DATA_SEED, export_backbone, needs_backbone, pretrain_backbone, read_backbone,
)
from robustbench_seg.training.recipes import train_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_RUN = {"steps": 2, "batch_size": 2, "crop": 32, "val_split": None}


def test_bench_is_one_name_for_data_training_and_reproduce():
    assert "bench" in synth.PRESETS and "bench" in train_config.PRESETS and "bench" in REPRO_PRESETS
    p = REPRO_PRESETS["bench"]
    assert p.synth == "bench" and p.train == "bench" and p.pretrain and not p.needs_gpu
    assert needs_backbone("bench") and not needs_backbone("tiny")
    d = synth.PRESETS["bench"]
    assert d.n_val >= 600 and d.n_ooc >= 100 and d.val_quota >= 20 and d.cooc_quota >= 20 and d.cooc_scale
    # the older presets keep their behaviour (the shipped zoo and CI's regression gate depend on them)
    assert not REPRO_PRESETS["tiny"].pretrain and not REPRO_PRESETS["micro"].pretrain
    assert train_config.PRESETS["tiny"]["steps"] == 1000 and train_config.PRESETS["tiny"]["weights_backbone"] is None


def test_bench_training_refuses_to_start_without_the_shared_backbone(synth_micro_root, tmp_path):
    with pytest.raises(RbsegError, match="shared pre-trained backbone"):
        train_recipe("baseline", synth_micro_root, tmp_path, preset="bench", progress=False, **TINY_RUN)
    assert not list(tmp_path.iterdir())


def test_pretrained_backbone_is_loaded_and_its_sha256_recorded(synth_micro_root, tmp_path):
    backbone = pretrain_backbone(synth_micro_root, tmp_path / "pre", preset="bench", device="cpu", progress=False,
                                 **TINY_RUN)
    obj = read_backbone(backbone)
    assert obj["arch"] == "deeplabv3_tiny" and obj["pretrain"]["checkpoint_sha256"] == sha256_file(tmp_path / "pre" / "pretrain.pt")
    # the pre-training run's backbone tensors are exactly what a model built from the file starts with
    pre = read_checkpoint(tmp_path / "pre" / "pretrain.pt")["state_dict"]
    model = build_model("deeplabv3_tiny", binding=True, weights_backbone=str(backbone))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, pre[f"backbone.{k}"].to(v.dtype)), k
    # a second call finds the finished run and rewrites an identical file (deterministic)
    first = sha256_file(backbone)
    assert sha256_file(pretrain_backbone(synth_micro_root, tmp_path / "pre", preset="bench", device="cpu",
                                         progress=False, **TINY_RUN)) == first
    # fine-tuning (a two-stage binding recipe) records which backbone it started from
    ckpt = train_recipe("binding", synth_micro_root, tmp_path / "ft" / "binding", preset="bench", device="cpu",
                        progress=False, weights_backbone=str(backbone), stage2_steps=1, **TINY_RUN)
    stage2 = read_checkpoint(ckpt)["training"]
    assert stage2["stage1"]["config"]["weights_backbone_sha256"] == first
    assert stage2["stage1"]["config"]["weights_backbone"] == str(backbone)


def test_export_backbone_refuses_unfinished_or_foreign_files(tmp_path):
    bogus = tmp_path / "x.pt"
    torch.save({"format": "something-else"}, bogus)
    with pytest.raises(RbsegError):
        read_backbone(bogus)
    with pytest.raises(RbsegError):
        export_backbone(bogus, tmp_path / "b.pt")


def test_reproduce_plan_pretrains_once_and_every_training_fine_tunes_from_it(tmp_path):
    from test_reproduce import FakePipeline

    fake = FakePipeline()
    backbones: list[tuple] = []

    def pretrain(data_root, out, preset, device, **options) -> Path:
        fake._call("pretrain", preset, Path(data_root).parent.name)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "backbone.pt").write_bytes(b"bb")
        backbones.append((data_root, out))
        return Path(out) / "backbone.pt"

    comp = replace(fake.components(), pretrain=pretrain)
    reproduce("bench", out=tmp_path, components=comp)
    gens = [c for c in fake.calls if c[0] == "generate"]
    assert gens == [("generate", "bench", 0), ("generate", "bench", PRETRAIN_DATA_SEED)]  # the disjoint tree
    kinds = fake.kinds()
    assert kinds.count("pretrain") == 1 and kinds.index("pretrain") < kinds.index("train")
    assert fake.calls[kinds.index("pretrain")][1:] == ("bench", "pretrain")  # trained on data/pretrain/VOC2012
    trains = [c for c in fake.calls if c[0] == "train"]
    assert trains and all("weights_backbone" in c[3] and c[2] == "bench" for c in trains)
    surrogates = [c for c in fake.calls if c[0] == "surrogate"]
    assert len(surrogates) == 2
    # a re-run after the backbone changed retrains everything that fine-tuned from it
    fake2 = FakePipeline()
    comp2 = replace(fake2.components(), pretrain=pretrain)
    (tmp_path / "work" / "pretrain" / "backbone.pt").unlink()
    reproduce("bench", out=tmp_path, resume=True, components=comp2)
    assert {c[1] for c in fake2.calls if c[0] == "train"} == {c[1] for c in trains}
    assert not [c for c in fake2.calls if c[0] == "surrogate"]


def test_bench_preset_without_pretrain_component_is_a_clear_error(tmp_path):
    from test_reproduce import FakePipeline

    with pytest.raises(RbsegError, match="pretrain"):
        reproduce("bench", out=tmp_path, components=FakePipeline().components())


def test_evaluation_records_the_cooc_thresholds_it_used(synth_micro_root, tmp_path):
    from test_data_subsets import _rare_pairs_tree

    from robustbench_seg.evaluation.engine import evaluate

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 21, 1)

        def forward(self, x):
            return self.conv(x)

    kw = dict(perturbations="none", subsets="cooc50", model_name="m", device="cpu", progress=False)
    rec = evaluate(Net(), synth_micro_root, out=tmp_path / "a", **kw)[0]
    assert rec.protocol["cooc_thresholds"] == {"cooc50": 50, "cooc40": 40, "cooc30": 30, "cooc20": 20, "cooc10": 10}
    scaled = _rare_pairs_tree(tmp_path / "bench-like", True)  # a SynthVOC tree asking for scaled thresholds
    rec = evaluate(Net(), scaled.root, out=tmp_path / "b", **kw)[0]
    assert rec.protocol["cooc_thresholds"] == {"cooc50": 5, "cooc40": 4, "cooc30": 3, "cooc20": 2, "cooc10": 1}
    assert rec.subsets["cooc50"]["n_images"] == 2


def test_zoo_train_cli_asks_for_the_backbone_on_bench(synth_micro_root, tmp_path, capsys):
    from robustbench_seg.cli import main

    assert main(["zoo", "train", "baseline", "--data", str(synth_micro_root), "--out", str(tmp_path),
                 "--preset", "bench"]) != 0
    assert "shared pre-trained backbone" in capsys.readouterr().err
