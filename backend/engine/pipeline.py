"""One generation: prompt -> optimized field -> `field.pt` -> marching-cubes mesh and files.

`generate` = optimize a field (`optimize.DistillationRun`, with progress, a stop flag and optional
periodic checkpoints) + save its checkpoint (`checkpoint.py`) + export it (`export.py`).
`export_checkpoint` does the second half alone: a saved field exported again with other export settings.
With `cfg.generator` the field comes from a trained generator in one forward pass instead (`instant.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.config import ExportConfig, GenerationConfig, config_from_dict, with_recommendations
from backend.engine.background import make_background
from backend.engine.cancellation import call_stoppable, stop_check, stop_inside_autograd
from backend.engine.checkpoint import FILENAME, FieldCheckpoint, save_checkpoint
from backend.engine.export import export_result
from backend.engine.live import LiveMesh, extract_live_mesh
from backend.engine.optimize import DistillationRun, preview_png
from backend.engine.prior import PriorCache, resolve_device
from backend.engine.rendering import make_renderer
from backend.engine.threads import cpu_threads
from backend.errors import DreamsmithError, GenerationCancelled

PHASES = ("loading model", "generating", "optimizing", "extracting mesh", "texturing", "done")


@dataclass
class Progress:
    phase: str
    step: int
    steps: int
    t: int | None = None
    loss: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    preview_png: bytes | None = None
    live_mesh: LiveMesh | None = None  # a coarse mesh of the field at `step` (`live.py`), when one is due
    # Why the result may not be what the prompt asks (e.g. words a generator never saw); known from the
    # phase that finds them on.
    warnings: tuple[str, ...] = ()


@dataclass
class GenerationResult:
    files: dict[str, Path]
    n_vertices: int
    n_faces: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


def _eta(elapsed: float, done: int, total: int) -> float | None:
    return elapsed / done * (total - done) if done else None


def _out_of_memory() -> DreamsmithError:
    return DreamsmithError(
        "the GPU ran out of memory: try a smaller render size, fewer samples per ray or a smaller model"
    )


def generate(
    cfg: GenerationConfig,
    out_dir: Path | str,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    priors: PriorCache | None = None,
    *,
    init_field: FieldCheckpoint | None = None,
    resume: FieldCheckpoint | None = None,
    resumable_checkpoint: bool = True,
    checkpoint_on_stop: bool = False,
    live_meshes: bool = False,
) -> GenerationResult:
    """Run one generation and write mesh.glb, mesh.npz, preview.png (+ texture.png) and field.pt.

    init_field: start from this field's geometry instead of the initial blob (a warm start, fresh
    optimizer). resume: continue the run this resumable checkpoint recorded (same settings but `steps`
    and the export). resumable_checkpoint: keep the optimizer state in field.pt (needed to resume; on a
    GPU it makes the file ~3x the weights). checkpoint_on_stop: write field.pt before honouring the stop
    flag or Ctrl-C, so the run can be resumed. live_meshes: extract a coarse mesh every `cfg.live_every`
    steps (not after the last one: the export follows) into `Progress.live_mesh`, for a caller that shows
    the shape as it grows.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    start = time.perf_counter()

    def report(phase: str, step: int, **kw: object) -> None:
        if on_progress is not None:
            on_progress(Progress(phase, step, cfg.steps, elapsed_s=time.perf_counter() - start, **kw))  # type: ignore[arg-type]

    # Checked between steps and stages, inside long loops and between the operations of a step.
    check_stop = stop_check(should_stop)

    def export_phase(phase: str) -> None:
        check_stop()
        report(phase, cfg.steps)

    if cfg.generator is not None:  # instant: a trained generator's field, no optimization
        if init_field is not None or resume is not None:
            raise DreamsmithError("a generator makes the field in one pass: give no init field and no resume")
        return _generate_instant(cfg, out_dir, on_progress, should_stop, start)
    device = resolve_device(cfg.device)
    run: DistillationRun | None = None
    threads = ExitStack()  # the model's CPU threads, once it is loaded, to the end of the export
    try:
        report("loading model", 0)
        cache = priors or PriorCache()
        prior = call_stoppable(lambda: cache.get(cfg.model, device), check_stop)
        check_stop()
        threads.enter_context(cpu_threads(with_recommendations(cfg, prior.recommended).cpu_threads, device))
        geometry = init_field.build_geometry(device).train() if init_field is not None else None
        run = DistillationRun(cfg, prior, device, geometry=geometry)
        if resume is not None:
            run.restore(resume)
        opt_start, first = time.perf_counter(), run.steps_done
        preview: bytes | None = None
        for i in range(run.steps_done, cfg.steps):
            check_stop()
            with stop_inside_autograd(check_stop):
                stats = run.step(i)
            done = i + 1
            if cfg.preview_every and (done % cfg.preview_every == 0 or done == cfg.steps):
                preview = run.preview_png()
                check_stop()
            live = None
            if live_meshes and cfg.live_every and done % cfg.live_every == 0 and done < cfg.steps:
                live = extract_live_mesh(run.geometry, done, cfg.export, check=check_stop)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                save_checkpoint(out_dir / FILENAME, run.checkpoint(resumable=True))
            report(
                "optimizing",
                done,
                t=stats.t,
                loss=stats.loss,
                eta_s=_eta(time.perf_counter() - opt_start, done - first, cfg.steps - first),
                preview_png=preview if cfg.preview_every and done % cfg.preview_every == 0 else None,
                live_mesh=live,
            )
        check_stop()
        if preview is None:
            preview = run.preview_png()
        files = {FILENAME: save_checkpoint(out_dir / FILENAME, run.checkpoint(resumable_checkpoint))}
        report("extracting mesh", cfg.steps)
        check_stop()
        exported = export_result(
            run.geometry, cfg.export, out_dir, preview, on_phase=export_phase, check=check_stop
        )
    except (GenerationCancelled, KeyboardInterrupt):
        if checkpoint_on_stop and run is not None and run.steps_done > 0:
            save_checkpoint(out_dir / FILENAME, run.checkpoint(resumable=True))
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise _out_of_memory() from exc
    finally:
        threads.close()
    report("done", cfg.steps)
    return GenerationResult(
        files=exported.files | files,
        n_vertices=exported.n_vertices,
        n_faces=exported.n_faces,
        seconds=time.perf_counter() - start,
    )


