"""GD-UAP (Mopuri, Ganeshan, Babu, TPAMI 2018): a universal perturbation that maximises the
activations of the source network's encoder, with no data or with data priors.

Objective: minimise ``L(v) = - sum_l log ||A_l(x + v)||_2`` over the selected layers ``l``
(default: every ``nn.ReLU`` call inside ``model.backbone``; a ReLU module called several times,
as torchvision's Bottleneck does, contributes each call), where ``||.||_2`` is the l2 norm of the
whole activation tensor of the batch (the authors' ``torch.norm(forward_output)``). Activations are
captured with forward hooks that take the norm the moment the activation is produced;
torchvision's ReLUs are ``inplace=True``, so while crafting every module of the hooked network
with an ``inplace`` flag is also switched to out-of-place (and restored afterwards).

Priors (what ``x`` is):

* ``none`` (R-No): the perturbation alone. The authors feed ``v`` to the mean-subtracted network
  input, which in the suite's 0-255 convention is the mean image plus ``v``.
* ``range``: Gaussian samples per pixel, mean = the normalisation mean (``MEAN_255``), standard
  deviation (62, 58, 52) for R, G, B (the authors' ``make_gaussian_noise.py``: about 95% of the
  samples inside [0, 255]), clipped to [0, 255]; a fresh batch every iteration.
* ``all`` (R-All): training images; ``partial`` (R-Part): the ``partial_fraction`` (default 10%)
  of the training images with the smallest background fraction (pixels labelled 0 over non-void
  pixels). Each sample is the image upscaled if needed to cover the crafting size, randomly
  cropped to it and randomly flipped; ``batch_size`` images per iteration.

Optimisation (the authors' ``segmentation/train.py``): ``v ~ U(-xi, xi)``; Adam, lr 0.1; after
every step ``v`` is clipped to ``[-xi, xi]``. Saturation ``s`` = fraction of entries at ``+-xi``;
when ``s > sat_threshold`` (0.5) and ``|s_t - s_{t - sat_interval}| < sat_tol`` (1e-5, interval
1: the authors' per-iteration check) ``v`` is halved. Validation every ``val_every`` iterations
(and just before a halving when more than ``val_every / 2`` iterations have passed since the last
one, so a saturated ``v`` is scored before it is halved): segmentation fooling rate
``1 - mIoU(prediction on x + v, prediction on x)`` over the validation images at full resolution
(``fit`` / ``clip`` as in evaluation; mIoU from :mod:`robustbench_seg.evaluation.metric`); the
best ``v`` is kept; ``patience`` validations without improvement stop the run.

Validation data (``val_data``; the authors validated on 1,000 held-out ILSVRC images, never on the
prior's data): ``heldout`` = ``val_images`` images of ``val_split`` (default: the prior split),
removed from the prior's images, so the two are disjoint; ``range`` = ``val_images`` samples of the
range prior (Gaussian noise images, a fixed seed), no dataset image at all; ``auto`` (default) =
``heldout`` for the data priors (``all``, ``partial``) or when ``val_split`` is named, and ``range``
for the data-free ones (``none``, ``range``), so R-No is never selected on target-domain images by
default.
"""
from __future__ import annotations

import datetime as _dt
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..constants import IGNORE_INDEX, MEAN_255, NUM_CLASSES
from ..data import voc
from ..data.transforms import normalize
from ..errors import CheckpointError, RbsegError
from ..evaluation.metric import confusion_matrix, metrics_from_confusion
from ..io import ids_hash, safe_torch_load, sha256_file
from .apply import DEFAULT_CLIP, DEFAULT_FIT, FitMode, apply_perturbation
from .perturbation import Perturbation
from .uap import prepare_output, save_state as _save_state_file, write_result

PRIORS = ("none", "range", "partial", "all")
VAL_DATA = ("auto", "heldout", "range")
PRIOR_LABELS = {"none": "R-No", "range": "R-Range", "partial": "R-Part", "all": "R-All"}
RANGE_STD_255 = (62.0, 58.0, 52.0)  # RGB; the authors' BGR (52, 58, 62)
NORM_FLOOR = 1e-12  # log(max(||A||, floor)): an all-zero activation gives a finite loss


