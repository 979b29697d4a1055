"""Universal adversarial perturbations (Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, CVPR 2017).

Algorithm (the paper's Algorithm 1, as in the authors' ``universal_pert.py``)::

    v = 0
    while fooling_rate(X, v) < 1 - delta and passes < max_passes:
        for x in shuffle(X):
            if k(x + v) == k(x):                       # v does not fool x yet
                dr, it = DeepFool(x + v)               # top-num_classes, overshoot
                if it < max_iter_df - 1:               # DeepFool converged
                    v = P_{p, xi}(v + dr)              # project onto the l_p ball of radius xi
        passes += 1

with ``fooling_rate(X, v)`` the fraction of X whose predicted label changes under ``v``, and
``P`` the projection onto the l-inf ball (clip to +-xi) or the l2 ball (rescale).

Batched, on the device: the shuffled order is cut into mini-batches of ``batch_size`` images.
For a mini-batch, one forward pass finds the images the current ``v`` does not fool; batched
DeepFool (:mod:`.deepfool`, per image exactly the sequential DeepFool) runs from ``x + v`` for
all of them at once; then the steps are applied **one at a time, in the shuffled order**, each
followed by the projection: ``v = P(v + dr_i)``. The only difference from the sequential
algorithm is that every ``dr_i`` of a mini-batch was computed at the ``v`` the mini-batch started
with, instead of at the ``v`` left by the previous image; ``batch_size=1`` is the sequential
algorithm exactly. This keeps the projection after every image (summing or averaging the
steps before one projection would change the l-inf geometry: clipping is not additive) and the
per-image DeepFool minimality, and only delays by at most ``batch_size - 1`` images the moment
an image sees the others' updates; the fooling-rate check between mini-batches, and after
every pass, uses the current ``v``. ``benchmarks/uap_vs_art.py`` compares the result with ART's
sequential implementation.

Inputs are pixels in 0-255 (the classifier normalises inside, see
:class:`~robustbench_seg.attacks.surrogate.Classifier255`) and ``x + v`` is formed with
:func:`~robustbench_seg.attacks.apply.apply_perturbation` (clipped to [0, 255] unless
``clip=False``); DeepFool itself moves freely in input space, as in the original.
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import __version__
from ..data import voc
from ..errors import CheckpointError, RbsegError
from ..io import atomic_torch_save, ids_hash, safe_torch_load
from .apply import apply_perturbation
from .deepfool import deepfool
from .perturbation import Perturbation, save_perturbation

NORMS = ("inf", "2")


@dataclass
class UAPConfig:
    xi: float = 10.0  # radius in 0-255 units
    norm: str = "inf"  # "inf" or "2"
    delta: float = 0.2  # stop once the fooling rate reaches 1 - delta
    max_passes: int = 10
    overshoot: float = 0.02
    num_classes: int = 10  # DeepFool candidate classes
    max_iter_df: int = 10  # the authors' universal_pert.py / universal_perturbation.m
    batch_size: int = 32
    seed: int = 0
    clip: bool = True

    def __post_init__(self):
        self.norm = {"linf": "inf", "l2": "2"}.get(str(self.norm), str(self.norm))
        if self.norm not in NORMS:
            raise RbsegError(f"norm must be inf or 2, got '{self.norm}'")
        if self.xi <= 0 or not 0 <= self.delta < 1 or self.max_passes < 1 or self.batch_size < 1 or self.max_iter_df < 1:
            raise RbsegError("need xi > 0, 0 <= delta < 1, max_passes >= 1, batch_size >= 1, max_iter_df >= 1")


@dataclass
class UAPResult:
    v: torch.Tensor  # (3, H, W) float32, CPU
    fooling_rate: float
    passes: int
    reached_target: bool
    history: list[dict] = field(default_factory=list)
    time_s: float = 0.0


def project(v: torch.Tensor, xi: float, norm: str = "inf") -> torch.Tensor:
    """Projection onto the l-inf (clip) or l2 (rescale) ball of radius ``xi`` around 0."""
    if norm == "inf":
        return v.clamp(-xi, xi)
    n = float(v.norm())
    return v * min(1.0, xi / n) if n > 0 else v


@torch.no_grad()
def predict_labels(classifier: nn.Module, images: torch.Tensor, v: torch.Tensor | None, batch_size: int,
                   device: torch.device, clip: bool = True) -> torch.Tensor:
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device).float()
        if v is not None:
            x = apply_perturbation(x, v, clip=clip)
        out.append(classifier(x).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def fooling_rate(classifier: nn.Module, images: torch.Tensor, v: torch.Tensor, clean_labels: torch.Tensor | None = None,
                 batch_size: int = 64, device: torch.device | str = "cpu", clip: bool = True) -> float:
    """Fraction of ``images`` whose predicted label changes when ``v`` is added."""
    device = torch.device(device)
    if clean_labels is None:
        clean_labels = predict_labels(classifier, images, None, batch_size, device, clip)
    pert = predict_labels(classifier, images, v.to(device), batch_size, device, clip)
    return float((pert != clean_labels).float().mean()) if pert.numel() else 0.0


def estimate_uap_seconds(t_clean: float, n: int, cfg: UAPConfig, passes: int) -> dict:
    """A rough estimate of the crafting time from the measured clean forward pass over the ``n``
    images (``t_clean`` seconds): per pass, one check forward, DeepFool on the unfooled images (about
    3 steps of one forward and ``num_classes - 1`` backward passes, a backward ~ 2 forwards; at most
    ``max_iter_df`` steps), and the fooling-rate forward. ``upper_s`` assumes every image runs
    DeepFool to ``max_iter_df``."""
    per_fwd = t_clean / max(n, 1)
    step = 1 + 2 * (max(2, cfg.num_classes) - 1)
    typical = passes * n * per_fwd * (2 + 3 * step)
    upper = passes * n * per_fwd * (2 + cfg.max_iter_df * step)
    return {"estimate_s": typical, "upper_s": upper, "passes": passes, "images": n,
            "basis": f"measured clean forward pass ({t_clean:.2f} s for {n} images)"}


def save_state(path: str | Path, state: dict) -> None:
    """Write a resume state atomically; a failure (read-only, full disk) leaves the previous state as it was."""
    try:
        atomic_torch_save(path, state)
    except OSError as exc:
        raise RbsegError(f"cannot save the crafting state ({exc.strerror or exc}); the last good state is kept "
                         "there, free space and rerun with --resume", path) from None


def prepare_output(out: str | Path, resume: bool = False, restart: bool = False, overwrite: bool = False) -> tuple[Path, Path]:
    """Before crafting: refuse an existing output unless ``overwrite``; probe that the folder can be
    written; remove the ``.tmp`` litter of killed writes; and refuse a saved crafting state unless
    ``resume`` (continue it) or ``restart`` (discard it). Returns (output .npy path, state path)."""
    from ..io import clean_stale_tmp, probe_writable
    from .perturbation import refuse_existing_output

    if resume and restart:
        raise RbsegError("--resume and --restart exclude each other")
    path = refuse_existing_output(out, overwrite)
    state = state_path_for(path)
    probe_writable(path.parent, "perturbation")
    for name in (path.name, path.with_suffix(".json").name, state.name):
        clean_stale_tmp(path.parent, name)
    if state.exists():
        if restart:
            state.unlink()
        elif not resume:
            raise RbsegError("holds the saved state of an unfinished craft of this output; pass --resume to continue "
                             "it or --restart to discard it", state)
    return path, state


def write_result(out: Path, array, meta: dict, state_path: Path) -> Perturbation:
    """Save the perturbation; a write failure is one line and keeps the crafting state for --resume."""
    try:
        pert = save_perturbation(out, array, meta)
    except OSError as exc:
        kept = f"; the crafting state is kept in {state_path}: rerun with --resume" if state_path.exists() else ""
        raise RbsegError(f"cannot write the perturbation ({exc.strerror or exc}){kept}", out) from None
    if state_path.exists():
        state_path.unlink()
    return pert


def universal_perturbation(
    classifier: nn.Module,
    images: torch.Tensor,
    cfg: UAPConfig = UAPConfig(),
    device: torch.device | str = "cpu",
    state_path: str | Path | None = None,
    resume: bool = False,
    signature: dict | None = None,
    callback: Callable[[dict], None] | None = None,
) -> UAPResult:
    """Craft a UAP on ``images`` ((N, 3, H, W), 0-255, any dtype; kept on the CPU, moved per batch).

    ``state_path``: a resume file written atomically after every pass (v, pass count, RNG state,
    history); with ``resume=True`` an existing one is continued (its config and ``signature`` must
    match). The classifier must be in eval mode."""
    device = torch.device(device)
    classifier.eval()
    t0 = time.time()
    n, _, h, w = images.shape
    gen = torch.Generator().manual_seed(cfg.seed)
    v = torch.zeros(3, h, w, device=device)
    passes, history, elapsed0 = 0, [], 0.0
    sig = {"config": asdict(cfg), "shape": [int(s) for s in images.shape], **(signature or {})}
    if resume and state_path is not None and Path(state_path).is_file():
        st = safe_torch_load(state_path)
        if not isinstance(st, dict) or st.get("kind") != "uap-state" or st.get("signature") != sig:
            raise CheckpointError("resume state belongs to a different UAP run (other options, data or surrogate); "
                                  "discard it with --restart or drop --resume", state_path)
        v = st["v"].to(device)
        passes, history, elapsed0 = int(st["passes"]), list(st["history"]), float(st.get("elapsed_s", 0.0))
        gen.set_state(st["generator"])
    t_clean = time.time()
    clean = predict_labels(classifier, images, None, cfg.batch_size, device, cfg.clip)
    t_clean = time.time() - t_clean
    fr = history[-1]["fooling_rate"] if history else 0.0
    if callback and fr < 1 - cfg.delta and passes < cfg.max_passes:
        callback({"event": "estimate", **estimate_uap_seconds(t_clean, n, cfg, cfg.max_passes - passes)})
    while fr < 1 - cfg.delta and passes < cfg.max_passes:
        order = torch.randperm(n, generator=gen)
        steps = deepfools = fooled_seen = 0
        previous = history[-1]["fooling_rate"] if history else None
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            x = images[idx].to(device).float()
            with torch.no_grad():
                pred = classifier(apply_perturbation(x, v, clip=cfg.clip)).argmax(1).cpu()
            todo = (pred == clean[idx]).nonzero().flatten()
            fooled_seen += int(idx.numel() - todo.numel())
            if todo.numel():
                res = deepfool(classifier, apply_perturbation(x[todo.to(device)], v, clip=cfg.clip),
                               num_classes=cfg.num_classes, overshoot=cfg.overshoot, max_iter=cfg.max_iter_df)
                deepfools += int(todo.numel())
                for i in range(todo.numel()):  # sequentially, in the shuffled order
                    if int(res.iterations[i]) < cfg.max_iter_df - 1:
                        v = project(v + res.r[i], cfg.xi, cfg.norm)
                        steps += 1
            if callback:  # this pass so far: the share of the images checked that v already fooled when checked
                done = min(start + cfg.batch_size, n)
                callback({"event": "batch", "pass": passes + 1, "done": done, "total": n,
                          "fooled_so_far": fooled_seen / done, "previous_pass_fooling_rate": previous,
                          "elapsed_s": elapsed0 + time.time() - t0})
        passes += 1
        fr = fooling_rate(classifier, images, v, clean, cfg.batch_size, device, cfg.clip)
        history.append({"pass": passes, "fooling_rate": fr, "deepfool_calls": deepfools, "updates": steps,
                        "elapsed_s": elapsed0 + time.time() - t0})
        if callback:
            callback({"event": "pass", **history[-1], "max_passes": cfg.max_passes})
        if state_path is not None:
            save_state(state_path, {"kind": "uap-state", "signature": sig, "v": v.detach().cpu(), "passes": passes,
                                    "history": history, "generator": gen.get_state(),
                                    "elapsed_s": elapsed0 + time.time() - t0})
    return UAPResult(v.detach().cpu().float(), fr, passes, fr >= 1 - cfg.delta, history, elapsed0 + time.time() - t0)


# ---------------------------------------------------------------------------------------------
# Crafting sets and the end-to-end command
# ---------------------------------------------------------------------------------------------

def resized_center_crops(root: Path, ids: list[str], size: int) -> torch.Tensor:
    """Scene images resized (shorter side -> ``size``, bilinear, antialiased) and centre-cropped
    to ``size`` x ``size`` (the ImageNet evaluation crop), uint8 (N, 3, size, size)."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for image_id in ids:
        img = torch.from_numpy(voc.read_image(voc.image_path(root, image_id))).permute(2, 0, 1).contiguous()
        img = TF.resize(img, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        out.append(TF.center_crop(img, [size, size]))
    return torch.stack(out)


def crafting_set(root: Path, split: str, kind: str, size: int, n_images: int | None, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``crops``: object crops (the surrogates' training distribution); ``images``: resized,
    centre-cropped scenes. A seeded random subset of ``n_images`` (all when None)."""
    from .surrogate import extract_crops

    if kind == "crops":
        images, _, owners = extract_crops(root, split, size)
        keys = [f"{o}#{i}" for i, o in enumerate(owners)]
    elif kind == "images":
        owners = voc.read_split(root, split)
        images, keys = None, list(owners)
    else:
        raise RbsegError(f"crafting set must be crops or images, got '{kind}'")
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed))
    if n_images is not None and n_images < len(keys):
        order = order[:n_images]
    order = order.sort().values
    chosen = [keys[i] for i in order.tolist()]
    if kind == "images":
        images = resized_center_crops(root, chosen, size)
    else:
        images = images[order]
    return images, chosen


def _resolve_device(device: str | torch.device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def state_path_for(out: str | Path) -> Path:
    from .perturbation import resolve_output_path

    p = resolve_output_path(out)
    return p.with_name(f".{p.stem}.craft-state.pt")


def craft_uap(
    surrogate: str | Path,
    data_root: str | Path,
    out: str | Path,
    cfg: UAPConfig = UAPConfig(),
    split: str = "train",
    craft_set: str = "auto",
    size: int | None = None,
    n_images: int | None = None,
    val_split: str | None = "val",
    device: str | torch.device = "auto",
    weights: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[dict], None] | None = None,
    extra_meta: dict | None = None,
    restart: bool = False,
    overwrite: bool = False,
) -> Perturbation:
    """Load the surrogate (``resnet152`` / ``googlenet`` with ImageNet weights, or a checkpoint of
    :func:`~robustbench_seg.attacks.surrogate.train_surrogate`), build the crafting set from
    ``data_root``'s ``split``, run :func:`universal_perturbation`, and save ``out`` with metadata.

    ``craft_set="auto"``: object crops for a trained surrogate (its own training distribution),
    resized centre crops of the scenes for an ImageNet classifier. ``size`` defaults to the
    surrogate's input size (224 for ImageNet). The fooling rate is also measured on the same
    number of ``val_split`` items (never used for crafting). An existing ``out`` is refused unless
    ``overwrite``; a saved crafting state unless ``resume`` or ``restart`` (:func:`prepare_output`)."""
    from .surrogate import load_classifier

    out, state_path = prepare_output(out, resume=resume, restart=restart, overwrite=overwrite)
    dev = _resolve_device(device)
    root = voc.resolve_root(data_root)
    classifier, info = load_classifier(surrogate, dev, weights=weights)
    kind = craft_set if craft_set != "auto" else ("crops" if info["kind"] == "surrogate" else "images")
    size = int(size or classifier.input_size or 224)
    images, keys = crafting_set(root, split, kind, size, n_images, cfg.seed)
    sig = {"surrogate_sha256": info.get("sha256") or info.get("weights"), "data_ids_hash": ids_hash(keys), "size": size}
    res = universal_perturbation(classifier, images, cfg, dev, state_path=state_path, resume=resume, signature=sig,
                                 callback=callback)
    meta: dict[str, Any] = {
        "method": "uap", "norm": cfg.norm, "xi": cfg.xi, "algorithm": "Moosavi-Dezfooli et al. 2017 (DeepFool inner step), batched",
        "source_model": {k: info.get(k) for k in ("name", "kind", "arch", "width_per_group", "sha256", "weights", "metrics")
                         if info.get(k) is not None},
        "prior": f"data: {len(keys)} {kind} of {split}",
        "data": {"root": str(root), "split": split, "crafting_set": kind, "n_images": len(keys), "ids_hash": ids_hash(keys), "size": size},
        "seed": cfg.seed, "config": asdict(cfg), "iterations": res.passes, "passes": res.passes,
        "fooling_rate": res.fooling_rate, "fooling_rate_on": f"crafting set ({len(keys)} {kind} of {split})",
        "reached_target": res.reached_target, "history": res.history, "crafting_time_s": res.time_s,
        "device": str(dev), "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if val_split and voc.split_file(root, val_split).is_file():
        val_images, val_keys = crafting_set(root, val_split, kind, size, len(keys), cfg.seed + 1)
        meta["val_fooling_rate"] = fooling_rate(classifier, val_images, res.v.to(dev), None, cfg.batch_size, dev, cfg.clip)
        meta["val_fooling_rate_on"] = f"{len(val_keys)} {kind} of {val_split}"
    meta.update(extra_meta or {})
    return write_result(out, res.v.numpy(), meta, state_path)


def _versions() -> dict[str, str]:
    import torchvision

    return {"package": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}