def _generate_instant(
    cfg: GenerationConfig,
    out_dir: Path,
    on_progress: Callable[[Progress], None] | None,
    should_stop: Callable[[], bool] | None,
    start: float,
) -> GenerationResult:
    """A generator's result (`instant.py`); no optimization steps, so progress reports 0 of 0."""
    from backend.engine.instant import generate_instant

    def report(phase: str, warnings: tuple[str, ...] = ()) -> None:
        if on_progress is not None:
            on_progress(Progress(phase, 0, 0, elapsed_s=time.perf_counter() - start, warnings=warnings))

    try:
        files, n_vertices, n_faces, warnings = generate_instant(cfg, out_dir, report, should_stop)
    except torch.cuda.OutOfMemoryError as exc:
        raise _out_of_memory() from exc
    report("done", tuple(warnings))
    return GenerationResult(files, n_vertices, n_faces, time.perf_counter() - start, warnings)


def export_checkpoint(
    ckpt: FieldCheckpoint,
    export: ExportConfig,
    out_dir: Path | str,
    device: str = "auto",
    on_phase: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Export a saved field (mesh.glb, mesh.npz, preview.png) with `export` settings."""
    start = time.perf_counter()
    cfg = config_from_dict(ckpt.config)
    torch_device = resolve_device(device)
    try:
        geometry = ckpt.build_geometry(torch_device)
        background = make_background(ckpt.background).to(torch_device)
        background.load_state_dict(ckpt.background_state)
        renderer = make_renderer(
            cfg.samples_per_ray, torch_device, seed=cfg.seed, bound=geometry.bound, ambient=cfg.ambient
        )
        preview = preview_png(geometry, background, renderer, cfg)
        exported = export_result(geometry, export.validate(), Path(out_dir), preview, on_phase=on_phase)
    except torch.cuda.OutOfMemoryError as exc:
        raise _out_of_memory() from exc
    return GenerationResult(
        files=exported.files,
        n_vertices=exported.n_vertices,
        n_faces=exported.n_faces,
        seconds=time.perf_counter() - start,
    )
