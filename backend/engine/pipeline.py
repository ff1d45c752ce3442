"""One generation: prompt -> optimized radiance field -> marching-cubes mesh and files.

`DistillationRun` owns the parts (prior, field, background, renderer, schedule) and performs one
optimization step at a time; `generate` drives it with progress, a stop flag and the export.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from backend.config import DEFAULT_T_MAX, GenerationConfig
from backend.engine.background import LearnedBackground, background_color
from backend.engine.cameras import CameraBatch, camera_rays, orbit_camera, sample_cameras
from backend.engine.cancellation import call_stoppable, stop_check, stop_inside_autograd
from backend.engine.export import export_result
from backend.engine.field import FieldConfig, RadianceField
from backend.engine.guidance import asd_gradient, score_distillation_loss, sds_gradient
from backend.engine.prior import Prior, PriorCache, resolve_device
from backend.engine.renderer import make_renderer, sample_light, sample_shading
from backend.engine.schedules import make_schedule, timestep_bounds
from backend.errors import DreamsmithError, NonFiniteLoss

PHASES = ("loading model", "optimizing", "extracting mesh", "texturing", "done")


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


@dataclass
class GenerationResult:
    files: dict[str, Path]
    n_vertices: int
    n_faces: int
    seconds: float


@dataclass
class StepStats:
    t: int
    loss: float
    views: list[str]


@dataclass
class StepTimer:
    """Wall time per part of a step (for scripts/bench_engine.py); a no-op unless enabled."""

    enabled: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    totals: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


def field_config_for(device: torch.device) -> FieldConfig:
    """DESIGN.md's full hash grid on CUDA; a lighter grid on CPU, where its 12M parameters dominate a step."""
    return FieldConfig() if device.type == "cuda" else FieldConfig.small()


