"""The Table 4 perturbations the suite ships, and the crafting presets behind them.

``SHIPPED`` names the five perturbations of the paper's Table 4 for the embedded default
(SynthVOC tiny): ``uap-resnet`` / ``uap-googlenet`` (UAP on the synthetic ResNet-152 /
GoogLeNet surrogates: the black-box transfer) and ``gduap-rno`` / ``gduap-rall`` /
``gduap-rpart`` (GD-UAP with no data, all training data, partial data, on the separate source
model :data:`GDUAP_SOURCE` = ``gduap-source``: the baseline recipe with another seed, trained for
this and never evaluated, as the paper crafts on its own DeepLab ResNet-101, so every evaluated
row is a transfer). :func:`craft_shipped` crafts one of them.

Presets (``UAP_PRESETS`` / ``GDUAP_PRESETS``): ``paper`` = the published settings (UAP: xi 10,
l-inf, delta 0.2, 10 passes, overshoot 0.02, 10 classes, crafted at the classifier's input size;
GD-UAP: 513 x 513, Adam lr 0.1, 40,000 iterations at most, validation every 400 iterations on
1,000 held-out images, patience 10); ``tiny`` = the same algorithms sized for SynthVOC tiny on two
CPU cores (each perturbation in under a minute): UAP on 64 object crops at the surrogates' 48-px
input size, mini-batches of 32, at most 2 passes; GD-UAP at 96 x 96 (covers every tiny image, as
513 x 513 covers every VOC image), 4 prior images per iteration, at most 400 iterations,
validation every 50 on 32 held-out images, patience 4; ``micro`` = the smoke test of
``rbseg reproduce --preset micro`` (seconds per perturbation, numbers meaningless): UAP on 16
crops, one pass; GD-UAP at 72 x 72 (SynthVOC micro's largest side), 30 iterations. xi = 10 (l-inf,
0-255 units) and DeepFool's 10-step cap (the authors' ``max_iter_df``) everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..errors import RbsegError
from .gduap import GDUAPConfig, craft_gduap
from .perturbation import Perturbation
from .uap import UAPConfig, craft_uap

UAP_PRESETS: dict[str, dict] = {
    "paper": {"cfg": UAPConfig(), "n_images": 10000, "size": None},
    "tiny": {"cfg": UAPConfig(max_passes=2, batch_size=32), "n_images": 64, "size": None},
    "micro": {"cfg": UAPConfig(max_passes=1, batch_size=16), "n_images": 16, "size": None},
}

GDUAP_PRESETS: dict[str, GDUAPConfig] = {
    "paper": GDUAPConfig(val_images=1000),
    "tiny": GDUAPConfig(size=(96, 96), max_iters=400, val_every=50, val_images=32, patience=4, batch_size=4),
    "micro": GDUAPConfig(size=(72, 72), max_iters=30, val_every=15, val_images=6, patience=2, batch_size=2),
}

# The source model of the shipped GD-UAPs: a zoo-style model trained only for crafting (never an
# evaluated row); its training recipe is ``training.recipes.SOURCE_RECIPES["gduap-source"]``.
GDUAP_SOURCE = "gduap-source"


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: str  # "uap" or "gd-uap"
    surrogate: str | None = None  # surrogate architecture (uap)
    prior: str | None = None  # GD-UAP prior
    table4_column: str = ""


SHIPPED: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("uap-resnet", "uap", surrogate="resnet152", table4_column="UAP ResNet"),
        Recipe("uap-googlenet", "uap", surrogate="googlenet", table4_column="UAP GNet"),
        Recipe("gduap-rno", "gd-uap", prior="none", table4_column="GD-UAP R-No"),
        Recipe("gduap-rall", "gd-uap", prior="all", table4_column="GD-UAP R-All"),
        Recipe("gduap-rpart", "gd-uap", prior="partial", table4_column="GD-UAP R-Part"),
    )
}


def craft_shipped(
    name: str,
    data_root: str | Path,
    source_model: str | Path,
    surrogate_ckpts: dict[str, str | Path],
    out_dir: str | Path,
    device: str = "auto",
    preset: str = "tiny",
    resume: bool = True,
    callback: Callable[[dict], None] | None = None,
    overwrite: bool = True,
) -> Perturbation:
    """Craft the shipped perturbation ``name`` into ``out_dir/<name>.npy`` (+ .json).

    ``source_model``: the GD-UAP source (a checkpoint or zoo name: ``gduap-source``, never an
    evaluated model); ``surrogate_ckpts``: ``{"resnet152": ckpt, "googlenet": ckpt}`` from
    ``train_surrogate``. An interrupted craft resumes from its state file by default; an existing
    output is replaced unless ``overwrite=False`` (``rbseg reproduce`` re-crafts into its own folder)."""
    if name not in SHIPPED:
        raise RbsegError(f"unknown shipped perturbation '{name}' (choose from {', '.join(SHIPPED)})")
    if preset not in UAP_PRESETS:
        raise RbsegError(f"unknown crafting preset '{preset}' (choose from {', '.join(UAP_PRESETS)})")
    recipe = SHIPPED[name]
    out = Path(out_dir) / f"{name}.npy"
    extra = {"recipe": name, "table4_column": recipe.table4_column, "preset": preset}
    if recipe.kind == "uap":
        if recipe.surrogate not in surrogate_ckpts:
            raise RbsegError(f"'{name}' needs a {recipe.surrogate} surrogate checkpoint (got {sorted(surrogate_ckpts)})")
        p = UAP_PRESETS[preset]
        pert = craft_uap(surrogate_ckpts[recipe.surrogate], data_root, out, cfg=replace(p["cfg"]), n_images=p["n_images"],
                         size=p["size"], device=device, resume=resume, callback=callback, extra_meta=extra,
                         overwrite=overwrite)
    else:
        cfg = replace(GDUAP_PRESETS[preset], prior=recipe.prior)
        pert = craft_gduap(source_model, data_root, out, cfg=cfg, device=device, resume=resume, callback=callback,
                           extra_meta=extra, overwrite=overwrite)
    return pert
