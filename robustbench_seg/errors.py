"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""
from __future__ import annotations

from pathlib import Path


class RbsegError(Exception):
    """A problem with the user's input (a file, an option, a checkpoint) rather than a bug."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class DataError(RbsegError):
    """A dataset file is missing, unreadable or holds invalid values."""


class CheckpointError(RbsegError):
    """A checkpoint is missing, corrupt, truncated or not an rbseg checkpoint."""


class PerturbationError(RbsegError):
    """A perturbation file has the wrong shape, dtype, range or metadata."""
