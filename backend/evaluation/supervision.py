"""The ceiling's supervision: exact renders of the true world object instead of the prior's score.

`PhotometricTruth` plugs into `DistillationRun` in place of `ScoreDistillation`: every step it sphere-
traces the true object's SDF through the very rays the field was rendered with, shades the hits with the
step's own shading and light (the renderer's formula and ambient), composites them over the step's own
background, and returns 0.5 ||render - truth||^2 / B. Same geometry, renderer, cameras, optimizer and
export: what a run under this supervision misses is the representation's share of the error, and the rest
of a score-distilled run's error is the distillation's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from backend import demo_world
from backend.demo_world import DemoObject
from backend.engine.optimize import RenderedBatch, StepTimer
from backend.engine.rendering.shading import shade


class PhotometricTruth:
    def __init__(self, obj: DemoObject, ambient: float = 0.1) -> None:
        self.obj = obj
        self.ambient = ambient

    def timestep(self, step: int, total: int, generator: torch.Generator) -> int | None:
        return None

    @torch.no_grad()
    def target(self, batch: RenderedBatch) -> Tensor:
        """The true object's image [B, H, W, 3] through the batch's rays, shading, light and background."""
        cams = batch.cameras
        b, h, w, _ = cams.rays_o.shape
        o = cams.rays_o.reshape(-1, 3).float().cpu()
        d = cams.rays_d.reshape(-1, 3).float().cpu()
        hit, t = demo_world.sphere_trace(self.obj, o, d)
        image = batch.background.reshape(-1, 3).float().cpu().clone()
        if hit.any():
            p = o[hit] + t[hit, None] * d[hit]
            normals = demo_world.surface_normals(self.obj, p)
            light = batch.light.float().cpu().repeat_interleave(h * w, 0)[hit]
            image[hit] = shade(demo_world.albedo(self.obj, p), normals, light, batch.shading, self.ambient)
        return image.reshape(b, h, w, 3).to(batch.out.rgb.device)

    def loss(
        self, batch: RenderedBatch, t: int | None, generator: torch.Generator, timer: StepTimer
    ) -> Tensor:
        with timer("guidance"):
            target = self.target(batch)
        rgb = batch.out.rgb
        return 0.5 * ((rgb - target) ** 2).sum() / rgb.shape[0]
