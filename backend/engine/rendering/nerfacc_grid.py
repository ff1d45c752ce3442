"""The CUDA renderer: nerfacc's occupancy-grid marching with packed samples.

nerfacc `OccGridEstimator` (32^3 cells over [-bound, bound]^3) skips empty space and stops rays early;
its samples are packed ([M] with ray indices) and composited by `compositing.composite`, the same
function as the dense renderer's. The grid is refreshed every `update_every` steps by `update(step)` from
the geometry's density (nerfacc's EMA update, re-implemented to draw from this renderer's own generator).
The march step is the box diagonal / 512 (threestudio's default); each ray's march starts at a jittered
offset. nerfacc's packed kernels accept only CUDA tensors.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from backend.engine.geometry.base import Geometry
from backend.engine.rendering.base import Renderer, RenderOutput, empty_totals, ray_box, to_images
from backend.engine.rendering.compositing import composite, render_weights
from backend.engine.rendering.shading import check_shading, light_per_ray, visible_colours


@functools.cache
def nerfacc_available() -> bool:
    """nerfacc imports and its CUDA kernels load (nerfacc may compile them on first use, minutes)."""
    if not torch.cuda.is_available():
        return False
    try:
        import nerfacc  # noqa: F401
        from nerfacc.cuda._backend import _C
    except Exception:
        return False
    return _C is not None


class NerfaccRenderer(Renderer):
    def __init__(
        self,
        bound: float = 1.0,
        device: torch.device | str = "cuda",
        grid_resolution: int = 32,
        render_step_size: float | None = None,
        update_every: int = 16,
        occ_threshold: float = 1e-2,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        early_stop_eps: float = 1e-4,
        ambient: float = 0.1,
        visible_weight_threshold: float = 1e-4,
        seed: int = 0,
    ) -> None:
        import nerfacc

        self.device = torch.device(device)
        self.bound = float(bound)
        aabb = [-self.bound] * 3 + [self.bound] * 3
        self.estimator = nerfacc.OccGridEstimator(roi_aabb=aabb, resolution=grid_resolution, levels=1).to(
            self.device
        )
        self.render_step_size = render_step_size or 2.0 * math.sqrt(3.0) * self.bound / 512
        self.update_every = int(update_every)
        self.occ_threshold = float(occ_threshold)
        self.ema_decay = float(ema_decay)
        self.warmup_steps = int(warmup_steps)
        self.early_stop_eps = float(early_stop_eps)
        self.ambient = float(ambient)
        self.visible_weight_threshold = float(visible_weight_threshold)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self._geometry: Geometry | None = None
        self._updated = False

    def update(self, step: int, geometry: Geometry | None = None) -> None:
        """Refresh the occupancy grid every `update_every` steps."""
        geometry = geometry or self._geometry
        if geometry is None or step % self.update_every != 0:
            return
        self._update_grid(geometry, step)

    def state_dict(self) -> dict[str, Any]:
        est = self.estimator
        return {
            "occs": est.occs.cpu(),
            "binaries": est.binaries.cpu(),
            "generator": self.generator.get_state(),
            "updated": self._updated,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        est = self.estimator
        if "occs" in state:
            est.occs.copy_(state["occs"].to(est.occs.device))
            est.binaries.copy_(state["binaries"].to(est.binaries.device))
            self.generator.set_state(state["generator"])
            self._updated = bool(state["updated"])

    @torch.no_grad()
    def _update_grid(self, geometry: Geometry, step: int) -> None:
        # nerfacc's OccGridEstimator._update: all cells during warm-up, later a quarter of the cells drawn
        # uniformly plus as many occupied ones; occupancy = sigma * step, kept as an EMA maximum.
        est, g = self.estimator, self.generator
        n_cells = est.cells_per_lvl
        if step < self.warmup_steps:
            cells = est.grid_indices
        else:
            n = n_cells // 4
            uniform = torch.randint(n_cells, (n,), generator=g, device=self.device)
            occupied = est.binaries[0].flatten().nonzero().squeeze(1)
            if n < occupied.numel():
                occupied = occupied[torch.randint(occupied.numel(), (n,), generator=g, device=self.device)]
            cells = torch.cat([uniform, occupied])
        coords = est.grid_coords[cells].float()
        u = (coords + torch.rand(coords.shape, generator=g, device=self.device)) / est.resolution.float()
        lo, hi = est.aabbs[0, :3], est.aabbs[0, 3:]
        occ = geometry.density(lo + u * (hi - lo)) * self.render_step_size
        est.occs[cells] = torch.maximum(est.occs[cells] * self.ema_decay, occ)
        threshold = est.occs[est.occs >= 0].mean().clamp(max=self.occ_threshold)
        est.binaries = (est.occs > threshold).view(est.binaries.shape)
        self._updated = True

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
        check_shading(shading)
        if abs(geometry.bound - self.bound) > 1e-6:
            raise ValueError(
                f"geometry bound {geometry.bound} differs from the occupancy grid's {self.bound}"
            )
        self._geometry = geometry
        if not self._updated:
            self._update_grid(geometry, 0)
        b, h, w, _ = rays_o.shape
        o = rays_o.reshape(-1, 3).float().contiguous()
        d = rays_d.reshape(-1, 3).float().contiguous()
        n_rays = o.shape[0]
        light = light_per_ray(light_dir, rays_d)
        need_normals = with_normals or shading != "albedo"

        near, far, _ = ray_box(o, d, self.bound)
        if generator is not None:  # stratified: each ray's march starts at a random offset
            jitter = torch.rand(n_rays, generator=generator, device=generator.device).to(o.device)
            near = near + jitter * self.render_step_size

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            mid = (t_starts + t_ends)[:, None] / 2.0
            return geometry.density(o[ray_indices] + mid * d[ray_indices])

        ray_indices, t_starts, t_ends = self.estimator.sampling(
            o,
            d,
            sigma_fn=sigma_fn,
            t_min=near,
            t_max=far,
            render_step_size=self.render_step_size,
            early_stop_eps=self.early_stop_eps,
            alpha_thre=0.0,
            stratified=False,
        )
        ray_indices = ray_indices.long()
        if ray_indices.numel() == 0:
            return to_images((b, h, w), empty_totals(geometry, n_rays, o), background)

        t_mid = (t_starts + t_ends) / 2.0
        x = o[ray_indices] + t_mid[:, None] * d[ray_indices]
        sigma, features = geometry.density_and_features(x)
        weights = render_weights(sigma * (t_ends - t_starts), ray_indices)
        colour, normals = visible_colours(
            geometry,
            x,
            features,
            weights,
            light[ray_indices],
            shading,
            self.ambient,
            self.visible_weight_threshold,
            need_normals,
            sigma,
        )
        totals = composite(weights, colour, normals, t_mid, d[ray_indices], ray_indices, n_rays)
        return to_images((b, h, w), totals, background)