@dataclass
class GDUAPConfig:
    prior: str = "none"
    xi: float = 10.0
    size: tuple[int, int] = (513, 513)
    lr: float = 0.1
    max_iters: int = 40000
    batch_size: int = 8  # prior samples per iteration (range / partial / all)
    val_every: int = 400
    val_images: int = 64
    val_split: str | None = None  # heldout validation images come from this split (None: the prior split)
    val_data: str = "auto"  # auto | heldout | range (see the module docstring)
    patience: int = 10
    sat_threshold: float = 0.5
    sat_tol: float = 1e-5
    sat_interval: int = 1
    partial_fraction: float = 0.1
    prior_split: str = "train"
    layers: tuple[str, ...] | None = None  # module names inside model.backbone; None = every nn.ReLU
    fit: str = DEFAULT_FIT.value
    clip: bool = DEFAULT_CLIP
    seed: int = 0

    def __post_init__(self):
        if self.prior not in PRIORS:
            raise RbsegError(f"prior must be one of {', '.join(PRIORS)}, got '{self.prior}'")
        self.size = (int(self.size[0]), int(self.size[1]))
        self.fit = FitMode(self.fit).value
        if self.layers is not None:
            self.layers = tuple(self.layers)
        if self.xi <= 0 or self.max_iters < 1 or self.val_every < 1 or self.patience < 1 or self.sat_interval < 1:
            raise RbsegError("need xi > 0 and max_iters, val_every, patience, sat_interval >= 1")
        if self.val_data not in VAL_DATA:
            raise RbsegError(f"val_data must be one of {', '.join(VAL_DATA)}, got '{self.val_data}'")
        if self.val_images < 1:
            raise RbsegError("need val_images >= 1")
        if not 0 < self.partial_fraction <= 1:
            raise RbsegError(f"partial_fraction must be in (0, 1], got {self.partial_fraction}")


@dataclass
class GDUAPResult:
    v: torch.Tensor  # best (3, H, W), CPU
    fooling_rate: float  # of the best v on the validation set
    iterations: int
    best_iteration: int
    stop_reason: str
    halvings: int
    history: list[dict] = field(default_factory=list)
    time_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# Objective, layers, saturation
# ---------------------------------------------------------------------------------------------

def gduap_loss_from_norms(norms: list[torch.Tensor]) -> torch.Tensor:
    """``- sum_l log max(n_l, 1e-12)`` for the l2 norms ``n_l`` of the captured activations."""
    if not norms:
        raise RbsegError("GD-UAP objective over zero layers: no activation was captured")
    return -torch.stack([torch.log(n.clamp_min(NORM_FLOOR)) for n in norms]).sum()


def gduap_loss(activations: list[torch.Tensor]) -> torch.Tensor:
    """``- sum_l log ||A_l||_2`` (each norm over the whole tensor of the batch, floored at 1e-12)."""
    return gduap_loss_from_norms([a.float().norm() for a in activations])