class DistillationRun:
    """Score distillation of one prompt into one radiance field (DESIGN.md, "Data flow", step 2)."""

    def __init__(
        self, cfg: GenerationConfig, prior: Prior, device: torch.device, timer: StepTimer | None = None
    ) -> None:
        if cfg.t_max is None:  # the model's recommendation, recorded in the run's config
            cfg = replace(cfg, t_max=prior.recommended.get("t_max", DEFAULT_T_MAX))
        self.cfg = cfg
        self.prior = prior
        self.device = device
        self.timer = timer or StepTimer()
        self.embeddings = prior.encode_prompts(cfg.prompt, cfg.negative_prompt)
        # Field initialisation draws from the global generator; seed it so CPU runs are reproducible.
        torch.manual_seed(cfg.seed)
        self.field = RadianceField(field_config_for(device), device=device)
        self.background = LearnedBackground().to(device)
        self.renderer = make_renderer(cfg, device)
        self.schedule = make_schedule(cfg, prior.alphas_cumprod)
        # Host-side draws (cameras, timesteps, shading) and device-side draws (noise, ray jitter) apart,
        # so the same seed gives the same run whatever else reads random numbers.
        self.host_rng = torch.Generator().manual_seed(cfg.seed)
        self.device_rng = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.t_min, _ = timestep_bounds(cfg, prior.num_train_timesteps)
        groups = self.field.param_groups(cfg)
        groups.append({"params": list(self.background.parameters()), "lr": cfg.lr_background})
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)

    def step(self, i: int) -> StepStats:
        cfg, timer = self.cfg, self.timer
        t = self.schedule(i, cfg.steps, self.host_rng)
        cams = sample_cameras(cfg.camera, cfg.batch_size, cfg.render_size, self.host_rng, self.device)
        shading = sample_shading(i, cfg, self.host_rng)
        with timer("render"):
            out = self._render(cams, shading, self.device_rng)
        with timer("encode"):
            x = self.prior.to_model_space(out.rgb.permute(0, 3, 1, 2))
        cond = torch.cat([self.embeddings.views[v] for v in cams.views]).to(self.device)
        uncond = self.embeddings.uncond.to(self.device).expand_as(cond)
        t_batch = torch.full((cfg.batch_size,), t, dtype=torch.long, device=self.device)
        with timer("guidance"):
            if cfg.gradient_rule == "sds":
                grad = sds_gradient(
                    self.prior, x, t_batch, cond, uncond, cfg.effective_guidance_scale, self.device_rng
                )
            else:
                grad = asd_gradient(
                    self.prior,
                    x,
                    t_batch,
                    cond,
                    uncond,
                    cfg.effective_guidance_scale,
                    cfg.asd_eta,
                    self.t_min,
                    self.device_rng,
                )
        loss = score_distillation_loss(x, grad, cfg.grad_clip)
        # Regularizers: DreamFusion's orientation loss and a soft opacity (sparsity) penalty.
        loss = loss + cfg.lambda_orientation * out.orientation_loss
        loss = loss + cfg.lambda_sparsity * (out.opacity**2 + 0.01).sqrt().mean()
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"the loss became {loss.item()} at step {i}: lower the guidance scale or the learning rates"
            )
        with timer("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with timer("optimizer"):
            self.optimizer.step()
            self.renderer.update(i, self.field)
        return StepStats(t=t, loss=float(loss.detach()), views=cams.views)

    def _render(self, cams: CameraBatch, shading: str, rng: torch.Generator):
        light = sample_light(cams, self.host_rng)
        bg = background_color(self.cfg.background, self.background, cams.rays_d, rng)
        return self.renderer.render(
            self.field, self.background, cams.rays_o, cams.rays_d, shading, light, bg, rng
        )

    @torch.no_grad()
    def preview_png(self, min_size: int = 128) -> bytes:
        """A front view in albedo shading at the training resolution, enlarged to `min_size` for display.

        Rendered at render_size (what the optimization sees, and cheap); it uses its own generator so
        previews never change the result.
        """
        from PIL import Image

        cam, size = self.cfg.camera, self.cfg.render_size
        c2w = orbit_camera(15.0, cam.front_azimuth_deg, sum(cam.distance) / 2).to(self.device)[None]
        fov = torch.tensor([sum(cam.fov_deg) / 2], device=self.device)
        rays_o, rays_d = camera_rays(c2w, fov, size)
        rng = torch.Generator(device=self.device).manual_seed(0)
        bg = background_color(self.cfg.background, self.background, rays_d, rng)
        light = torch.tensor([[0.0, -1.0, 1.0]], device=self.device)
        out = self.renderer.render(
            self.field, self.background, rays_o, rays_d, "albedo", light, bg, rng, with_normals=False
        )
        image = Image.fromarray((out.rgb[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
        if size < min_size:
            image = image.resize((min_size, min_size), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()


def _eta(elapsed: float, done: int, total: int) -> float | None:
    return elapsed / done * (total - done) if done else None


def generate(
    cfg: GenerationConfig,
    out_dir: Path | str,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    priors: PriorCache | None = None,
) -> GenerationResult:
    """Run one generation and write mesh.glb, mesh.npz, preview.png (+ texture.png) into `out_dir`."""
    cfg.validate()
    out_dir = Path(out_dir)
    start = time.perf_counter()

    def report(phase: str, step: int, **kw) -> None:
        if on_progress is not None:
            on_progress(Progress(phase, step, cfg.steps, elapsed_s=time.perf_counter() - start, **kw))

    # Checked between steps and stages, inside long loops and between the operations of a step.
    check_stop = stop_check(should_stop)

    def export_phase(phase: str) -> None:
        check_stop()
        report(phase, cfg.steps)

    device = resolve_device(cfg.device)
    try:
        report("loading model", 0)
        cache = priors or PriorCache()
        prior = call_stoppable(lambda: cache.get(cfg.model, device), check_stop)
        check_stop()
        run = DistillationRun(cfg, prior, device)
        opt_start = time.perf_counter()
        preview: bytes | None = None
        for i in range(cfg.steps):
            check_stop()
            with stop_inside_autograd(check_stop):
                stats = run.step(i)
            done = i + 1
            if cfg.preview_every and (done % cfg.preview_every == 0 or done == cfg.steps):
                preview = run.preview_png()
                check_stop()
            report(
                "optimizing",
                done,
                t=stats.t,
                loss=stats.loss,
                eta_s=_eta(time.perf_counter() - opt_start, done, cfg.steps),
                preview_png=preview if cfg.preview_every and done % cfg.preview_every == 0 else None,
            )
        check_stop()
        if preview is None:
            preview = run.preview_png()
        report("extracting mesh", cfg.steps)
        check_stop()
        exported = export_result(
            run.field,
            cfg.export,
            out_dir,
            preview,
            on_phase=export_phase,
            check=check_stop,
        )
    except torch.cuda.OutOfMemoryError as exc:
        raise DreamsmithError(
            "the GPU ran out of memory: try a smaller render size, fewer samples per ray or a smaller model"
        ) from exc
    report("done", cfg.steps)
    return GenerationResult(
        files=exported.files,
        n_vertices=exported.n_vertices,
        n_faces=exported.n_faces,
        seconds=time.perf_counter() - start,
    )
