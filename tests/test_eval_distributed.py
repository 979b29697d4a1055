"""``torchrun -m robustbench_seg evaluate``: exact sharding over processes, results equal to one process."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robustbench_seg.evaluation import results as store
from robustbench_seg.evaluation.engine import Shard, _Job
from subprocs import run_rbseg


def _evaluate_args(root: Path, out: Path) -> list[str]:
    return ["evaluate", "--model", "test_eval_attacks:tiny_model", "--data", str(root), "--perturbations", "none",
            "--subsets", "obj1,obj2", "--attacks", "pgd,sea-js", "--eps", "4", "--steps", "2", "--batch-size", "2",
            "--device", "cpu", "--out", str(out), "--json"]


def test_two_process_torchrun_equals_one_process(synth_micro_root, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_rbseg(_evaluate_args(synth_micro_root, one), timeout=120)
    printed = run_rbseg(_evaluate_args(synth_micro_root, two), nproc=2, timeout=120)
    assert len(json.loads(printed)) == 4  # rank 0 alone prints: clean, two attacks, the worst case
    a, b = store.load_results(one), store.load_results(two)
    assert [r["perturbation"]["name"] for r in a] == [r["perturbation"]["name"] for r in b]
    assert {r["perturbation"].get("kind") for r in b} >= {"attack", "worst"}
    for ra, rb in zip(a, b):
        assert ra["subsets"] == rb["subsets"]  # metrics of every subset, worst-case rounds and choices included
        assert ra["protocol"]["world_size"] == 1 and rb["protocol"]["world_size"] == 2
        if "per_image" in ra:  # the gathered per-image statistics are the same, image for image
            np.testing.assert_array_equal(store.load_per_image(ra), store.load_per_image(rb))
    # one writer: no partial pass files or temporary files left behind
    assert not [p for p in two.rglob("*") if p.name.startswith(".")]


def test_shards_deal_every_batch_to_exactly_one_process():
    batches = [[0, 1], [2], [3, 4], [5], [6, 7], [8]]
    for world in (1, 2, 3, 4, 7):
        shares = [Shard(rank, world).batches(batches) for rank in range(world)]
        dealt = sorted(i for share in shares for batch in share for i in batch)
        assert dealt == list(range(9))  # exact: nothing padded, nothing repeated
        assert all(b in batches for share in shares for b in share)  # the batches themselves are unchanged


def test_each_rank_resumes_only_its_own_partial_pass(tmp_path):
    """A partial pass file belongs to one (rank, world size): another process never resumes it."""
    def plan(rank, world):
        job = _Job(None, {"name": "m", "sha256": "s"}, tmp_path, "val", ["a", "b"], {"all": ["a", "b"]}, {},
                   {"data_fingerprint": "f", "split": "val", "fit": "tile", "clip": True, "dtype": "float32"},
                   tmp_path, Shard(rank, world))
        return job.plan_hash([(None, {"name": "clean", "sha256": None})], [[0], [1]])

    assert plan(0, 1) != plan(0, 2) != plan(1, 2)
    assert plan(0, 2) == plan(0, 2)


def test_a_killed_rank_resumes_its_own_share(synth_micro_root, tmp_path, monkeypatch):
    """Rank 1 of 2 (the all_reduce replaced by the identity: one process plays the rank) is
    interrupted, then resumes from its own partial file: the same numbers as an uninterrupted rank 1."""
    from test_eval_attacks import TinyNet

    from robustbench_seg.errors import RbsegError
    from robustbench_seg.evaluation import engine

    monkeypatch.setattr(engine.Shard, "sum_", lambda self, t: t)
    monkeypatch.setattr(engine.Shard, "barrier", lambda self: None)
    monkeypatch.setattr(engine.Shard, "from_env", classmethod(lambda cls, device: cls(1, 2)))

    def run(out, model):
        return engine.evaluate(model, data_root=synth_micro_root, perturbations="none", attacks="pgd", eps=[4], steps=2,
                               out=out, device="cpu", progress=False, model_name="tiny", subsets="none", batch_size=2)

    fresh = run(tmp_path / "fresh", TinyNet(seed=5))
    model = TinyNet(seed=5)
    model.fail_after = 9
    with pytest.raises(RbsegError, match="simulated interruption"):
        run(tmp_path / "run", model)
    partial = list((tmp_path / "run").rglob(".partial-*.pt"))
    assert len(partial) == 1
    model.fail_after, model.calls = None, 0
    resumed = run(tmp_path / "run", model)
    full_share = TinyNet(seed=5)
    run(tmp_path / "again", full_share)
    assert 0 < model.calls < full_share.calls  # only the batches not finished before the kill
    assert [r.subsets for r in resumed] == [r.subsets for r in fresh]
    assert not list((tmp_path / "fresh").rglob("*.json"))  # rank 1 writes nothing
    # rank 0 of the same plan never picks up rank 1's partial file
    model.fail_after, model.calls = 9, 0
    with pytest.raises(RbsegError):
        run(tmp_path / "other", model)
    monkeypatch.setattr(engine.Shard, "from_env", classmethod(lambda cls, device: cls(0, 2)))
    job_partial = list((tmp_path / "other").rglob(".partial-*.pt"))
    model.fail_after, model.calls = None, 0
    run(tmp_path / "other", model)
    assert job_partial[0].exists()  # rank 1's file is left alone by rank 0
