"""Optimize a field: score distillation of one prompt into one geometry, one step at a time.

`DistillationRun` owns the parts of a run (docs/design.md, "The engine's parts"): a geometry, a
background, a renderer, camera sampling, and a *supervision* that turns each rendered batch into a loss.
The supervision of a generation is `ScoreDistillation` (the prior with a timestep schedule and a gradient
rule); the world benchmark's ceiling swaps in exact renders of the true object instead
(`backend.evaluation.supervision`), everything else unchanged.

Randomness: host-side draws (timesteps, cameras, shading, light) come from `host_rng` and device-side
ones (noise, ray jitter, random backgrounds) from `device_rng`, both seeded from the config, so the same
seed gives the same run whatever else reads random numbers.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from torch import Tensor

from backend.config import GenerationConfig, with_recommendations
from backend.engine.background import Background, make_background
from backend.engine.cameras import (
    CameraBatch,
    camera_rays,
    orbit_camera,
    sample_cameras,
    sequence_offset,
    stratified_units,
)
from backend.engine.checkpoint import FieldCheckpoint
from backend.engine.geometry import Geometry, make_geometry
from backend.engine.methods import METHODS
from backend.engine.prior import Prior
from backend.engine.regularizers import add_regularizers
from backend.engine.rendering import Renderer, RenderOutput, make_renderer, sample_light, sample_shading
from backend.engine.rules import score_distillation_loss
from backend.engine.schedules import timestep_bounds
from backend.errors import DreamsmithError, NonFiniteLoss


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


@dataclass
class RenderedBatch:
    """One step's cameras and what the geometry looked like from them."""

    cameras: CameraBatch
    shading: str
    light: Tensor  # [B, 3]
    background: Tensor  # [B, H, W, 3] what the rays that miss the object show
    out: RenderOutput


@dataclass
class StepStats:
    t: int | None
    loss: float
    views: list[str]


class Supervision(Protocol):
    """What a rendered batch should look like, as a loss (differentiable through `batch.out`)."""

    def timestep(self, step: int, total: int, generator: torch.Generator) -> int | None:
        """Drawn before the cameras (so it takes the first host-side random numbers of a step)."""
        ...

    def loss(
        self, batch: RenderedBatch, t: int | None, generator: torch.Generator, timer: StepTimer
    ) -> Tensor: ...


class ScoreDistillation:
    """The prior's supervision: the method's timestep schedule and gradient rule (docs/design.md)."""

    def __init__(self, cfg: GenerationConfig, prior: Prior, device: torch.device) -> None:
        self.prior = prior
        self.device = device
        self.grad_clip = cfg.grad_clip
        self.embeddings = prior.encode_prompts(cfg.prompt, cfg.negative_prompt)
        method = METHODS[cfg.method]
        self.t_min, _ = timestep_bounds(cfg, prior.num_train_timesteps)
        self.rule = method.make_rule(cfg, self.t_min)
        self.schedule = method.make_schedule(cfg, prior.alphas_cumprod)

    def timestep(self, step: int, total: int, generator: torch.Generator) -> int:
        return self.schedule(step, total, generator)

    def loss(
        self, batch: RenderedBatch, t: int | None, generator: torch.Generator, timer: StepTimer
    ) -> Tensor:
        assert t is not None
        with timer("encode"):
            x = self.prior.to_model_space(batch.out.rgb.permute(0, 3, 1, 2))
        cond = torch.cat([self.embeddings.views[v] for v in batch.cameras.views]).to(self.device)
        uncond = self.embeddings.uncond.to(self.device).expand_as(cond)
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=self.device)
        with timer("guidance"):
            grad = self.rule.gradient(self.prior, x, t_batch, cond, uncond, generator)
        return score_distillation_loss(x, grad, self.grad_clip)


