"""Where the suite finds what it ships (models/, perturbations/, reports/) and its cache.

The shipped folders sit beside the package in a checkout (``pip install -e .``); ``RBSEG_HOME``
overrides that root, ``RBSEG_CACHE`` the cache (default ``~/.cache/rbseg``).
"""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    env = os.environ.get("RBSEG_HOME")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent


def shipped_models_dir() -> Path:
    return project_root() / "models"


def shipped_perturbations_dir() -> Path:
    return project_root() / "perturbations"


def shipped_reports_dir() -> Path:
    return project_root() / "reports"


def cache_dir() -> Path:
    env = os.environ.get("RBSEG_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "rbseg"
    path.mkdir(parents=True, exist_ok=True)
    return path
