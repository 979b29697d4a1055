"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016), l2, multi-class, batched.

For one input ``x0`` with label ``k0 = argmax f(x0)`` and candidate classes ``I`` = the
``num_classes`` highest-scoring classes at ``x0`` (``I[0] = k0``), iterate from ``x = x0``:

    w_k = grad f_{I[k]}(x) - grad f_{k0}(x),   f'_k = f_{I[k]}(x) - f_{k0}(x)      (k = 1 .. nc-1)
    l   = argmin_k |f'_k| / ||w_k||_2
    r   = (|f'_l| / ||w_l||_2 + 1e-4) * w_l / ||w_l||_2
    r_tot += r;   x = x0 + (1 + overshoot) * r_tot

until ``argmax f(x) != k0`` or ``max_iter`` steps; the result is ``(1 + overshoot) * r_tot``.
The ``1e-4`` is the reference implementation's guard against a zero step (LTS4/deepfool).

Batching: the images of a batch are independent (the classifier must be in eval mode, so
BatchNorm uses running statistics); each keeps its own candidate set, step count and stop
condition, and an image that has crossed its boundary is frozen while the others continue.
Per image the iterates are exactly the sequential algorithm's. The ``nc - 1`` gradients come
from one forward pass and ``nc - 1`` backward passes of ``sum_b (f_{I[b,k]} - f_{k0_b})``,
which give every image's own ``w_k`` because the images do not interact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

STEP_EPS = 1e-4


@dataclass
class DeepFoolResult:
    r: torch.Tensor  # (N, ...) the minimal perturbation found, overshoot included
    iterations: torch.Tensor  # (N,) int64: steps taken
    label: torch.Tensor  # (N,) label at the start point
    final_label: torch.Tensor  # (N,) label at x0 + r

    @property
    def fooled(self) -> torch.Tensor:
        return self.final_label != self.label


def deepfool(
    classifier: nn.Module,
    x: torch.Tensor,
    num_classes: int = 10,
    overshoot: float = 0.02,
    max_iter: int = 50,
) -> DeepFoolResult:
    """Batched DeepFool on ``x`` (N, ...) for a classifier mapping inputs to logits (N, K)."""
    x = x.detach()
    n = x.shape[0]
    r_tot = torch.zeros_like(x)
    x_adv = x.clone()
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    active = torch.arange(n, device=x.device)
    expand = (-1,) + (1,) * (x.dim() - 1)
    for it in range(max_iter + 1):
        xa = x_adv[active].clone().requires_grad_(True)
        logits = classifier(xa)
        if it == 0:
            nc = max(2, min(int(num_classes), logits.shape[1]))
            cand = logits.detach().topk(nc, dim=1).indices  # (N, nc); cand[:, 0] is the label
            label = cand[:, 0].clone()
            final_label = label.clone()
            current = label
        else:
            current = logits.detach().argmax(1)
            final_label[active] = current
        still = current == label[active]
        if it == max_iter or not bool(still.any()):
            break
        sel = logits.gather(1, cand[active])  # (n, nc)
        diffs = (sel[:, 1:] - sel[:, :1])[still]  # (m, nc-1): f_k - f_label of the unfooled images
        grads = []
        for k in range(nc - 1):
            (g,) = torch.autograd.grad(diffs[:, k].sum(), xa, retain_graph=k < nc - 2)
            grads.append(g[still])
        w = torch.stack(grads, 1)  # (m, nc-1, ...)
        wnorm = w.flatten(2).norm(dim=2)  # (m, nc-1)
        fk = diffs.detach().abs()
        pert = torch.where(wnorm > 0, fk / wnorm.clamp_min(1e-30), torch.full_like(fk, float("inf")))
        best = pert.argmin(1)
        ar = torch.arange(best.numel(), device=x.device)
        p_l, norm_l = pert[ar, best], wnorm[ar, best].clamp_min(1e-30)
        step = ((p_l + STEP_EPS) / norm_l).view(expand) * w[ar, best]
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))  # all-zero gradients: no move
        active = active[still]
        r_tot[active] += step
        x_adv[active] = x[active] + (1.0 + overshoot) * r_tot[active]
        iterations[active] += 1
    return DeepFoolResult((1.0 + overshoot) * r_tot, iterations, label, final_label)
