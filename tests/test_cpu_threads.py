"""`cpu_threads`: the torch threads of a run on the CPU, recommended by a model's dreamsmith.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from backend.config import ExportConfig, GenerationConfig, with_recommendations
from backend.engine.pipeline import generate
from backend.engine.prior import load_prior
from backend.engine.threads import cpu_threads
from backend.errors import ModelLoadError

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def test_the_block_runs_with_the_count_and_the_count_is_put_back() -> None:
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with cpu_threads(other, CPU):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(other, CPU):
        raise RuntimeError("a failing run")
    assert torch.get_num_threads() == before
    for count, device in ((None, CPU), (other, torch.device("cuda"))):
        with cpu_threads(count, device):
            assert torch.get_num_threads() == before


def test_a_run_takes_the_models_recommendation_unless_it_sets_its_own() -> None:
    cfg = GenerationConfig(prompt="a red cube")
    assert with_recommendations(cfg, {"cpu_threads": 1.0}).cpu_threads == 1
    assert with_recommendations(cfg, {}).cpu_threads is None
    own = GenerationConfig(prompt="a red cube", cpu_threads=3)
    assert with_recommendations(own, {"cpu_threads": 1.0}).cpu_threads == 3
    # The built-in demo prior recommends one thread (its 32-pixel steps are many small operations).
    assert json.loads((ROOT / "backend/priors/demo/dreamsmith.json").read_text())["cpu_threads"] == 1


def test_generate_runs_on_the_recommended_threads_and_restores_them(
    tiny_pixel_prior: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "recommends"
    shutil.copytree(tiny_pixel_prior, folder)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    (folder / "dreamsmith.json").write_text(json.dumps({"cpu_threads": wanted}))
    seen: list[int] = []
    cfg = GenerationConfig(
        prompt="a red cube",
        model=str(folder),
        steps=2,
        render_size=16,
        device="cpu",
        export=ExportConfig(mesh_resolution=32, target_faces=2000),
    )
    generate(cfg, tmp_path / "out", on_progress=lambda p: seen.append(torch.get_num_threads()))
    optimizing = seen[1:-1]  # between "loading model" and "done"
    assert optimizing and set(optimizing) == {wanted}
    assert torch.get_num_threads() == before
    (folder / "dreamsmith.json").write_text(json.dumps({"cpu_threads": 0}))
    with pytest.raises(ModelLoadError, match="cpu_threads"):
        load_prior(str(folder), CPU)
