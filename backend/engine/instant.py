"""Instant generation: prompt -> a trained generator's field in one forward pass -> `field.pt` -> mesh files.

The same files as a per-prompt run (`pipeline.generate`): mesh.glb, mesh.npz, preview.png (+ texture.png)
and field.pt, whose geometry (a triplane field, `geometry/triplane.py`) a Refine continues with a per-prompt
optimization (`generate --init-field`, or a job's `init_job`). A prompt with words the generator never saw
still gives a result, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from backend.config import GenerationConfig
from backend.engine.background import make_background
from backend.engine.cancellation import call_stoppable, stop_check
from backend.engine.checkpoint import FILENAME, FieldCheckpoint, save_checkpoint
from backend.engine.export import export_result
from backend.engine.generator import GENERATORS, GeneratorCache
from backend.engine.optimize import preview_png
from backend.engine.prior import resolve_device
from backend.engine.rendering import make_renderer

GENERATING = "generating"


def generate_instant(
    cfg: GenerationConfig,
    out_dir: Path,
    on_progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    generators: GeneratorCache | None = None,
) -> tuple[dict[str, Path], int, int, list[str]]:
    """Write the instant result of `cfg.prompt` into `out_dir`: (files, vertices, faces, warnings).

    on_progress(phase, **fields) is called at each phase ("loading model", "generating", "extracting
    mesh", "texturing"); `warnings` go with every call once known."""
    assert cfg.generator is not None
    check_stop = stop_check(should_stop)
    warnings: list[str] = []

    def report(phase: str) -> None:
        if on_progress is not None:
            on_progress(phase, warnings=tuple(warnings))

    device = resolve_device(cfg.device)
    report("loading model")
    cache = generators or GENERATORS
    name = cfg.generator
    loaded = call_stoppable(lambda: cache.get(name, device), check_stop)
    check_stop()
    warnings += loaded.warnings_for(cfg.prompt)
    report(GENERATING)
    field = loaded.field_for(cfg.prompt, device)
    background = make_background(cfg.background).to(device)
    renderer = make_renderer(
        cfg.samples_per_ray, device, seed=cfg.seed, bound=field.bound, ambient=cfg.ambient
    )
    preview = preview_png(field, background, renderer, cfg)
    ckpt = FieldCheckpoint(
        config=cfg.to_dict(),
        geometry=field.spec(),
        geometry_state={k: v.detach().cpu() for k, v in field.state_dict().items()},
        step=0,
        background=background.kind,
        background_state={k: v.detach().cpu() for k, v in background.state_dict().items()},
    )
    files = {FILENAME: save_checkpoint(out_dir / FILENAME, ckpt)}

    def export_phase(phase: str) -> None:
        check_stop()
        report(phase)

    check_stop()
    report("extracting mesh")
    with torch.no_grad():
        exported = export_result(field, cfg.export, out_dir, preview, on_phase=export_phase, check=check_stop)
    return exported.files | files, exported.n_vertices, exported.n_faces, warnings