def select_layers(net: nn.Module, layers: tuple[str, ...] | list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """Named modules of ``net`` to hook: the given names, or every ``nn.ReLU``."""
    named = dict(net.named_modules())
    if layers is None:
        chosen = [(n, m) for n, m in named.items() if isinstance(m, nn.ReLU)]
        if not chosen:
            raise RbsegError("the source encoder has no nn.ReLU module; choose layers by name with --layers")
        return chosen
    missing = [n for n in layers if n not in named]
    if missing:
        sample = ", ".join(n for n in list(named)[1:8] if n)
        raise RbsegError(f"no module named {missing[:3]} in the source encoder (names look like: {sample}, ...)")
    return [(n, named[n]) for n in layers]


@contextmanager
def capture_norms(net: nn.Module, modules: list[tuple[str, nn.Module]]) -> Iterator[list[torch.Tensor]]:
    """Collect the l2 norm of every output of ``modules`` during forward passes (one entry per call).

    The norm is taken inside the hook, the moment the activation is produced, so a later in-place
    op on that tensor cannot change the objective (autograd then refuses the backward pass loudly
    instead of differentiating a stale value); and every module of ``net`` with an ``inplace`` flag
    (torchvision's ReLUs) runs out-of-place while crafting (restored on exit)."""
    store: list[torch.Tensor] = []
    flipped = [m for m in net.modules() if getattr(m, "inplace", False) is True]
    for m in flipped:
        m.inplace = False
    handles = [m.register_forward_hook(lambda _m, _i, out: store.append(out.float().norm())) for _, m in modules]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
        for m in flipped:
            m.inplace = True


def saturation(v: torch.Tensor, xi: float) -> float:
    """Fraction of entries sitting at +-xi."""
    return float((v.abs() >= xi).float().mean())


def should_halve(sat_now: float, sat_before: float, threshold: float = 0.5, tol: float = 1e-5) -> bool:
    """The saturation-halving rule: more than ``threshold`` of the entries at +-xi, and that fraction
    changed by less than ``tol`` over the check interval."""
    return sat_now > threshold and abs(sat_now - sat_before) < tol


# ---------------------------------------------------------------------------------------------
# Priors
# ---------------------------------------------------------------------------------------------

def background_fraction(mask: np.ndarray) -> float:
    """Pixels labelled background (0) over non-void pixels (1.0 for an all-void mask)."""
    valid = mask != IGNORE_INDEX
    n = int(valid.sum())
    return float((mask[valid] == 0).sum()) / n if n else 1.0


def partial_ids(root: Path, split: str, fraction: float = 0.1, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The ``fraction`` of ``split`` (at least one image) with the smallest background fraction
    (ties broken by id); ``exclude``: ids held out first (the validation images)."""
    ids = [i for i in voc.read_split(root, split) if i not in exclude]
    if not ids:
        return []
    scored = sorted((background_fraction(voc.read_mask(voc.mask_path(root, i, split))), i) for i in ids)
    k = max(1, int(round(fraction * len(scored))))
    return sorted(i for _, i in scored[:k])


def random_crop_flip(img: torch.Tensor, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, H, W) float: upscale (bilinear) if smaller than the crop, random crop, random flip."""
    from torchvision.transforms.v2 import functional as TF

    H, W = size
    h, w = img.shape[-2:]
    scale = max(H / h, W / w, 1.0)
    if scale > 1.0:
        img = TF.resize(img, [max(H, int(np.ceil(h * scale))), max(W, int(np.ceil(w * scale)))],
                        interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        h, w = img.shape[-2:]
    y = int(torch.randint(0, h - H + 1, (1,), generator=gen))
    x = int(torch.randint(0, w - W + 1, (1,), generator=gen))
    out = img[:, y:y + H, x:x + W].float()
    if float(torch.rand((), generator=gen)) < 0.5:
        out = out.flip(-1)
    return out


class PriorSampler:
    """Draws the ``x`` of each iteration for a prior (all randomness from the given generator)."""

    def __init__(self, prior: str, size: tuple[int, int], batch_size: int = 8, root: Path | None = None,
                 ids: list[str] | None = None):
        self.prior, self.size, self.batch_size = prior, tuple(size), int(batch_size)
        self.root, self.ids = root, list(ids or [])
        if prior in ("all", "partial") and not self.ids:
            raise RbsegError(f"prior '{prior}' needs training images, found none")
        self._cache: dict[str, torch.Tensor] = {}

    def _image(self, image_id: str) -> torch.Tensor:
        if image_id not in self._cache:
            img = torch.from_numpy(voc.read_image(voc.image_path(self.root, image_id))).permute(2, 0, 1).contiguous()
            if len(self._cache) < 4096:
                self._cache[image_id] = img
            return img
        return self._cache[image_id]

    def sample(self, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        H, W = self.size
        mean = torch.tensor(MEAN_255).view(1, 3, 1, 1)
        if self.prior == "none":
            return mean.expand(1, 3, H, W).to(device)
        if self.prior == "range":
            std = torch.tensor(RANGE_STD_255).view(1, 3, 1, 1)
            noise = torch.randn(self.batch_size, 3, H, W, generator=gen)
            return (mean + std * noise).clamp(0, 255).to(device)
        pick = torch.randperm(len(self.ids), generator=gen)[: self.batch_size].tolist()
        return torch.stack([random_crop_flip(self._image(self.ids[i]), self.size, gen) for i in pick]).to(device)


# ---------------------------------------------------------------------------------------------
# Validation: segmentation fooling rate
# ---------------------------------------------------------------------------------------------

def _logits(model: nn.Module, x255: torch.Tensor) -> torch.Tensor:
    out = model(normalize(x255))
    out = out["out"] if isinstance(out, dict) else out
    if out.shape[-2:] != x255.shape[-2:]:
        out = F.interpolate(out, size=x255.shape[-2:], mode="bilinear", align_corners=False)
    return out


class ValidationSet:
    """Full-resolution images grouped by size, with the source model's clean predictions."""

    def __init__(self, model: nn.Module, root: Path | None, ids: list[str], device: torch.device, batch_size: int = 16,
                 images: list[torch.Tensor] | None = None):
        """Images ``ids`` of ``root``, or the given uint8 (3, H, W) ``images`` (``ids`` may then be empty)."""
        t0 = time.time()
        self.ids = list(ids)
        if images is None:
            images = [torch.from_numpy(voc.read_image(voc.image_path(root, i))).permute(2, 0, 1).contiguous() for i in self.ids]
        groups: dict[tuple[int, int], list[torch.Tensor]] = {}
        for img in images:
            groups.setdefault(tuple(img.shape[-2:]), []).append(img)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []  # (uint8 images on the device, clean prediction)
        with torch.no_grad():
            for _, imgs in sorted(groups.items()):
                for i in range(0, len(imgs), batch_size):
                    x = torch.stack(imgs[i:i + batch_size]).to(device)
                    self.batches.append((x, _logits(model, x.float()).argmax(1)))
        self.n_images = len(images)
        self.build_s = time.time() - t0  # about one validation's cost (for the time estimate)

    @torch.no_grad()
    def fooling_rate(self, model: nn.Module, v: torch.Tensor, fit: str, clip: bool) -> float:
        """``1 - mIoU(perturbed prediction, clean prediction)`` over the set (one confusion matrix)."""
        cm = None
        for x, clean in self.batches:
            x = x.float()
            pred = _logits(model, apply_perturbation(x, v, fit=fit, clip=clip)).argmax(1)
            c = confusion_matrix(pred, clean, num_classes=NUM_CLASSES)
            cm = c if cm is None else cm + c
        if cm is None:
            raise RbsegError("GD-UAP validation set is empty")
        return 1.0 - metrics_from_confusion(cm).miou / 100.0


# ---------------------------------------------------------------------------------------------
# The crafting loop
# ---------------------------------------------------------------------------------------------

def encoder_of(model: nn.Module) -> nn.Module:
    return model.backbone if hasattr(model, "backbone") else model


def generalizable_uap(
    model: nn.Module,
    cfg: GDUAPConfig,
    sampler: PriorSampler,
    val: ValidationSet,
    device: torch.device | str = "cpu",
    state_path: str | Path | None = None,
    resume: bool = False,
    signature: dict | None = None,
    callback: Callable[[dict], None] | None = None,
) -> GDUAPResult:
    """Run GD-UAP on ``model`` (eval mode; ``model.backbone`` holds the hooked layers). A resume
    state is written atomically after every validation; ``resume=True`` continues one whose
    config and ``signature`` match."""
    device = torch.device(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    encoder = encoder_of(model)
    modules = select_layers(encoder, cfg.layers)
    H, W = cfg.size
    gen = torch.Generator().manual_seed(cfg.seed)
    v = ((torch.rand(1, 3, H, W, generator=gen) - 0.5) * 2 * cfg.xi).to(device).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=cfg.lr)
    sig = {"config": asdict(cfg), "layers": [n for n, _ in modules], **(signature or {})}
    it, prev_check, halvings, stall = 0, 0, 0, 0
    best_v, best_rate, best_it = v.detach()[0].clone(), -1.0, 0
    sat_hist: deque[float] = deque(maxlen=cfg.sat_interval + 1)
    history: list[dict] = []
    elapsed0, t0 = 0.0, time.time()
    if resume and state_path is not None and Path(state_path).is_file():
        st = safe_torch_load(state_path)
        if not isinstance(st, dict) or st.get("kind") != "gduap-state" or st.get("signature") != sig:
            raise CheckpointError("resume state belongs to a different GD-UAP run (other options, data or source model); "
                                  "discard it with --restart or drop --resume", state_path)
        with torch.no_grad():
            v.copy_(st["v"].to(device))
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
        it, prev_check, halvings, stall = int(st["iteration"]), int(st["prev_check"]), int(st["halvings"]), int(st["stall"])
        best_v, best_rate, best_it = st["best_v"].to(device), float(st["best_rate"]), int(st["best_iteration"])
        sat_hist.extend(float(s) for s in st["sat_hist"])
        history, elapsed0 = list(st["history"]), float(st["elapsed_s"])

    def validate(objective: float, sat: float) -> None:
        nonlocal best_v, best_rate, best_it, stall, prev_check
        rate = val.fooling_rate(model, v.detach()[0], cfg.fit, cfg.clip)
        if rate > best_rate:
            best_v, best_rate, best_it, stall = v.detach()[0].clone(), rate, it, 0
        elif rate == best_rate:
            best_v, best_it = v.detach()[0].clone(), it
        else:
            stall += 1
        prev_check = it
        history.append({"iteration": it, "fooling_rate": rate, "objective": objective, "saturation": sat,
                        "best": best_rate, "elapsed_s": elapsed0 + time.time() - t0})
        if callback:
            callback({"event": "val", **history[-1], "max_iters": cfg.max_iters})

    def save_state() -> None:
        if state_path is not None:
            _save_state_file(state_path, {
                "kind": "gduap-state", "signature": sig, "v": v.detach().cpu(), "optimizer": opt.state_dict(),
                "generator": gen.get_state(), "iteration": it, "prev_check": prev_check, "halvings": halvings,
                "stall": stall, "best_v": best_v.cpu(), "best_rate": best_rate, "best_iteration": best_it,
                "sat_hist": list(sat_hist), "history": history, "elapsed_s": elapsed0 + time.time() - t0})

    stop_reason = "max_iters"
    objective, sat = float("nan"), 0.0
    it_start, t_first = it, time.time()
    with capture_norms(encoder, modules) as norms:
        while it < cfg.max_iters:
            if stall >= cfg.patience:
                stop_reason = "patience"
                break
            if callback and it == it_start + 1:  # a rough estimate from the first iteration run here
                left = cfg.max_iters - it_start
                t_val = float(getattr(val, "build_s", 0.0))
                callback({"event": "estimate", "estimate_s": left * (time.time() - t_first) + (left // cfg.val_every) * t_val,
                          "iterations": left, "basis": f"first iteration {time.time() - t_first:.2f} s, "
                                                        f"a validation ~{t_val:.2f} s; early stopping can end sooner"})
            it += 1
            x = sampler.sample(gen, device)
            norms.clear()
            opt.zero_grad(set_to_none=True)
            encoder(normalize(apply_perturbation(x, v[0], clip=cfg.clip)))
            loss = gduap_loss_from_norms(norms)
            norms.clear()
            loss.backward()
            opt.step()
            with torch.no_grad():
                v.clamp_(-cfg.xi, cfg.xi)
            objective = -float(loss.detach())
            sat = saturation(v.detach(), cfg.xi)
            sat_hist.append(sat)
            halve = len(sat_hist) == sat_hist.maxlen and should_halve(sat, sat_hist[0], cfg.sat_threshold, cfg.sat_tol)
            since = it - prev_check
            validated = since >= cfg.val_every or (halve and since > cfg.val_every // 2)
            if validated:
                with torch.no_grad():
                    validate(objective, sat)
            if halve:
                with torch.no_grad():
                    v.mul_(0.5)
                halvings += 1
                prev_check = it
                sat_hist.clear()
                if callback:
                    callback({"event": "halve", "iteration": it, "saturation": sat, "elapsed_s": elapsed0 + time.time() - t0})
            if validated:
                save_state()  # at the end of the iteration: a resumed run continues from exactly here
            if callback:
                callback({"event": "iter", "iteration": it, "max_iters": cfg.max_iters, "objective": objective,
                          "saturation": sat, "best": best_rate, "elapsed_s": elapsed0 + time.time() - t0})
    if not history or history[-1]["iteration"] != it:
        with torch.no_grad():
            validate(objective, sat)
        save_state()  # the finished run: a failed write of the result loses nothing (rerun with --resume)
    return GDUAPResult(best_v.detach().cpu().float(), best_rate, it, best_it, stop_reason, halvings, history,
                       elapsed0 + time.time() - t0)


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------

def _resolve_device(device: str | torch.device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def validation_ids(root: Path, split: str, n: int, seed: int) -> list[str]:
    ids = voc.read_split(root, split)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    return sorted(ids[i] for i in order[:n])


def range_images(n: int, size: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """``n`` range-prior samples (Gaussian, mean ``MEAN_255``, std ``RANGE_STD_255``), rounded to uint8:
    data-free validation images."""
    gen = torch.Generator().manual_seed(seed + 104729)
    mean = torch.tensor(MEAN_255).view(3, 1, 1)
    std = torch.tensor(RANGE_STD_255).view(3, 1, 1)
    return [(mean + std * torch.randn(3, *size, generator=gen)).clamp(0, 255).round().to(torch.uint8) for _ in range(n)]


def resolve_val_data(cfg: GDUAPConfig) -> str:
    """``auto``: ``heldout`` for the data priors or when a ``val_split`` is named, ``range`` otherwise."""
    if cfg.val_data != "auto":
        return cfg.val_data
    return "heldout" if cfg.prior in ("all", "partial") or cfg.val_split is not None else "range"


def split_prior_and_validation(root: Path, cfg: GDUAPConfig) -> tuple[list[str], list[str], dict]:
    """(prior ids, validation ids, the validation record): the validation images are drawn first and
    removed from the prior's images, so the two sets are disjoint."""
    source = resolve_val_data(cfg)
    val_ids: list[str] = []
    if source == "heldout":
        val_split = cfg.val_split or cfg.prior_split
        val_ids = validation_ids(root, val_split, cfg.val_images, cfg.seed)
        record = {"source": "heldout", "split": val_split, "n_images": len(val_ids), "ids_hash": ids_hash(val_ids),
                  "rule": f"{cfg.val_images} seeded images of {val_split}, removed from the prior's images"}
    else:
        record = {"source": "range", "n_images": cfg.val_images, "size": list(cfg.size), "seed": cfg.seed + 104729,
                  "gaussian_mean_rgb": list(MEAN_255), "gaussian_std_rgb": list(RANGE_STD_255),
                  "rule": "range-prior noise images: no dataset image (data-free selection)"}
    held = set(val_ids)
    if cfg.prior == "all":
        prior_ids = [i for i in voc.read_split(root, cfg.prior_split) if i not in held]
    elif cfg.prior == "partial":
        prior_ids = partial_ids(root, cfg.prior_split, cfg.partial_fraction, exclude=held)
    else:
        prior_ids = []
    if cfg.prior in ("all", "partial") and not prior_ids:
        raise RbsegError(f"holding out {len(val_ids)} validation images leaves no prior images in split "
                         f"'{cfg.prior_split}'; lower --val-images or choose another --val-split")
    record["disjoint_from_prior"] = not (held & set(prior_ids))
    return prior_ids, val_ids, record


def craft_gduap(
    source: str | Path | nn.Module,
    data_root: str | Path,
    out: str | Path,
    cfg: GDUAPConfig = GDUAPConfig(),
    device: str | torch.device = "auto",
    resume: bool = False,
    callback: Callable[[dict], None] | None = None,
    source_info: dict | None = None,
    extra_meta: dict | None = None,
    restart: bool = False,
    overwrite: bool = False,
) -> Perturbation:
    """Load ``source`` (a zoo name or checkpoint through ``models.load_model``, or a module), build
    the prior and the validation set from ``data_root`` (disjoint: :func:`split_prior_and_validation`),
    run :func:`generalizable_uap` and save ``out`` (the best perturbation) with its metadata. The
    source's sha256 (of the file loaded) is recorded in ``source_model.sha256``. An existing ``out``
    is refused unless ``overwrite``; a saved crafting state unless ``resume`` or ``restart``."""
    out, state_path = prepare_output(out, resume=resume, restart=restart, overwrite=overwrite)
    dev = _resolve_device(device)
    root = voc.resolve_root(data_root)
    if isinstance(source, nn.Module):
        model, info = source.to(dev).eval(), dict(source_info or {"name": type(source).__name__, "kind": "module"})
    else:
        from ..models import load_model

        model, info = load_model(source, device=dev)
        if Path(str(source)).is_file():  # the exact file crafted on (a zoo name's sha256 is verified on load)
            info = {**info, "sha256": sha256_file(source), "path": str(source)}
    prior_ids, val_ids, val_record = split_prior_and_validation(root, cfg)
    sampler = PriorSampler(cfg.prior, cfg.size, cfg.batch_size if cfg.prior != "none" else 1, root, prior_ids)
    if val_record["source"] == "range":
        val = ValidationSet(model, None, [], dev, images=range_images(cfg.val_images, cfg.size, cfg.seed))
    else:
        val = ValidationSet(model, root, val_ids, dev)
    sig = {"source_sha256": info.get("sha256"), "prior_ids_hash": ids_hash(prior_ids) if prior_ids else None,
           "validation": val_record}
    res = generalizable_uap(model, cfg, sampler, val, dev, state_path=state_path, resume=resume, signature=sig,
                            callback=callback)
    import torchvision

    meta: dict[str, Any] = {
        "method": "gd-uap", "norm": "inf", "xi": cfg.xi, "algorithm": "Mopuri et al. 2018 (GD-UAP), log-norm of encoder ReLU activations",
        "source_model": {k: info.get(k) for k in ("name", "arch", "method", "sha256", "path", "source", "kind") if info.get(k) is not None},
        "prior": cfg.prior, "prior_label": PRIOR_LABELS[cfg.prior],
        "prior_data": ({"split": cfg.prior_split, "n_images": len(prior_ids), "ids_hash": ids_hash(prior_ids),
                        **({"partial_fraction": cfg.partial_fraction, "partial_rule": "smallest background fraction"}
                           if cfg.prior == "partial" else {})} if prior_ids else
                       ({"gaussian_mean_rgb": list(MEAN_255), "gaussian_std_rgb": list(RANGE_STD_255)} if cfg.prior == "range" else None)),
        "layers": len(select_layers(encoder_of(model), cfg.layers)), "layer_selection": list(cfg.layers) if cfg.layers else "every nn.ReLU of model.backbone",
        "seed": cfg.seed, "config": asdict(cfg), "iterations": res.iterations, "best_iteration": res.best_iteration,
        "stop_reason": res.stop_reason, "halvings": res.halvings,
        "fooling_rate": res.fooling_rate,
        "fooling_rate_on": (f"{len(val_ids)} held-out {val_record['split']} images (disjoint from the prior's)"
                            if val_record["source"] == "heldout" else f"{cfg.val_images} range-prior noise images")
                           + f", 1 - mIoU(perturbed vs clean prediction), fit {cfg.fit}, clip {cfg.clip}",
        "validation": val_record,
        "history": res.history, "crafting_time_s": res.time_s, "device": str(dev),
        "data": {"root": str(root)},
        "versions": {"package": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)},
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    meta.update(extra_meta or {})
    return write_result(out, res.v.numpy(), meta, state_path)
