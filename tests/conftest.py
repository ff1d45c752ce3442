"""Shared fixtures: tiny random diffusers models built in-process, and the `gpu` marker."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before torch loads: OpenMP's busy-waiting threads slow torch down many times over on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_latent_prior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random latent (VAE) diffusers model, Stable Diffusion layout."""
    from backend.engine.tiny_prior import make_tiny_prior

    path = tmp_path_factory.mktemp("tiny_latent")
    make_tiny_prior(path, pixel=False, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_pixel_prior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random pixel-space diffusers model (no VAE)."""
    from backend.engine.tiny_prior import make_tiny_prior

    path = tmp_path_factory.mktemp("tiny_pixel")
    make_tiny_prior(path, pixel=True, seed=0)
    return path
