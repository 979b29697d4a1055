"""Per-image white-box attacks for segmentation: PGD, SegPGD, CosPGD and SEA's three APGD runs.

The interface the evaluation engine codes against (docs/attacks.md, "Per-image attacks"):

* :class:`AttackSpec` -- one configured attack (name, eps in 0-255 pixel units, steps, every other
  parameter, implementation version); ``key()`` is a stable short string for file names.
* :func:`parse_eps` -- ``"1,2,4,8"`` (0-255 units) or ``"4/255"`` ([0, 1] fractions of the range).
* :func:`build_attacks` -- names (``all``, ``sea`` expand), eps values, preset -> specs.
* :func:`run_attack` -- (spec, forward, x255, target) -> adversarial x255 (detached), inside the
  eps-ball and [0, 255]. ``forward`` maps float 0-255 pixels (N, 3, H, W) to logits (N, 21, H, W) at
  the input size (the caller builds it: normalisation, model, output adapter).

Attacks are batched: one forward and one input-only backward per step for the whole batch (the
weights' gradients are never computed), per-image decisions via ``torch.where`` (no host sync inside
the step loop), and an image's gradient does not depend on its batch neighbours (per-image losses
are summed). Registry: :data:`ATTACKS` (name -> :class:`AttackDef`); groups in :data:`GROUPS`.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

from ..constants import IGNORE_INDEX, NUM_CLASSES
from ..errors import RbsegError
from . import losses as L
from .apgd import reduced_eps_apgd, value_and_grad

Forward = Callable[[torch.Tensor], torch.Tensor]

VERSION = "1"  # bump when an attack's numbers could change


@dataclass(frozen=True)
class AttackSpec:
    """One configured attack; everything a result records about it."""

    name: str  # registry name (ATTACKS)
    eps: float  # l-inf budget, 0-255 pixel units
    steps: int  # gradient steps (SEA: per loss, over the three reduced-eps stages)
    params: dict = field(hash=False)  # every other parameter, JSON-serialisable
    version: str = VERSION

    def to_dict(self) -> dict:
        return {"name": self.name, "eps": float(self.eps), "steps": int(self.steps), "params": dict(self.params),
                "version": self.version}

    @classmethod
    def from_dict(cls, d: dict) -> AttackSpec:
        return cls(name=str(d["name"]), eps=float(d["eps"]), steps=int(d["steps"]), params=dict(d.get("params", {})),
                   version=str(d.get("version", VERSION)))

    def key(self) -> str:
        """``<name>-eps<eps>-s<steps>-<hash8>``; the hash covers every field (params included)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
        return f"{self.name}-eps{self.eps:g}-s{self.steps}-{digest}"


# --- eps parsing ---------------------------------------------------------------------------------

_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*$")


def parse_eps(text: str | float | Sequence) -> list[float]:
    """Budgets in 0-255 pixel units, in the order given, duplicates dropped.

    ``"1,2,4,8"``: plain numbers are 0-255 units. ``"4/255"``: a fraction of the full range,
    ``a / b * 255`` (so ``4/255`` -> 4.0, ``0.5/1`` -> 127.5). A plain number strictly between 0 and
    1 is refused (most likely a [0, 1]-unit value such as ``0.0157``: write ``4/255``); 0, negative,
    above 255 or unparsable values are refused too. One-line :class:`RbsegError`."""
    if isinstance(text, (int, float)):
        items = [str(text)]
    elif isinstance(text, str):
        items = [t for t in text.split(",")]
    else:
        items = [str(t) for t in text]
    out: list[float] = []
    for raw in items:
        item = raw.strip()
        if not item:
            raise RbsegError(f"--eps: empty value in {text!r}")
        m = _FRACTION.match(item)
        try:
            if m:
                den = float(m.group(2))
                if den == 0:
                    raise RbsegError(f"--eps: division by zero in {item!r}")
                value = float(Fraction(m.group(1)) / Fraction(m.group(2)) * 255)
            else:
                value = float(item)
        except ValueError:
            raise RbsegError(f"--eps: {item!r} is not a number or a fraction like 4/255") from None
        if not math.isfinite(value) or value <= 0 or value > 255:
            raise RbsegError(f"--eps: {item!r} is outside (0, 255] (0-255 pixel units)")
        if not m and value < 1:
            raise RbsegError(f"--eps: {item!r} is below 1 in 0-255 pixel units; for a [0, 1]-unit budget "
                             f"write a fraction such as 4/255")
        if value not in out:
            out.append(value)
    return out


