"""The engine under cancels and write errors (issue 13): every stage of the export and every operation of a
training step can be stopped; a result is written whole or not at all, and a write error names the file.

Analytic fields (test_export.py) stand in for the radiance field, so the export runs in seconds.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from test_export import SpheresField, figure

from backend.config import ExportConfig, GenerationConfig
from backend.engine import export as ex
from backend.engine.cancellation import call_stoppable, stop_check, stop_inside_autograd
from backend.errors import GenerationCancelled, OutputError

UV_EXPORT = ExportConfig(
    mesh_resolution=160, texture="uv", texture_size=512, target_faces=4000, threshold=25.0
)


class CountingCheck:
    """A check that records when it ran and raises GenerationCancelled at call number `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.times: list[float] = []

    def __call__(self) -> None:
        self.times.append(time.perf_counter())
        if self.stop_at is not None and len(self.times) >= self.stop_at:
            raise GenerationCancelled()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_smoothing_in_slabs_is_scipys_gaussian_filter() -> None:
    grid = np.random.default_rng(0).random((70, 65, 67), dtype=np.float32)
    for sigma in (0.7, 1.0, 2.5):
        np.testing.assert_array_equal(
            ex.smooth_grid(grid, sigma, slab=8), gaussian_filter(grid, sigma=sigma, mode="nearest")
        )


def test_the_export_checks_the_stop_flag_throughout(tmp_path: Path) -> None:
    """Between every stage and inside the long loops: no stretch without a check takes more than a small
    part of the whole export (before, nothing checked after the optimization)."""
    check = CountingCheck()
    started = time.perf_counter()
    ex.export_result(figure(), UV_EXPORT, tmp_path, check=check)
    times = [started, *check.times, time.perf_counter()]
    gaps = np.diff(times)
    assert len(check.times) >= 50
    assert gaps.max() < 0.35 * (times[-1] - times[0]), np.sort(gaps)[-5:]


@pytest.mark.parametrize("where", [0.0, 0.2, 0.5, 0.8, 0.97, 1.0])
def test_a_cancelled_export_stops_and_writes_nothing(where: float, tmp_path: Path) -> None:
    total = len(_checks_of_a_full_export(tmp_path / "full"))
    check = CountingCheck(stop_at=max(1, round(where * total)))
    out = tmp_path / "out"
    with pytest.raises(GenerationCancelled):
        ex.export_result(figure(), UV_EXPORT, out, b"\x89PNG", check=check)
    assert leftovers(out) == []


_FULL_CHECKS: list[float] = []


def _checks_of_a_full_export(out: Path) -> list[float]:
    if not _FULL_CHECKS:
        check = CountingCheck()
        ex.export_result(figure(), UV_EXPORT, out, check=check)
        _FULL_CHECKS.extend(check.times)
    return _FULL_CHECKS


def test_a_write_error_names_the_file_and_leaves_no_part_of_the_result(tmp_path, monkeypatch) -> None:
    real = ex.write_bytes_atomic

    def disk_full_at_the_glb(path: Path, data: bytes) -> Path:
        if Path(path).name == "mesh.glb":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(ex, "write_bytes_atomic", disk_full_at_the_glb)
    out = tmp_path / "out"
    with pytest.raises(OutputError) as err:
        ex.export_result(figure(), UV_EXPORT, out, b"\x89PNG")
    message = str(err.value)
    assert str(out / "mesh.glb") in message and "No space left on device" in message
    assert leftovers(out) == []  # texture.png and mesh.npz were written first, and removed


def test_a_full_disk_during_the_export(small_disk, fill_disk) -> None:
    out = small_disk / "out"
    out.mkdir()
    fill_disk(small_disk, 64 << 10)
    with pytest.raises(OutputError) as err:
        ex.export_result(SpheresField(), UV_EXPORT, out, b"\x89PNG")
    assert "No space left on device" in str(err.value) and str(out) in str(err.value)
    assert leftovers(out) == []


def test_a_training_step_stops_between_its_operations(tiny_pixel_prior: Path) -> None:
    from backend.engine.pipeline import DistillationRun
    from backend.engine.prior import load_prior

    cpu = torch.device("cpu")
    cfg = GenerationConfig(
        prompt="a red cube", model=str(tiny_pixel_prior), steps=3, render_size=64
    ).validate()
    run = DistillationRun(cfg, load_prior(str(tiny_pixel_prior), cpu), cpu)
    counts = []
    for i in range(2):
        counting = CountingCheck()
        with stop_inside_autograd(counting):
            run.step(i)
        counts.append(len(counting.times))
    per_step = min(counts)  # steps differ a little (shading, occupancy refreshes)
    # The hash grid alone has 16 levels forward and backward, each with its own check.
    assert per_step >= 2 * 16
    # In the forward pass, mid-way, and in the backward pass (its hash grid levels come last).
    for stop_at in (1, per_step // 2, per_step - 8):
        with pytest.raises(GenerationCancelled), stop_inside_autograd(CountingCheck(stop_at)):
            run.step(2)
    with stop_inside_autograd(CountingCheck()):
        assert np.isfinite(run.step(2).loss)  # a stopped step leaves the run usable


def test_a_call_that_waits_is_abandoned_at_once_when_stopped() -> None:
    release = threading.Event()
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(GenerationCancelled):
        call_stoppable(lambda: release.wait(60), stop_check(stop.is_set))
    assert time.monotonic() - started < 10
    release.set()
    assert call_stoppable(lambda: 42, stop_check(lambda: False)) == 42
    with pytest.raises(ZeroDivisionError):
        call_stoppable(lambda: 1 / 0, stop_check(lambda: False))
