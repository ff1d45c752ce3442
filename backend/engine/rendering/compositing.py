"""NeRF quadrature along rays, for the dense renderer's padded samples and nerfacc's packed ones alike.

Per sample i of a ray, with optical depth tau_i = sigma_i delta_i:

    w_i = T_i (1 - exp(-tau_i)),   T_i = exp(-sum_{j<i} tau_j)            (Mildenhall et al. 2020, eq. 3)
    rgb = sum_i w_i c_i + (1 - opacity) bg,   opacity = sum_i w_i,   depth = sum_i w_i t_i / opacity

Two layouts, one function each (as nerfstudio's renderers): *padded* samples [R, S] (S per ray, in order
along the ray) and *packed* samples [M] with `ray_indices` [M] (each ray's samples contiguous and in
order, as nerfacc's marching returns them). The orientation loss (DreamFusion's R_orient) is
sum_i stopgrad(w_i) max(0, n_i . d)^2 over all samples; the depth variance (threestudio's z-variance) is
sum_i w_i (t_i - depth)^2 / opacity per ray, small when a ray's weight sits at one surface and large in
fog; the caller averages both over rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RayTotals:
    """Per-ray sums before the background: rgb [R, 3], opacity [R, 1], depth [R, 1], normal [R, 3]
    (sum_i w_i n_i, not renormalized), and the orientation penalty and the depth variance summed over all
    rays (scalars)."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor
    orientation_sum: Tensor
    depth_variance_sum: Tensor


def render_weights(tau: Tensor, ray_indices: Tensor | None = None) -> Tensor:
    """w_i from optical depths: tau [R, S] (padded) -> [R, S]; tau [M] with ray_indices [M] (packed) -> [M]."""
    alpha = 1.0 - torch.exp(-tau)
    if ray_indices is None:
        # T_i = exp(-sum_{j<i} tau_j): an exclusive cumulative sum along each ray.
        trans = torch.exp(-torch.cat([torch.zeros_like(tau[:, :1]), tau.cumsum(1)[:, :-1]], 1))
        return trans * alpha
    if tau.numel() == 0:
        return tau
    # One cumulative sum over all samples (float64: it runs across rays), minus its value where each
    # sample's ray starts.
    inclusive = tau.double().cumsum(0)
    exclusive = inclusive - tau.double()
    starts = torch.ones_like(ray_indices, dtype=torch.bool)
    starts[1:] = ray_indices[1:] != ray_indices[:-1]
    position = torch.arange(tau.shape[0], device=tau.device)
    first = torch.where(starts, position, torch.zeros_like(position)).cummax(0).values
    trans = torch.exp(-(exclusive - exclusive[first])).to(tau.dtype)
    return trans * alpha


def composite(
    weights: Tensor,
    colours: Tensor,
    normals: Tensor,
    t_mid: Tensor,
    dirs: Tensor,
    ray_indices: Tensor | None = None,
    n_rays: int | None = None,
) -> RayTotals:
    """Sum samples along rays.

    Padded: weights and t_mid [R, S], colours and normals [R, S, 3], dirs [R, 3] (one per ray).
    Packed: weights and t_mid [M], colours and normals [M, 3], dirs [M, 3] (per sample), ray_indices [M],
    n_rays R.
    """
    if ray_indices is None:
        wk = weights.unsqueeze(-1)
        rgb = (wk * colours).sum(1)
        opacity = weights.sum(1, keepdim=True)
        depth = (weights * t_mid).sum(1, keepdim=True) / opacity.clamp_min(1e-6)
        normal = (wk * normals).sum(1)
        spread = (weights * (t_mid - depth).square()).sum(1, keepdim=True)
        facing_away = (normals * dirs.unsqueeze(1)).sum(-1).clamp_min(0.0)
    else:
        if n_rays is None:
            raise ValueError("packed samples need n_rays")

        def per_ray(values: Tensor) -> Tensor:  # [M, C] -> [R, C]
            out = values.new_zeros(n_rays, values.shape[1])
            return out.index_add(0, ray_indices, weights.unsqueeze(-1) * values)

        rgb = per_ray(colours)
        opacity = per_ray(torch.ones_like(weights).unsqueeze(-1))
        depth = per_ray(t_mid.unsqueeze(-1)) / opacity.clamp_min(1e-6)
        normal = per_ray(normals)
        spread = per_ray((t_mid - depth.squeeze(-1)[ray_indices]).square().unsqueeze(-1))
        facing_away = (normals * dirs).sum(-1).clamp_min(0.0)
    orientation = (weights.detach() * facing_away.square()).sum()
    depth_variance = (spread / opacity.clamp_min(1e-6)).sum()
    return RayTotals(rgb, opacity, depth, normal, orientation, depth_variance)
