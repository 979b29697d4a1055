"""APGD (Croce & Hein 2020) for segmentation, l-inf, as SEA (Croce, Singh, Hein, ECCV 2024) runs it.

Batched without host synchronisation: every per-image decision (best point, step-size halving,
restart from the best point) is a ``torch.where`` over the batch; the checkpoint schedule depends
only on the iteration count. Step-size schedule (AutoAttack / SEA ``apgd_train``): initial step
``alpha * eps`` (alpha = 2), momentum 0.75 (none at the first step), checkpoints after
``p1 = max(int(0.22 n), 1)`` steps, then ever shorter intervals (minus ``max(int(0.03 n), 1)``,
at least ``max(int(0.06 n), 1)``); at a checkpoint an image's step is halved and it restarts from
its best point when its tracked loss rose in at most ``rho = 0.75`` of the interval's steps, or
when the best loss did not improve since the previous checkpoint and the step was not halved
there. The best point for the step-size logic maximises the *tracked* loss (SEA: plain CE,
``track_loss="ce"``; ``"same"``: the attack loss); the returned point minimises the image's
pixel accuracy (SEA's ``x_best_adv``; ties: the later iterate). As in AutoAttack the first
oscillation check compares against an unfilled (zero) slot of the loss history (index -1).

:func:`reduced_eps_apgd` is SEA's ``apgd_largereps``: the iterations split 3:3:4
(``int(0.3 n)``, ``int(0.3 n)``, the rest) over ``2 eps``, ``1.5 eps``, ``eps``, each stage
warm-started from the previous stage's result projected onto the new ball.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .losses import ce_pixels, image_mean, pixel_accuracy

# (logits float (N,C,H,W), target) -> per-image loss (N,)
ImageLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def checkpoint_spans(n_iter: int) -> list[tuple[int, int]]:
    """(0-based iteration of each step-size check, the length of the interval it looks back on)."""
    k = max(int(0.22 * n_iter), 1)
    n_min, decr = max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    out, counter = [], 0
    for i in range(n_iter):
        counter += 1
        if counter == k:
            out.append((i, k))
            counter = 0
            k = max(k - decr, n_min)
    return out


def checkpoint_schedule(n_iter: int) -> list[int]:
    """0-based iterations after which APGD checks the step size."""
    return [i for i, _ in checkpoint_spans(n_iter)]


def value_and_grad(forward, x_adv: torch.Tensor, target: torch.Tensor, loss_fn: ImageLoss, need_grad: bool = True,
                   autocast_dtype: torch.dtype | None = None):
    """Logits (float), per-image loss and the gradient of the summed loss w.r.t. the input.

    ``torch.autograd.grad`` with the input as the only target: the backward pass skips every weight
    gradient (the model's parameters may require grad; nothing accumulates in their ``.grad``)."""
    xr = x_adv.detach().requires_grad_(need_grad)
    with torch.set_grad_enabled(need_grad):
        with torch.autocast(device_type=xr.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            logits = forward(xr)
        logits = logits.float()
        loss = loss_fn(logits, target)
    grad = torch.autograd.grad(loss.sum(), xr)[0] if need_grad else None
    return logits.detach(), loss.detach(), grad


def _ce_image(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return image_mean(ce_pixels(logits, target))


def apgd_linf(
    forward,
    x: torch.Tensor,
    target: torch.Tensor,
    eps: float,
    n_iter: int,
    loss_fn: ImageLoss,
    x_init: torch.Tensor,
    *,
    track: str = "ce",
    alpha: float = 2.0,
    rho: float = 0.75,
    momentum: float = 0.75,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from ``x_init`` (inside the eps-ball around ``x``, 0-255 units).

    Returns (the lowest-pixel-accuracy point per image, its pixel accuracy (N,))."""
    n = x.shape[0]
    lower = (x - eps).clamp(0, 255)
    upper = (x + eps).clamp(0, 255)
    track_fn = _ce_image if track == "ce" else loss_fn
    view = (n,) + (1,) * (x.ndim - 1)

    x_adv = torch.minimum(torch.maximum(x_init, lower), upper)
    logits, loss, grad = value_and_grad(forward, x_adv, target, loss_fn, True, autocast_dtype)
    tracked = loss if track_fn is loss_fn else track_fn(logits, target)
    acc = pixel_accuracy(logits, target)
    x_best_adv = x_adv.clone()
    if n_iter <= 0:
        return x_best_adv, acc
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), tracked.clone()
    step = torch.full(view, alpha * eps, dtype=x.dtype, device=x.device)
    loss_steps = torch.zeros(n_iter, n, dtype=tracked.dtype, device=x.device)
    loss_best_last = loss_best.clone()
    reduced_last = torch.ones(n, dtype=torch.bool, device=x.device)
    x_adv_old = x_adv
    # per checkpoint: its interval length and the loss-history rows it compares, built once (no
    # host-to-device copy in the loop)
    history: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}
    for i, span in checkpoint_spans(n_iter):
        history[i] = (span, torch.tensor([(i - c) % n_iter for c in range(span)], device=x.device),
                      torch.tensor([(i - c - 1) % n_iter for c in range(span)], device=x.device))
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv
        a = momentum if i > 0 else 1.0
        z = torch.minimum(torch.maximum(x_adv + step * torch.sign(grad), lower), upper)
        z = torch.minimum(torch.maximum(x_adv + (z - x_adv) * a + grad2 * (1 - a), lower), upper)
        x_adv = z
        need_grad = i < n_iter - 1  # the last gradient is never used
        logits, loss, g = value_and_grad(forward, x_adv, target, loss_fn, need_grad, autocast_dtype)
        if g is not None:
            grad = g
        tracked = loss if track_fn is loss_fn else track_fn(logits, target)
        acc_now = pixel_accuracy(logits, target)
        improved = acc_now <= acc
        acc = torch.minimum(acc, acc_now)
        x_best_adv = torch.where(improved.view(view), x_adv, x_best_adv)
        loss_steps[i] = tracked
        better = tracked > loss_best
        x_best = torch.where(better.view(view), x_adv, x_best)
        grad_best = torch.where(better.view(view), grad, grad_best)
        loss_best = torch.where(better, tracked, loss_best)
        if i in history:
            k, rows, prev = history[i]
            rises = (loss_steps[rows] > loss_steps[prev]).sum(0)
            oscillating = rises <= k * rho
            no_improvement = (~reduced_last) & (loss_best_last >= loss_best)
            reduce = oscillating | no_improvement
            reduced_last = reduce
            loss_best_last = loss_best.clone()
            step = torch.where(reduce.view(view), step / 2.0, step)
            x_adv = torch.where(reduce.view(view), x_best, x_adv)
            grad = torch.where(reduce.view(view), grad_best, grad)
    return x_best_adv, acc


def stage_iterations(n_iter: int, iter_fractions: tuple[float, ...] = (0.3, 0.3)) -> list[int]:
    """Iterations per reduced-eps stage: ``int(f * n)`` for each fraction, the rest last (300 ->
    90, 90, 120)."""
    iters = [int(f * n_iter) for f in iter_fractions]
    iters.append(n_iter - sum(iters))
    return iters


def reduced_eps_apgd(
    forward,
    x: torch.Tensor,
    target: torch.Tensor,
    eps: float,
    n_iter: int,
    loss_fn: ImageLoss,
    x_init: torch.Tensor,
    *,
    eps_factors: tuple[float, ...] = (2.0, 1.5, 1.0),
    iter_fractions: tuple[float, ...] = (0.3, 0.3),
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SEA's reduced-eps schedule; ``x_init`` starts the first stage (projected onto its ball)."""
    current, acc = x_init, None
    for stage_iters, factor in zip(stage_iterations(n_iter, iter_fractions), eps_factors):
        stage_eps = factor * eps
        current = (x + (current - x).clamp(-stage_eps, stage_eps)).clamp(0, 255)
        current, acc = apgd_linf(forward, x, target, stage_eps, stage_iters, loss_fn, current, **kwargs)
    return current, acc
