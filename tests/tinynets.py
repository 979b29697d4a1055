"""The small random segmentation net the evaluation tests share (one definition, imported by
test_eval_engine, test_eval_attacks and test_eval_corruptions)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class TinyNet(torch.nn.Module):
    """A random 2-layer net returning {"out": logits} at half resolution (the engine upsamples).
    ``calls`` counts forwards; ``fail_after`` simulates an interruption; with ``record_inputs`` every
    input batch is kept in ``inputs``."""

    def __init__(self, seed: int = 0, record_inputs: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 21, 3, stride=2, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.calls = 0
        self.fail_after: int | None = None
        self.record_inputs = record_inputs
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated interruption")
        if self.record_inputs:
            self.inputs.append(x.detach().clone())
        return {"out": self.conv2(F.relu(self.conv1(x)))}