# --- the attacks ---------------------------------------------------------------------------------

def _check_inputs(spec: AttackSpec, x255: torch.Tensor, target: torch.Tensor) -> None:
    if x255.ndim != 4 or x255.shape[1] != 3 or not x255.is_floating_point():
        raise RbsegError(f"{spec.name}: expected float pixels (N, 3, H, W), got {tuple(x255.shape)} {x255.dtype}")
    if target.shape != (x255.shape[0],) + tuple(x255.shape[2:]):
        raise RbsegError(f"{spec.name}: ground truth {tuple(target.shape)} does not match images {tuple(x255.shape)}")
    if target.dtype != torch.int64:
        raise RbsegError(f"{spec.name}: ground truth must be int64, got {target.dtype}")


def _autocast_dtype(params: dict) -> torch.dtype | None:
    dtype = params.get("dtype", "float32")
    if dtype in ("float32", "fp32"):
        return None
    if dtype in ("bfloat16", "bf16"):
        return torch.bfloat16
    raise RbsegError(f"attack dtype must be float32 or bfloat16, got {dtype!r}")


def _uniform_noise(x: torch.Tensor, radius: float, generator: torch.Generator | None,
                   seeds: Sequence[int] | None) -> torch.Tensor:
    """U(-radius, radius) noise shaped like x: drawn on the generator's device, then moved to x's.

    ``seeds`` (one per image) makes each image's noise independent of its batch neighbours."""
    if seeds is not None:
        if len(seeds) != x.shape[0]:
            raise RbsegError(f"{len(seeds)} seeds for {x.shape[0]} images")
        parts = [torch.empty(x.shape[1:], dtype=x.dtype).uniform_(-radius, radius,
                                                                   generator=torch.Generator().manual_seed(int(s)))
                 for s in seeds]
        return torch.stack(parts).to(x.device)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.empty(x.shape, dtype=x.dtype, device=gen_device).uniform_(-radius, radius, generator=generator)
    return noise.to(x.device)


def pgd_step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float, step_size: float) -> torch.Tensor:
    """One l-inf ascent step: sign of the gradient, projection onto the eps-ball, clip to [0, 255]
    (the ``cospgd`` package's ``step_inf`` in 0-255 units, same operations in the same order)."""
    x_new = x_adv.detach() + step_size * grad.sign()
    delta = torch.clamp(x_new - x, min=-eps, max=eps)
    return torch.clamp(x + delta, 0, 255).detach()


def _pgd_loop(pixel_loss, spec: AttackSpec, forward: Forward, x: torch.Tensor, target: torch.Tensor,
              x_start: torch.Tensor) -> torch.Tensor:
    """PGD with a per-pixel loss ``pixel_loss(logits, target, t, T)``; the objective is the sum
    over images of the per-pixel loss summed over the image / (H * W)."""
    steps, eps, alpha = spec.steps, float(spec.eps), float(spec.params["step_size"])
    cast = _autocast_dtype(spec.params)
    x_adv = x_start
    for t in range(steps):
        _, _, grad = value_and_grad(forward, x_adv, target,
                                    lambda logits, tgt, t=t: L.image_mean(pixel_loss(logits, tgt, t, steps)),
                                    autocast_dtype=cast)
        x_adv = pgd_step(x_adv, grad, x, eps, alpha)
    return x_adv


def _pgd_start(spec: AttackSpec, x: torch.Tensor, generator, seeds) -> torch.Tensor:
    if not spec.params.get("random_start", False):
        return x.clone()
    return (x + _uniform_noise(x, float(spec.eps), generator, seeds)).clamp(0, 255)


