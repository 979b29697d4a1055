"""Training-test helpers shared by test_training_run, test_training_record and test_segmix (one
definition): the fast config, state comparison and the 'killed after step N' hook."""
from __future__ import annotations

import torch

from robustbench_seg.training import TrainConfig, trainer

FAST = dict(preset="tiny", crop=32, batch_size=4, val_split=None, progress=False, num_workers=0, checkpoint_every=None)


def cfg(root, out, **kw) -> TrainConfig:
    return TrainConfig(data=str(root), out=str(out), **{**FAST, "steps": 2, **kw})


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def killed_at(monkeypatch, stage: str | None, step: int):
    """Make the trainer raise (the returned exception class) after global step ``step`` of ``stage``
    (None: of any stage), as a kill would; the caller resets ``trainer.AFTER_STEP``."""
    class Killed(Exception):
        pass

    def hook(stage_name, gstep):
        if gstep == step and stage in (None, stage_name):
            raise Killed

    monkeypatch.setattr(trainer, "AFTER_STEP", hook)
    return Killed
