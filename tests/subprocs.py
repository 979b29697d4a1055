"""Running ``python -m robustbench_seg`` in a child process, optionally under torchrun (one definition,
shared by the distributed training and evaluation tests)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def run_rbseg(args: list[str], nproc: int | None = None, timeout: int = 240) -> str:
    """``rbseg ARGS`` (under ``torchrun --standalone --nproc_per_node NPROC`` when given) with one OpenMP
    thread per process and the tests folder importable; the whole process group is killed on timeout.
    Asserts exit status 0 (the stderr tail as the message); returns stdout."""
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [sys.executable, *launcher, "-m", "robustbench_seg", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        proc.communicate()
        pytest.fail(f"{' '.join(cmd[1:6])} ... did not finish in {timeout} s")
    assert proc.returncode == 0, err[-3000:]
    return out