def _run_pgd_family(pixel_loss):
    def run(spec, forward, x, target, class_weights, generator, seeds):
        return _pgd_loop(pixel_loss(spec), spec, forward, x, target, _pgd_start(spec, x, generator, seeds))
    return run


def _pgd_loss(spec):
    return lambda logits, target, t, T: L.ce_pixels(logits, target)


def _segpgd_loss(spec):
    return lambda logits, target, t, T: L.segpgd_pixels(logits, target, t, T)


def _cospgd_loss(spec):
    activation = spec.params.get("activation", "softmax")
    if activation not in L.COSPGD_ACTIVATIONS:
        raise RbsegError(f"cospgd activation must be one of {', '.join(L.COSPGD_ACTIVATIONS)}, got {activation!r}")
    return lambda logits, target, t, T: L.cospgd_pixels(logits, target, activation)


def _sea_loss(spec, class_weights):
    loss = spec.params["loss"]
    if loss == "mce":
        return lambda logits, target: L.image_mean(L.masked_ce_pixels(logits, target))
    if loss == "bmce":
        if class_weights is None:
            raise RbsegError(f"{spec.name} needs class weights (inverse per-class pixel frequencies of the training "
                             f"split: attacks.losses.balanced_class_weights)")
        w = torch.as_tensor(class_weights, dtype=torch.float32).flatten().clone()  # never an inference tensor
        if w.numel() != NUM_CLASSES or not torch.isfinite(w).all() or (w < 0).any():
            raise RbsegError(f"{spec.name}: class weights must be {NUM_CLASSES} finite non-negative values")
        return lambda logits, target: L.image_mean(L.masked_ce_pixels(logits, target, w.to(logits.device)))
    if loss == "js":
        return lambda logits, target: L.image_mean(L.js_pixels(logits, target))
    raise RbsegError(f"{spec.name}: unknown SEA loss {loss!r}")


def _run_sea(spec, forward, x, target, class_weights, generator, seeds):
    p = spec.params
    loss_fn = _sea_loss(spec, class_weights)
    factors = tuple(float(f) for f in p["eps_factors"])
    if p.get("random_start", True):
        start = (x + _uniform_noise(x, factors[0] * float(spec.eps), generator, seeds)).clamp(0, 255)
    else:
        start = x.clone()
    x_adv, _ = reduced_eps_apgd(
        forward, x, target, float(spec.eps), spec.steps, loss_fn, start,
        eps_factors=factors, iter_fractions=tuple(float(f) for f in p["iter_fractions"]),
        track=p.get("track_loss", "ce"), alpha=float(p["alpha"]), rho=float(p["rho"]),
        momentum=float(p["momentum"]), autocast_dtype=_autocast_dtype(p),
    )
    return x_adv


@dataclass(frozen=True)
class AttackDef:
    """A registry entry: how to run the attack, its default parameters and steps per preset."""

    name: str
    description: str
    run: Callable  # (spec, forward, x, target, class_weights, generator, seeds) -> x_adv
    defaults: dict
    steps: dict  # preset -> default steps
    step_size_rule: str | None = None  # PGD family: "2.5*eps/steps" when step_size is None


_PGD_DEFAULTS = {"step_size": None, "random_start": False, "seed": 0, "restarts": 1, "dtype": "float32"}
_SEA_DEFAULTS = {"schedule": "reduced-eps", "eps_factors": [2.0, 1.5, 1.0], "iter_fractions": [0.3, 0.3],
                 "alpha": 2.0, "momentum": 0.75, "rho": 0.75, "track_loss": "ce", "random_start": True,
                 "seed": 0, "restarts": 1, "dtype": "float32"}

