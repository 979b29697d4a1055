"""The user ``module:function`` model file the loading tests write out (one definition, used by
test_models and test_models_loading): ``build`` returns a small segmentation net, ``broken`` raises,
``not_a_model`` returns a non-module."""
from __future__ import annotations

import textwrap

USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn


    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Conv2d(3, 4, 1)
            self.head = nn.Conv2d(4, 21, 1)

        def forward(self, x):
            return {"out": self.head(self.backbone(x))}


    def build():
        return Seg()


    def broken():
        raise ValueError("width must be even, got 7")


    def not_a_model():
        return 42
""")
