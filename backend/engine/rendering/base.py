"""The renderer interface: rays in, images out, through one geometry.

    render(geometry, rays_o, rays_d, shading, light_dir, background, generator, with_normals) -> RenderOutput
    update(step, geometry)   # between optimizer steps: refresh an empty-space grid, if the renderer has one

Implementations: `DenseRenderer` (plain torch, any device, the CPU path) and `NerfaccRenderer` (nerfacc's
occupancy-grid marching, CUDA); both composite with `compositing.composite`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from backend.engine.geometry.base import Geometry
from backend.engine.rendering.compositing import RayTotals


@dataclass
class RenderOutput:
    rgb: Tensor  # [B, H, W, 3] in [0, 1], composited over the background
    opacity: Tensor  # [B, H, W, 1] sum_i w_i
    depth: Tensor  # [B, H, W, 1] expected distance along the ray of the visible surface (0 where empty)
    normal: Tensor  # [B, H, W, 3] sum_i w_i n_i, world space, not renormalized (zeros without normals)
    orientation_loss: Tensor  # scalar: the orientation penalty averaged over rays
    depth_variance: Tensor  # scalar: sum_i w_i (t_i - depth)^2 / opacity averaged over rays


class Renderer:
    def render(
        self,
        geometry: Geometry,
        rays_o: Tensor,
        rays_d: Tensor,
        shading: str = "albedo",
        light_dir: Tensor | None = None,
        background: Tensor | None = None,
        generator: torch.Generator | None = None,
        with_normals: bool = True,
    ) -> RenderOutput:
        """rays [B, H, W, 3] (unit directions) -> images. light_dir [B, 3] (None: a headlight); background
        [B, H, W, 3] colours behind the object (None: white); generator: jitter of the samples (None: none);
        with_normals=False skips normals (and the orientation loss, then 0) in albedo shading."""
        raise NotImplementedError

    def update(self, step: int, geometry: Geometry | None = None) -> None:
        """Called after each optimizer step (geometry: the one given, else the last rendered)."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to render as this one would (e.g. an empty-space grid)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def ray_box(rays_o: Tensor, rays_d: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test against [-bound, bound]^3: rays [R, 3] -> near [R], far [R], hit [R] (near >= 0)."""
    d = torch.where(rays_d.abs() < 1e-9, torch.full_like(rays_d, 1e-9), rays_d)
    t0 = (-bound - rays_o) / d
    t1 = (bound - rays_o) / d
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)  # a camera inside the box starts at 0
    far = torch.maximum(t0, t1).amin(-1)
    hit = far > near
    return near, torch.where(hit, far, near), hit


def keep_graph(geometry: Geometry, like: Tensor) -> Tensor:
    """A zero that depends on the geometry, so a loss stays differentiable when no ray met the box."""
    sigma = geometry.density(torch.zeros(1, 3, device=like.device))
    return sigma.sum() * 0.0


def empty_totals(geometry: Geometry, n_rays: int, like: Tensor) -> RayTotals:
    """RayTotals of rays that meet nothing, still attached to the geometry's graph."""
    zeros = torch.zeros(n_rays, 1, device=like.device)
    keep = keep_graph(geometry, like)
    return RayTotals(zeros.expand(n_rays, 3) + keep, zeros, zeros, zeros.expand(n_rays, 3), keep, keep)


def to_images(shape: tuple[int, int, int], totals: RayTotals, background: Tensor | None) -> RenderOutput:
    """Per-ray sums [B H W, C] -> images [B, H, W, C], with the background (None: white) behind."""
    b, h, w = shape
    opacity = totals.opacity.view(b, h, w, 1)
    rgb = totals.rgb.view(b, h, w, 3)
    bg = torch.ones_like(rgb) if background is None else background.to(rgb.device, rgb.dtype)
    return RenderOutput(
        rgb=rgb + (1.0 - opacity) * bg,
        opacity=opacity,
        depth=totals.depth.view(b, h, w, 1),
        normal=totals.normal.view(b, h, w, 3),
        orientation_loss=totals.orientation_sum / (b * h * w),
        depth_variance=totals.depth_variance_sum / (b * h * w),
    )