ATTACKS: dict[str, AttackDef] = {
    "pgd": AttackDef("pgd", "PGD on pixel-wise cross-entropy (void masked)", _run_pgd_family(_pgd_loss),
                     {**_PGD_DEFAULTS, "loss": "ce"}, {"quick": 5, "full": 100}, "2.5*eps/steps"),
    "segpgd": AttackDef("segpgd", "SegPGD (Gu et al. 2022): CE weighted 1-lambda(t) / lambda(t) on correct / wrong pixels",
                        _run_pgd_family(_segpgd_loss),
                        {**_PGD_DEFAULTS, "loss": "segpgd", "lambda": "t/(2T), t=0..T-1"},
                        {"quick": 5, "full": 100}, "2.5*eps/steps"),
    "cospgd": AttackDef("cospgd", "CosPGD (Agnihotri et al. 2024): CE weighted by cos(activation(logits), one-hot)",
                        _run_pgd_family(_cospgd_loss), {**_PGD_DEFAULTS, "loss": "cospgd", "activation": "softmax"},
                        {"quick": 5, "full": 100}, "2.5*eps/steps"),
    "sea-mce": AttackDef("sea-mce", "SEA: APGD on masked CE (correctly classified pixels only), reduced eps",
                         _run_sea, {**_SEA_DEFAULTS, "loss": "mce"}, {"quick": 15, "full": 300}),
    "sea-bmce": AttackDef("sea-bmce", "SEA: APGD on balanced masked CE (inverse training class frequency), reduced eps",
                          _run_sea, {**_SEA_DEFAULTS, "loss": "bmce"}, {"quick": 15, "full": 300}),
    "sea-js": AttackDef("sea-js", "SEA: APGD on Jensen-Shannon divergence to the one-hot label, reduced eps",
                        _run_sea, {**_SEA_DEFAULTS, "loss": "js"}, {"quick": 15, "full": 300}),
}

GROUPS: dict[str, tuple[str, ...]] = {
    "sea": ("sea-mce", "sea-bmce", "sea-js"),
    "all": ("pgd", "segpgd", "cospgd", "sea-mce", "sea-bmce", "sea-js"),
}

PRESETS: dict[str, dict[str, Any]] = {
    # quick: fewer steps and eps values, never fewer images (the engine always runs the full split)
    "quick": {"eps": (2.0, 8.0), "steps": {name: d.steps["quick"] for name, d in ATTACKS.items()},
              "description": "PGD family 5 steps, SEA 15 steps per loss (4/4/7 over 2, 1.5, 1 eps); eps 2 and 8"},
    # full: the published protocols (SEA: 300 iterations per loss, 3:3:4 over 2eps, 1.5eps, eps)
    "full": {"eps": (1.0, 2.0, 4.0, 8.0), "steps": {name: d.steps["full"] for name, d in ATTACKS.items()},
             "description": "PGD family 100 steps, SEA 300 steps per loss (90/90/120); eps 1, 2, 4, 8"},
}