class DistillationRun:
    """One prompt's field under optimization (docs/design.md, "Data flow of one generation", step 2).

    `geometry` (optional) starts from a given geometry instead of a fresh blob (a warm start);
    `supervision` (optional) replaces score distillation with the prior.
    """

    def __init__(
        self,
        cfg: GenerationConfig,
        prior: Prior | None,
        device: torch.device,
        timer: StepTimer | None = None,
        supervision: Supervision | None = None,
        geometry: Geometry | None = None,
    ) -> None:
        # The model's recommendations for what the config leaves unset, recorded in the run's config.
        cfg = with_recommendations(cfg, prior.recommended if prior is not None else {})
        self.cfg = cfg
        self.prior = prior
        self.device = device
        self.timer = timer or StepTimer()
        if supervision is None:
            if prior is None:
                raise ValueError("score distillation needs a prior")
            supervision = ScoreDistillation(cfg, prior, device)
        self.supervision = supervision
        # Initialisation draws from the global generator; seed it so CPU runs are reproducible.
        torch.manual_seed(cfg.seed)
        self.geometry = geometry if geometry is not None else make_geometry(cfg, device)
        self.background = make_background(cfg.background).to(device)
        self.renderer = make_renderer(
            cfg.samples_per_ray, device, seed=cfg.seed, bound=self.geometry.bound, ambient=cfg.ambient
        )
        self.host_rng = torch.Generator().manual_seed(cfg.seed)
        self.device_rng = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.camera_offset = sequence_offset(cfg.seed)  # of `camera.stratified_elevation`
        groups = self.geometry.param_groups(cfg) + self.background.param_groups(cfg)
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
        self.start_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.steps_done = 0

    def step(self, i: int | None = None) -> StepStats:
        """Optimizer step number `i` (default: the next one) of cfg.steps."""
        cfg, timer = self.cfg, self.timer
        i = self.steps_done if i is None else i
        self.geometry.on_step(i, cfg.steps)
        t = self.supervision.timestep(i, cfg.steps, self.host_rng)
        units = None
        if cfg.camera.stratified_elevation:
            units = stratified_units(i * cfg.batch_size, cfg.batch_size, self.camera_offset)
        cams = sample_cameras(cfg.camera, cfg.batch_size, cfg.render_size, self.host_rng, self.device, units)
        shading = sample_shading(i, cfg, self.host_rng)
        with timer("render"):
            batch = self._render(cams, shading)
        loss = self.supervision.loss(batch, t, self.device_rng, timer)
        loss = add_regularizers(loss, cfg, batch.out, self.geometry, self.device_rng)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"the loss became {loss.item()} at step {i}: lower the guidance scale or the learning rates"
            )
        with timer("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with timer("optimizer"):
            decay_learning_rates(self.optimizer, self.start_lrs, cfg.lr_decay, i, cfg.steps)
            self.optimizer.step()
            self.renderer.update(i, self.geometry)
        self.steps_done = i + 1
        return StepStats(t=t, loss=float(loss.detach()), views=cams.views)

    def _render(self, cams: CameraBatch, shading: str) -> RenderedBatch:
        light = sample_light(cams, self.host_rng)
        bg = self.background(cams.rays_d, self.device_rng)
        out = self.renderer.render(
            self.geometry, cams.rays_o, cams.rays_d, shading, light, bg, self.device_rng
        )
        return RenderedBatch(cams, shading, light, bg, out)

    def preview_png(self, min_size: int = 128) -> bytes:
        """A front view in albedo shading at the training resolution, enlarged to `min_size` for display."""
        return preview_png(self.geometry, self.background, self.renderer, self.cfg, min_size)

    # ---- checkpoints ------------------------------------------------------------------------------------

    def checkpoint(self, resumable: bool = True) -> FieldCheckpoint:
        """The run as a `FieldCheckpoint`; `resumable` adds the optimizer, renderer and RNG states."""
        ckpt = FieldCheckpoint(
            config=self.cfg.to_dict(),
            geometry=self.geometry.spec(),
            geometry_state={k: v.detach().cpu() for k, v in self.geometry.state_dict().items()},
            step=self.steps_done,
            background=self.background.kind,
            background_state={k: v.detach().cpu() for k, v in self.background.state_dict().items()},
        )
        if resumable:
            ckpt.optimizer_state = cast(dict[str, Any], to_cpu(self.optimizer.state_dict()))
            ckpt.renderer_state = self.renderer.state_dict()
            ckpt.rng_state = {
                "host": self.host_rng.get_state(),
                "device": self.device_rng.get_state().cpu(),
            }
        return ckpt

    def restore(self, ckpt: FieldCheckpoint) -> None:
        """Continue from a resumable checkpoint of the same run (steps done, optimizer, RNG states)."""
        if not ckpt.resumable:
            raise DreamsmithError("this field checkpoint holds no optimizer state, so it cannot be resumed")
        if ckpt.geometry != self.geometry.spec():
            raise DreamsmithError("the checkpoint's geometry differs from this run's; it cannot be resumed")
        self.geometry.load_state_dict(ckpt.geometry_state)
        self.background.load_state_dict(ckpt.background_state)
        assert ckpt.optimizer_state is not None and ckpt.rng_state is not None
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.renderer.load_state_dict(ckpt.renderer_state or {})
        self.host_rng.set_state(ckpt.rng_state["host"])
        self.device_rng.set_state(ckpt.rng_state["device"])
        self.steps_done = ckpt.step


@torch.no_grad()
def render_view(
    geometry: Geometry,
    background: Background,
    renderer: Renderer,
    cfg: GenerationConfig,
    elevation_deg: float,
    azimuth_deg: float,
    size: int,
    shading: str = "albedo",
) -> RenderOutput:
    """A deterministic view at the cameras' mean distance and field of view (its own generator, so it
    never changes a run)."""
    device = next(geometry.parameters()).device
    cam = cfg.camera
    c2w = orbit_camera(elevation_deg, azimuth_deg, sum(cam.distance) / 2).to(device)[None]
    fov = torch.tensor([sum(cam.fov_deg) / 2], device=device)
    rays_o, rays_d = camera_rays(c2w, fov, size)
    rng = torch.Generator(device=device).manual_seed(0)
    bg = background(rays_d, rng)
    light = torch.tensor([[0.0, -1.0, 1.0]], device=device)
    return renderer.render(geometry, rays_o, rays_d, shading, light, bg, rng, with_normals=False)


def preview_png(
    geometry: Geometry, background: Background, renderer: Renderer, cfg: GenerationConfig, min_size: int = 128
) -> bytes:
    """The front view in albedo shading at the training resolution, enlarged to `min_size`, as PNG."""
    from PIL import Image

    size = cfg.render_size
    out = render_view(geometry, background, renderer, cfg, 15.0, cfg.camera.front_azimuth_deg, size)
    image = Image.fromarray((out.rgb[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
    if size < min_size:
        image = image.resize((min_size, min_size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decay_learning_rates(
    optimizer: torch.optim.Optimizer, start_lrs: list[float], decay: float, step: int, total: int
) -> None:
    """Set each group's rate for optimizer step `step` of `total`: its start rate times
    decay^(step / (total - 1)), so the last step runs at `decay` times the start (1: the start throughout).
    A function of the step alone, so a resumed run needs no state for it."""
    factor = decay ** (step / max(total - 1, 1))
    for group, lr in zip(optimizer.param_groups, start_lrs, strict=True):
        group["lr"] = lr * factor


def to_cpu(state: object) -> object:
    """Tensors anywhere in nested dicts and lists (an optimizer's state), detached on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [to_cpu(v) for v in state]
    return state
