"""The backend type-checks with mypy, strict (configuration and per-library overrides in pyproject.toml)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_backend_type_checks_with_mypy_strict() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    # The first run (empty .mypy_cache) analyses torch, numpy, transformers ...: about a minute.
    command = [sys.executable, "-m", "mypy", "--strict", "backend"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