def expand_names(names: Sequence[str] | str) -> list[str]:
    """Attack names with groups expanded (``all``, ``sea``), order kept, duplicates dropped."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        members = GROUPS.get(name, (name,))
        for m in members:
            if m not in ATTACKS:
                known = ", ".join(list(ATTACKS) + list(GROUPS))
                raise RbsegError(f"unknown attack {raw!r} (known: {known})")
            if m not in out:
                out.append(m)
    return out


def build_attacks(names: Sequence[str] | str, eps: Sequence[float] | str | None = None, steps: int | None = None,
                  preset: str = "quick", **options) -> list[AttackSpec]:
    """Specs for every (attack, eps) pair, attacks outermost.

    ``eps``: values in 0-255 units (or a string for :func:`parse_eps`); None or empty: the preset's.
    ``steps``: overrides the preset's steps for every attack. ``options`` set parameters of every
    attack that has them (e.g. ``step_size``, ``random_start``, ``seed``, ``activation``, ``dtype``,
    ``restarts``, ``track_loss``); an option no selected attack has is an error. ``step_size`` None
    resolves to ``2.5 * eps / steps`` (PGD family) and the resolved number is recorded."""
    if preset not in PRESETS:
        raise RbsegError(f"unknown attack preset {preset!r} (known: {', '.join(PRESETS)})")
    selected = expand_names(names)
    eps_values = parse_eps(eps) if isinstance(eps, str) else [float(e) for e in (eps or PRESETS[preset]["eps"])]
    for e in eps_values:
        if not (math.isfinite(e) and 0 < e <= 255):
            raise RbsegError(f"eps {e} is outside (0, 255] (0-255 pixel units)")
    if steps is not None and int(steps) < 1:
        raise RbsegError(f"--steps must be at least 1, got {steps}")
    unused = set(options) - {k for name in selected for k in ATTACKS[name].defaults}
    if unused:
        raise RbsegError(f"attack option(s) {', '.join(sorted(unused))} apply to none of {', '.join(selected)}")
    specs = []
    for name in selected:
        d = ATTACKS[name]
        n_steps = int(steps) if steps is not None else int(PRESETS[preset]["steps"][name])
        for e in eps_values:
            params = dict(d.defaults)
            params.update({k: v for k, v in options.items() if k in d.defaults})
            if "step_size" in params and params["step_size"] is None:
                params["step_size"] = 2.5 * e / n_steps
                params["step_size_rule"] = d.step_size_rule
            if int(params.get("restarts", 1)) < 1:
                raise RbsegError(f"{name}: restarts must be at least 1")
            params["preset"] = preset
            json.dumps(params)  # JSON-serialisable or a TypeError here, not at write time
            specs.append(AttackSpec(name=name, eps=float(e), steps=n_steps, params=params, version=VERSION))
    return specs


def run_attack(spec: AttackSpec, forward: Forward, x255: torch.Tensor, target: torch.Tensor, *,
               class_weights: torch.Tensor | None = None, generator: torch.Generator | None = None,
               seeds: Sequence[int] | None = None) -> torch.Tensor:
    """The adversarial version of ``x255`` (detached, same shape and dtype): ``|x_adv - x255| <= eps``
    and ``0 <= x_adv <= 255``. ``target`` (N, H, W) int64, 255 = void (masked out of every loss).
    ``class_weights`` (21,): the balanced masked CE's weights (sea-bmce). Random starts draw from
    ``generator`` (default: a CPU generator seeded with ``params["seed"]``), or, when ``seeds`` (one
    int per image) is given, from one generator per image: then an image's result does not depend
    on its batch neighbours. With ``restarts > 1`` each image keeps the restart with the lowest
    pixel accuracy (one extra forward per restart). Works when called under ``torch.inference_mode``."""
    if spec.name not in ATTACKS:
        raise RbsegError(f"unknown attack {spec.name!r}")
    _check_inputs(spec, x255, target)
    d = ATTACKS[spec.name]
    restarts = int(spec.params.get("restarts", 1))
    with torch.inference_mode(False), torch.enable_grad():
        x = x255.detach().clone().float()  # a normal tensor even when x255 is an inference tensor
        tgt = target.clone()
        if generator is None and seeds is None:
            generator = torch.Generator().manual_seed(int(spec.params.get("seed", 0)))
        best, best_acc = None, None
        for r in range(restarts):
            run_seeds = None if seeds is None else [int(s) + 1_000_003 * r for s in seeds]
            x_adv = d.run(spec, forward, x, tgt, class_weights, generator, run_seeds)
            if restarts == 1:
                best = x_adv
                break
            with torch.no_grad():
                acc = L.pixel_accuracy(forward(x_adv).float(), tgt)
            if best is None:
                best, best_acc = x_adv, acc
            else:
                take = acc < best_acc
                best = torch.where(take.view(-1, 1, 1, 1), x_adv, best)
                best_acc = torch.minimum(acc, best_acc)
        out = best.detach().to(x255.dtype)
    return out


def attack_names() -> list[str]:
    return list(ATTACKS)


__all__ = ["ATTACKS", "GROUPS", "PRESETS", "VERSION", "AttackDef", "AttackSpec", "Forward", "IGNORE_INDEX",
           "attack_names", "build_attacks", "expand_names", "parse_eps", "pgd_step", "run_attack"]
