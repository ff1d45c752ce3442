"""Regularizers of one render (docs/design.md, "Regularizers and optimizer").

Each term is a scalar of a `RenderOutput` (and the geometry's own terms, e.g. an SDF's eikonal), weighted
by the config's `lambda_<name>`; a zero weight adds nothing (and costs nothing).
"""

from __future__ import annotations

import torch
from torch import Tensor

from backend.config import GenerationConfig
from backend.engine.geometry import Geometry
from backend.engine.rendering import RenderOutput

OPACITY_CLAMP = 1e-3  # threestudio's: keeps the entropy's gradient finite at 0 and 1


def opacity_entropy(opacity: Tensor) -> Tensor:
    """Mean binary entropy of each pixel's opacity [B, H, W, 1]: lowest for pixels fully opaque or empty,
    so it sharpens silhouettes out of fog (threestudio's `lambda_opaque`)."""
    o = opacity.clamp(OPACITY_CLAMP, 1.0 - OPACITY_CLAMP)
    return -(o * o.log() + (1.0 - o) * (1.0 - o).log()).mean()


def normal_smoothness(normal: Tensor, opacity: Tensor) -> Tensor:
    """Squared difference of the unit rendered normals [B, H, W, 3] of neighbouring pixels, weighted by
    both pixels' opacity (not differentiated, so a silhouette edge is not pulled in): a 2D smoothness of
    the surface that penalizes pits and bumps the prior cannot see at its resolution."""
    unit = normal / opacity.clamp_min(OPACITY_CLAMP)
    weight = opacity.detach()
    dx = (
        (unit[:, :, 1:] - unit[:, :, :-1]).square().sum(-1, keepdim=True)
        * weight[:, :, 1:]
        * weight[:, :, :-1]
    )
    dy = (unit[:, 1:] - unit[:, :-1]).square().sum(-1, keepdim=True) * weight[:, 1:] * weight[:, :-1]
    return dx.mean() + dy.mean()


def add_regularizers(
    loss: Tensor, cfg: GenerationConfig, out: RenderOutput, geometry: Geometry, generator: torch.Generator
) -> Tensor:
    """`loss` plus the regularizers of one render of `geometry`: DreamFusion's orientation loss, a soft
    opacity (sparsity) penalty, the depth variance along rays, the opacity entropy, the normal smoothness
    and the geometry's own terms, each weighted by the config's `lambda_<name>` (added one by one, in this
    order; a zero weight adds nothing)."""
    loss = loss + cfg.lambda_orientation * out.orientation_loss
    loss = loss + cfg.lambda_sparsity * (out.opacity**2 + 0.01).sqrt().mean()
    if cfg.lambda_depth_variance:
        loss = loss + cfg.lambda_depth_variance * out.depth_variance
    if cfg.lambda_opaque:
        loss = loss + cfg.lambda_opaque * opacity_entropy(out.opacity)
    if cfg.lambda_normal_smooth:
        loss = loss + cfg.lambda_normal_smooth * normal_smoothness(out.normal, out.opacity)
    for name, term in geometry.regularization(generator).items():
        loss = loss + getattr(cfg, f"lambda_{name}") * term
    return loss
