"""Zoo recipes: how each shipped model is trained, and its export into ``models/``.

``ZOO_RECIPES[name]`` holds the training options that differ from the preset's defaults;
``train_recipe`` trains one (resuming an interrupted run), ``export_to_zoo`` writes the compact
inference checkpoint (fp16 weights, no optimiser state) and its manifest entry.

``STAGE2_FROM``: zoo models that are stage 2 (denoising, Eq. 4) of another zoo model's stage 1.
``binding`` is the paper's two-stage training written as two commands: stage 1 is exactly the
``binding-no-denoise`` ablation (Table 5b), so the zoo trains that stage once and ``binding`` runs
``--stage2-from`` it; Table 5b then compares the two stages of one run. ``segmix`` (IJCV 2023) is
built the same way on ``segmix-no-denoise`` (``--blend cm``).
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path

import torch

from ..errors import RbsegError
from ..io import atomic_torch_save, sha256_file
from ..models.checkpoint import (
    checkpoint_finished, inference_checkpoint, model_from_checkpoint, num_parameters, read_checkpoint,
)
from ..models.zoo import ZOO_DESCRIPTIONS, ZOO_NAMES, write_zoo_entry
from ..paths import shipped_models_dir
from .config import TrainConfig, resolve_config

ZOO_RECIPES: dict[str, dict] = {
    "baseline": {"method": "baseline"},
    "mixup": {"method": "mixup"},
    "cutmix": {"method": "cutmix"},
    "binding": {"method": "binding", "blend": "cfb"},
    "binding-no-fbh": {"method": "binding", "blend": "cfb", "fbh": False},
    "binding-no-denoise": {"method": "binding", "blend": "cfb", "denoise": False},
    "binding-rfb": {"method": "binding", "blend": "rfb"},
    "binding-cafb": {"method": "binding", "blend": "cafb"},
    "binding-wrfb": {"method": "binding", "blend": "wrfb"},
    "binding-mfb": {"method": "binding", "blend": "mfb"},
    "segmix": {"method": "binding", "blend": "cm"},
    "segmix-no-denoise": {"method": "binding", "blend": "cm", "denoise": False},
}
assert tuple(ZOO_RECIPES) == ZOO_NAMES
STAGE2_FROM: dict[str, str] = {"binding": "binding-no-denoise", "segmix": "segmix-no-denoise"}

# Models trained for the attacks, never evaluated (not zoo rows): the GD-UAP source is the baseline
# recipe with another seed, so the shipped GD-UAPs transfer to every evaluated row (attacks/recipes.py).
SOURCE_RECIPES: dict[str, dict] = {"gduap-source": {"method": "baseline", "seed": 1}}
SOURCE_DESCRIPTIONS: dict[str, str] = {
    "gduap-source": "source model of the shipped GD-UAPs: the baseline recipe, seed 1; never evaluated (Table 4)"}
# IJCV Table 11 (max unique categories of a blended pair, stage 1 only): trained on request
# (`rbseg zoo train segmix-max2`), not by `rbseg reproduce`; `segmix-no-denoise` is its "inf + gamma-thres" row.
TABLE11_RECIPES: dict[str, dict] = {
    **{f"segmix-max{g}": {"method": "binding", "blend": "cm", "denoise": False, "cm_over_limit": "skip", "gamma": g}
       for g in (2, 3, 4)},
    "segmix-maxinf": {"method": "binding", "blend": "cm", "denoise": False, "cm_over_limit": "none"},
}
# Seed replicates (issue 12): the methods whose seed-to-seed spread the report measures, each trained again with
# other training seeds by `rbseg reproduce` (a preset's ``seed_replicates``: 3 = the zoo model, seed 0, plus the
# first two replicates). A replicate differs from its base recipe only by ``seed``; a stage-2 base (STAGE2_FROM)
# gets its own stage-1 replicate with the same seed. Seeds start at 2: seed 1 is the gduap-source recipe
# (the baseline with seed 1), which must stay a model no evaluated row equals.
REPLICATED_METHODS: tuple[str, ...] = ("baseline", "binding", "segmix")
REPLICATE_SEEDS: tuple[int, ...] = (2, 3)


def replicate_name(base: str, seed: int) -> str:
    return f"{base}-seed{seed}"


# replicate name -> (base recipe, seed), stage-1 chains included (binding-no-denoise-seed2, ...)
SEED_REPLICATES: dict[str, tuple[str, int]] = {
    replicate_name(b, seed): (b, seed)
    for base in REPLICATED_METHODS for seed in REPLICATE_SEEDS
    for b in ((STAGE2_FROM[base], base) if base in STAGE2_FROM else (base,))
}
REPLICATE_RECIPES: dict[str, dict] = {name: {**ZOO_RECIPES[base], "seed": seed} for name, (base, seed) in SEED_REPLICATES.items()}
STAGE2_FROM.update({name: replicate_name(STAGE2_FROM[base], seed)
                    for name, (base, seed) in SEED_REPLICATES.items() if base in STAGE2_FROM})
REPLICATE_DESCRIPTIONS: dict[str, str] = {
    name: f"seed replicate of '{base}' (training seed {seed}; issue 12): Table 1's mean +- std, never a table row"
    for name, (base, seed) in SEED_REPLICATES.items()}


def replicates_of(base: str, n: int | None = None) -> list[str]:
    """The replicate names of ``base`` (not its stage-1 chain), in seed order; the first ``n`` when given."""
    names = [name for name, (b, _) in SEED_REPLICATES.items() if b == base]
    return names if n is None else names[:n]


RECIPES: dict[str, dict] = {**ZOO_RECIPES, **SOURCE_RECIPES, **TABLE11_RECIPES, **REPLICATE_RECIPES}

_FLAGS = {"fbh": ("--fbh", "--no-fbh"), "denoise": ("--denoise", "--no-denoise")}


def recipe_config(name: str, data_root: str | Path, out: str | Path, preset: str = "tiny", device: str = "auto", **overrides) -> TrainConfig:
    if name not in RECIPES:
        raise RbsegError(f"no zoo recipe '{name}' (choose from {', '.join(RECIPES)})")
    opts = {**RECIPES[name], **overrides}
    return TrainConfig(data=str(data_root), out=str(out), preset=preset, device=device, **opts)


def recipe_command(name: str, preset: str = "tiny") -> str:
    """The equivalent ``rbseg train`` command line (ROOT and CKPT left as placeholders)."""
    args = ["rbseg", "train"]
    for key, value in RECIPES[name].items():
        if key in _FLAGS:
            args.append(_FLAGS[key][0 if value else 1])
        else:
            args += [f"--{key.replace('_', '-')}", str(value)]
    if name in STAGE2_FROM:
        args += ["--stage2-from", f"CKPT_OF_{STAGE2_FROM[name]}"]
    args += ["--data", "ROOT", "--out", "CKPT", "--preset", preset]
    return shlex.join(args)


def checkpoint_path(name: str, out: str | Path) -> Path:
    out = Path(out)
    return out if out.suffix == ".pt" else out / f"{name}.pt"


def train_recipe(name: str, data_root: str | Path, out: str | Path, preset: str = "tiny", device: str = "auto",
                 progress: bool = True, **overrides) -> Path:
    """Train zoo entry ``name`` into ``out`` (a ``.pt`` path, or a folder that gets ``<name>.pt``);
    an interrupted run resumes, a finished one is returned as is. A model of :data:`STAGE2_FROM`
    first trains (or finds) its stage-1 model beside it: ``<dir>/<source>.pt`` for a ``.pt`` path,
    the sibling folder ``<out>/../<source>/`` for a folder (the layout ``rbseg reproduce`` uses)."""
    from .pretrain import needs_backbone
    from .trainer import train

    ckpt = checkpoint_path(name, out)
    if needs_backbone(preset) and overrides.get("weights_backbone") in (None, "none"):
        raise RbsegError(f"the '{preset}' preset fine-tunes every model from the shared pre-trained backbone: pass "
                         f"weights_backbone=PATH (training.pretrain.pretrain_backbone writes it; "
                         f"rbseg reproduce --preset {preset} trains it as step pretrain/backbone)")
    if name in STAGE2_FROM and "stage2_from" not in overrides:
        source = STAGE2_FROM[name]
        source_out = ckpt.with_name(f"{source}.pt") if Path(out).suffix == ".pt" else Path(out).parent / source
        overrides["stage2_from"] = str(train_recipe(source, data_root, source_out, preset, device, progress, **overrides))
    cfg = recipe_config(name, data_root, ckpt, preset, device, resume=True, progress=progress, **overrides)
    return train(cfg)


def export_to_zoo(name: str, ckpt: str | Path, models_dir: str | Path | None = None, val_miou: float | None = None,
                  evaluate: bool = True, device: str = "cpu") -> Path:
    """Write ``models_dir/<name>.pt`` (fp16 inference checkpoint) and its ``zoo.json`` entry.

    ``val_miou``: the figure to record; by default the exported (fp16-stored) weights are scored on
    the training data's val split when that data is at hand, else the training run's own figure.
    """
    ckpt = Path(ckpt)
    src = read_checkpoint(ckpt)
    if src["kind"] == "training" and not checkpoint_finished(src):
        raise RbsegError("training has not finished; finish it (rbseg train ... --resume) before exporting", ckpt)
    models_dir = Path(models_dir) if models_dir is not None else shipped_models_dir()
    inf = inference_checkpoint(src, path=ckpt)  # refuses NaN/inf; keeps fp32 where fp16 overflows or vanishes
    inf["zoo_name"] = name
    path = models_dir / f"{name}.pt"
    atomic_torch_save(path, inf)
    model = model_from_checkpoint(read_checkpoint(path), path)
    training = src.get("training") or {}
    metrics = src.get("metrics") or {}
    dataset = src.get("dataset") or {}
    recorded = val_miou
    val_dtype = None  # unknown for a figure given by the caller
    val_split = metrics.get("val_split") or training.get("val_split") or "val"
    if recorded is None and evaluate and dataset.get("root") and Path(dataset["root"]).is_dir():
        from ..evaluation.engine import evaluate_clean, resolve_dtype

        dtype = resolve_dtype("auto", torch.device(device))
        recorded = evaluate_clean(model, dataset["root"], split=val_split, device=device, dtype=dtype).miou
        val_dtype = str(dtype).replace("torch.", "")
    if recorded is None:
        recorded = metrics.get("val_miou")
        val_dtype = metrics.get("val_dtype")
    preset = training.get("preset", "tiny")
    entry = {
        "name": name,
        "description": ZOO_DESCRIPTIONS.get(name, SOURCE_DESCRIPTIONS.get(name, REPLICATE_DESCRIPTIONS.get(name, ""))),
        "file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "num_params": num_parameters(model),
        "dtype": "float16",
        "arch": src["model"]["arch"],
        "model": src["model"],
        "method": src.get("method"),
        "recipe": RECIPES.get(name),
        "command": recipe_command(name, preset) if name in RECIPES else None,
        "config": training,
        "dataset": {k: v for k, v in dataset.items() if k != "root"},
        "val_miou": None if recorded is None else round(float(recorded), 4),
        "val_miou_dtype": val_dtype,
        "val_miou_training": metrics.get("val_miou"),
        "val_split": val_split,
        "train_seconds": (src.get("progress") or {}).get("seconds"),
        "versions": src.get("versions"),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if inf.get("full_precision_tensors"):
        entry["full_precision_tensors"] = inf["full_precision_tensors"]  # name -> why it stayed float32
    write_zoo_entry(name, entry, models_dir)
    return path


def zoo_train_config(name: str, preset: str = "tiny") -> dict:
    """The resolved training options of a recipe (for display), without data paths."""
    cfg = resolve_config(recipe_config(name, "ROOT", "CKPT", preset))
    return {k: v for k, v in cfg.to_dict().items() if k not in ("data", "out")}
