"""Shared fixtures: tiny random diffusers models built in-process, and the `gpu` marker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
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


def _mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a small tmpfs at `path` (Linux, as root); False where that is not allowed."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty folder that nobody can write into, root included: a read-only tmpfs where one can be
    mounted, else (not root) a folder without write permission."""
    path = tmp_path / "read-only"
    if _mount_tmpfs(path, "ro,size=1m"):
        yield path
        _unmount(path)
    elif os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
    else:
        pytest.skip("cannot make a read-only folder here (root, and no tmpfs mount)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An empty folder on its own 2 MiB file system (a tmpfs); tests fill it to the level they need."""
    path = tmp_path / "small-disk"
    if not _mount_tmpfs(path, "size=2m"):
        pytest.skip("cannot mount a small tmpfs here (needs root on Linux)")
    yield path
    _unmount(path)


def _fill_disk(folder: Path, leave_bytes: int = 0) -> None:
    """Fill the file system of `folder` until at most `leave_bytes` are free."""
    import shutil

    with open(folder / "filler", "wb") as f:
        try:
            while (free := shutil.disk_usage(folder).free) > leave_bytes:
                f.write(b"\0" * min(65536, max(4096, free - leave_bytes)))
                f.flush()
        except OSError:
            pass


@pytest.fixture
def fill_disk() -> Callable[[Path, int], None]:
    """fill_disk(folder, leave_bytes): fill the file system of `folder` (e.g. a `small_disk`)."""
    return _fill_disk


TINY_GENERATOR_PROMPTS = ["a red cube", "a blue sphere"]


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory: pytest.TempPathFactory, tiny_pixel_prior: Path) -> Path:
    """Folder of a tiny untrained generator over the tiny pixel prior's text encoder, trained (in name) on
    TINY_GENERATOR_PROMPTS."""
    from backend.engine.generator import make_tiny_generator

    return make_tiny_generator(
        tmp_path_factory.mktemp("tiny_generator") / "gen", tiny_pixel_prior, TINY_GENERATOR_PROMPTS
    )
