"""Orbit cameras around the origin and their rays.

Conventions (contracts): Z up as in Blender. A camera at elevation el, azimuth az, distance d stands at
d (cos el sin az, -cos el cos az, sin el): azimuth 0 is on -Y looking toward +Y (Blender's front view),
azimuth 90 on +X. Camera-to-world matrices are OpenGL-style (columns right, up, back, position; the camera
looks along its -Z). Pixel (0, 0) is the top-left of the image; the field of view is vertical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from backend.config import CameraConfig
from backend.engine.views import view_name


def orbit_camera(
    elevation_deg: float | Tensor, azimuth_deg: float | Tensor, distance: float | Tensor
) -> Tensor:
    """Camera-to-world [4, 4] (or [B, 4, 4] for tensor arguments [B]) looking at the origin, world up +Z."""
    el, az, dist = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float32) for v in (elevation_deg, azimuth_deg, distance))
    )
    el, az = torch.deg2rad(el), torch.deg2rad(az)
    position = dist.unsqueeze(-1) * torch.stack(
        (torch.cos(el) * torch.sin(az), -torch.cos(el) * torch.cos(az), torch.sin(el)), -1
    )
    # Built from the angles rather than cross products, so it stays well defined at any elevation:
    # back = the unit position, right = d(position)/d(azimuth) normalized, up = back x right.
    back = torch.stack((torch.cos(el) * torch.sin(az), -torch.cos(el) * torch.cos(az), torch.sin(el)), -1)
    right = torch.stack((torch.cos(az), torch.sin(az), torch.zeros_like(az)), -1)
    up = torch.linalg.cross(back, right)
    c2w = torch.zeros(*el.shape, 4, 4, dtype=torch.float32, device=el.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = up
    c2w[..., :3, 2] = back
    c2w[..., :3, 3] = position
    c2w[..., 3, 3] = 1.0
    return c2w


def camera_rays(c2w: Tensor, fov_deg: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """c2w [B, 4, 4], vertical fov [B] (degrees), square size -> rays_o, rays_d [B, H, W, 3], rays_d unit.

    Rays pass through pixel centres; row 0 is the top of the image.
    """
    device = c2w.device
    centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0  # [-1, 1]
    v, u = torch.meshgrid(-centres, centres, indexing="ij")  # u right, v up: row 0 -> v = top
    tan_half = torch.tan(torch.deg2rad(torch.as_tensor(fov_deg, dtype=torch.float32, device=device)) / 2)
    tan_half = tan_half.reshape(-1, 1, 1)  # [B, 1, 1]
    # Camera-space direction (u tan, v tan, -1): the camera looks along its -Z.
    dirs_cam = torch.stack((u * tan_half, v * tan_half, -torch.ones_like(u * tan_half)), -1)  # [B, H, W, 3]
    rot = c2w[:, :3, :3]
    rays_d = torch.einsum("bij,bhwj->bhwi", rot, dirs_cam)
    rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    rays_o = c2w[:, None, None, :3, 3].expand(rays_d.shape)
    return rays_o.contiguous(), rays_d


@dataclass
class CameraBatch:
    c2w: Tensor  # [B, 4, 4]
    fov_deg: Tensor  # [B]
    elevation_deg: Tensor  # [B]
    azimuth_deg: Tensor  # [B], world azimuth (front_azimuth_deg + the sampled relative azimuth)
    distance: Tensor  # [B]
    rays_o: Tensor  # [B, H, W, 3]
    rays_d: Tensor  # [B, H, W, 3]
    views: list[str]  # view name per camera ("front", "side", "back", "overhead")

    @property
    def positions(self) -> Tensor:
        """Camera centres [B, 3]."""
        return self.c2w[:, :3, 3]


GOLDEN = 0.6180339887498949  # (sqrt 5 - 1) / 2


def stratified_units(first: int, batch: int, offset: float) -> Tensor:
    """Points `first` .. `first + batch - 1` of the golden-ratio sequence frac(offset + n GOLDEN) [batch]
    in [0, 1): each stretch of it covers [0, 1) about evenly, from any start on."""
    n = torch.arange(first, first + batch, dtype=torch.float64)
    return (offset + n * GOLDEN) % 1.0


def sequence_offset(seed: int) -> float:
    """A run's start of the sequence, from its seed alone (so a resumed run continues the sequence)."""
    return float(torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


def sample_cameras(
    cam: CameraConfig,
    batch: int,
    size: int,
    generator: torch.Generator,
    device: torch.device | str,
    elevation_units: Tensor | None = None,
) -> CameraBatch:
    """Draw `batch` cameras, each range sampled uniformly (elevation uniform in degrees).

    The azimuth range is relative to cam.front_azimuth_deg; view names follow views.view_name.
    `elevation_units` [batch] in [0, 1) (`stratified_units`) place the elevations in their range instead
    of the draw; the draw is made all the same, so the other ranges get the random cameras' values.
    """

    def uniform(lo_hi: tuple[float, float], u: Tensor | None = None) -> Tensor:
        drawn = torch.rand(batch, generator=generator, device=generator.device, dtype=torch.float64).cpu()
        u = drawn if u is None else u.to(torch.float64).cpu()
        return (lo_hi[0] + u * (lo_hi[1] - lo_hi[0])).to(dtype=torch.float32, device="cpu")

    elevation = uniform(cam.elevation_deg, elevation_units)
    azimuth = uniform(cam.azimuth_deg) + cam.front_azimuth_deg
    distance = uniform(cam.distance)
    fov = uniform(cam.fov_deg)
    views = [
        view_name(float(e), float(a), cam.front_azimuth_deg) for e, a in zip(elevation, azimuth, strict=True)
    ]
    c2w = orbit_camera(elevation, azimuth, distance).to(device)
    rays_o, rays_d = camera_rays(c2w, fov.to(device), size)
    return CameraBatch(
        c2w=c2w,
        fov_deg=fov.to(device),
        elevation_deg=elevation.to(device),
        azimuth_deg=azimuth.to(device),
        distance=distance.to(device),
        rays_o=rays_o,
        rays_d=rays_d,
        views=views,
    )
