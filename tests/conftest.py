"""Shared fixtures: the real samples in ../shared (skipped when absent) and a tiny SynthVOC tree."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting on 2 cores

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RBSEG_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Never touch the user's ~/.cache/rbseg from tests."""
    old = os.environ.get("RBSEG_CACHE")
    os.environ["RBSEG_CACHE"] = str(tmp_path_factory.mktemp("rbseg-cache"))
    yield
    if old is None:
        os.environ.pop("RBSEG_CACHE", None)
    else:
        os.environ["RBSEG_CACHE"] = old


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and far faster when other jobs share the cores.
    Modules of tiny-model tests use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


@pytest.fixture(scope="session")
def voc_samples_root(shared_dir) -> Path:
    root = shared_dir / "voc_samples" / "VOC2012"
    if not root.is_dir():
        pytest.skip("../shared/voc_samples is absent")
    return root


@pytest.fixture(scope="session")
def public_perturbations_dir(shared_dir) -> Path:
    root = shared_dir / "perturbations" / "public"
    if not root.is_dir():
        pytest.skip("../shared/perturbations/public is absent")
    return root


@pytest.fixture(scope="session")
def synth_micro_root(tmp_path_factory) -> Path:
    from robustbench_seg.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth-micro"), preset="micro", seed=0)
