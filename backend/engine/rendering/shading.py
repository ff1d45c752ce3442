"""Lights and shading (DreamFusion section 3.1), and the colours of the samples a ray actually sees.

Shadings: "albedo" c = albedo; "lambertian" c = albedo (a + (1 - a) max(0, n . l)); "textureless"
c = white (a + (1 - a) max(0, n . l)), with ambient a and a directional light l. DreamFusion mixes them at
random so that geometry, not only colour, must explain the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.engine.geometry.base import Geometry

if TYPE_CHECKING:
    from backend.config import GenerationConfig
    from backend.engine.cameras import CameraBatch

SHADINGS = ("albedo", "lambertian", "textureless")


def check_shading(shading: str) -> None:
    if shading not in SHADINGS:
        raise ValueError(f"unknown shading {shading!r}; choose one of {', '.join(SHADINGS)}")


def sample_light(camera_batch: CameraBatch, generator: torch.Generator, perturb: float = 0.5) -> Tensor:
    """Directional light near each camera (DreamFusion): unit(camera direction + N(0, perturb^2)) [B, 3].

    The vector points from the object toward the light, so n . l > 0 on lit surfaces.
    """
    toward_camera = F.normalize(camera_batch.positions.float(), dim=-1)
    noise = torch.randn(toward_camera.shape, generator=generator, device=generator.device)
    return F.normalize(toward_camera + perturb * noise.to(toward_camera.device), dim=-1)


def sample_shading(step: int, cfg: GenerationConfig, generator: torch.Generator) -> str:
    """The shading of step `step`: albedo during cfg.shading_warmup_steps, then drawn with cfg.shading_probs
    over SHADINGS."""
    if step < cfg.shading_warmup_steps:
        return "albedo"
    probs = torch.tensor(cfg.shading_probs, dtype=torch.float64)
    u = float(torch.rand((), generator=generator, device=generator.device, dtype=torch.float64))
    cumulative = (probs / probs.sum()).cumsum(0)
    return SHADINGS[min(int((cumulative <= u).sum()), len(SHADINGS) - 1)]


def shade(albedo: Tensor, normals: Tensor, light: Tensor, shading: str, ambient: float) -> Tensor:
    """Per-sample colour [N, 3] from albedo [N, 3], unit normals [N, 3] and light directions [N, 3]."""
    if shading == "albedo":
        return albedo
    diffuse = (normals * light).sum(-1, keepdim=True).clamp_min(0.0)
    lum = ambient + (1.0 - ambient) * diffuse  # [N, 1]
    if shading == "lambertian":
        return albedo * lum
    if shading == "textureless":
        return lum.expand_as(albedo)
    check_shading(shading)
    raise AssertionError("unreachable")


def light_per_ray(light_dir: Tensor | None, rays_d: Tensor) -> Tensor:
    """light_dir [B, 3] -> one light direction per ray [B * H * W, 3]; None: a headlight (l = -d)."""
    b, h, w, _ = rays_d.shape
    if light_dir is None:
        return -rays_d.reshape(-1, 3).float()
    return light_dir.to(rays_d.device).float().repeat_interleave(h * w, 0)


def visible_colours(
    geometry: Geometry,
    x: Tensor,
    features: Tensor,
    weights: Tensor,
    light: Tensor,
    shading: str,
    ambient: float,
    threshold: float,
    need_normals: bool,
    sigma: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Colours and normals [M, 3] of samples x [M, 3] (features [M, E], weights [M], light [M, 3]; sigma
    [M], the densities already computed, spares forward-difference normals one evaluation).

    Only samples whose (detached) weight exceeds `threshold` get an albedo and a normal (3 or 6 density
    evaluations each); the others stay 0. They enter the image, the orientation loss and every gradient
    multiplied by their weight, so the error is at most `threshold` per sample.
    """
    colours = torch.zeros_like(x)
    normals = torch.zeros_like(x)
    idx = (weights.detach().reshape(-1) > threshold).nonzero().squeeze(1)
    if idx.numel() == 0:
        return colours, normals
    albedo = geometry.albedo_from_features(features.index_select(0, idx))
    if need_normals:
        sigma_vis = None if sigma is None else sigma.reshape(-1).index_select(0, idx)
        normals = normals.index_copy(0, idx, geometry.normals(x.index_select(0, idx), sigma_vis))
    colour = shade(albedo, normals.index_select(0, idx), light.index_select(0, idx), shading, ambient)
    return colours.index_copy(0, idx, colour), normals
