"""Where labs keep their state and caches (overridable for tests)."""

from __future__ import annotations

import os
from pathlib import Path


def labs_dir() -> Path:
    return Path(os.environ.get("AHVLITE_LAB_DIR", "/var/lib/ahvlite/labs"))


def cache_dir() -> Path:
    return Path(os.environ.get("AHVLITE_CACHE_DIR", "/var/cache/ahvlite"))


def lab_root(name: str) -> Path:
    return labs_dir() / name
