"""The Table 4 perturbations the suite ships, and the crafting presets behind them.

``SHIPPED`` names the five perturbations of the paper's Table 4 for the embedded default
(SynthVOC tiny): ``uap-resnet`` / ``uap-googlenet`` (UAP on the synthetic ResNet-152 /
GoogLeNet surrogates: the black-box transfer) and ``gduap-rno`` / ``gduap-rall`` /
``gduap-rpart`` (GD-UAP with no data, all training data, partial data, on the shipped zoo
``baseline`` model: the grey-box attack). :func:`craft_shipped` crafts one of them.

Presets (``UAP_PRESETS`` / ``GDUAP_PRESETS``): ``paper`` = the published settings (UAP: xi 10,
l-inf, delta 0.2, 10 passes, overshoot 0.02, 10 classes, crafted at the classifier's input size;
GD-UAP: 513 x 513, Adam lr 0.1, 40,000 iterations at most, validation every 400 iterations on
1,000 images, patience 10); ``tiny`` = the same algorithms sized for SynthVOC tiny on two CPU
cores (each perturbation in under a minute): UAP on 64 object crops at the surrogates' 48-px
input size, mini-batches of 32, at most 2 passes; GD-UAP at 96 x 96 (covers every tiny image, as
513 x 513 covers every VOC image), 4 prior images per iteration, at most 400 iterations,
validation every 50 on 32 training images, patience 4. xi = 10 (l-inf, 0-255 units) everywhere.
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
}

GDUAP_PRESETS: dict[str, GDUAPConfig] = {
    "paper": GDUAPConfig(val_images=1000),
    "tiny": GDUAPConfig(size=(96, 96), max_iters=400, val_every=50, val_images=32, patience=4, batch_size=4),
}


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
) -> Perturbation:
    """Craft the shipped perturbation ``name`` into ``out_dir/<name>.npy`` (+ .json).

    ``source_model``: the GD-UAP source (zoo name or checkpoint: the shipped ``baseline``);
    ``surrogate_ckpts``: ``{"resnet152": ckpt, "googlenet": ckpt}`` from ``train_surrogate``.
    An interrupted craft resumes from its state file by default."""
    if name not in SHIPPED:
        raise RbsegError(f"unknown shipped perturbation '{name}' (choose from {', '.join(SHIPPED)})")
    recipe = SHIPPED[name]
    out = Path(out_dir) / f"{name}.npy"
    extra = {"recipe": name, "table4_column": recipe.table4_column, "preset": preset}
    if recipe.kind == "uap":
        if recipe.surrogate not in surrogate_ckpts:
            raise RbsegError(f"'{name}' needs a {recipe.surrogate} surrogate checkpoint (got {sorted(surrogate_ckpts)})")
        p = UAP_PRESETS[preset]
        pert = craft_uap(surrogate_ckpts[recipe.surrogate], data_root, out, cfg=replace(p["cfg"]), n_images=p["n_images"],
                         size=p["size"], device=device, resume=resume, callback=callback, extra_meta=extra)
    else:
        cfg = replace(GDUAP_PRESETS[preset], prior=recipe.prior)
        pert = craft_gduap(source_model, data_root, out, cfg=cfg, device=device, resume=resume, callback=callback,
                           extra_meta=extra)
    return pert
