"""Janus: is the house's door (its front, the -Y wall) also painted on the back?

The field is rendered in albedo shading from the front and from the back; the door contrast is (wall
luminance - door-area luminance) / the true contrast, where the door area is the true door on the front
wall and its mirror image on the back wall. A faithful result has front ~1 and back ~0; a multi-faced
("Janus") one shows a door at the back too.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from backend import demo_world
from backend.demo_world import DemoObject

LUMA = np.array([0.2126, 0.7152, 0.0722])


class JanusProbe:
    """Front and back cameras with the pixels of the true door area and of the wall around it."""

    def __init__(
        self, obj: DemoObject, size: int = 64, elevation: float = 5.0, distance: float = 2.0
    ) -> None:
        from backend.engine.cameras import camera_rays, orbit_camera

        self.obj = obj
        self.views: dict[str, tuple[torch.Tensor, torch.Tensor, NDArray[Any], NDArray[Any]]] = {}
        self.images: dict[str, NDArray[Any]] = {}
        hy = demo_world.HOUSE_HALF[1]
        for name, az, sign in (("front", 0.0, -1.0), ("back", 180.0, 1.0)):
            c2w = orbit_camera(elevation, az, distance)[None]
            rays_o, rays_d = camera_rays(c2w, torch.tensor([45.0]), size)
            hit, t = demo_world.sphere_trace(obj, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
            p = rays_o.reshape(-1, 3) + t[:, None] * rays_d.reshape(-1, 3)
            on_wall = hit & (p[:, 1] * sign > hy - 0.01) & (p[:, 2] < demo_world.HOUSE_WALL_CENTRE_Z + 0.3)
            door = (p[:, 0].abs() < demo_world.DOOR_HALF_WIDTH) & (p[:, 2] < demo_world.DOOR_TOP_Z)
            # Shrink both areas one pixel's worth so edge blur does not mix them.
            inner = (p[:, 0].abs() < demo_world.DOOR_HALF_WIDTH - 0.03) & (
                p[:, 2] < demo_world.DOOR_TOP_Z - 0.03
            )
            outer = (p[:, 0].abs() > demo_world.DOOR_HALF_WIDTH + 0.03) | (
                p[:, 2] > demo_world.DOOR_TOP_Z + 0.03
            )
            self.views[name] = (
                rays_o,
                rays_d,
                (on_wall & door & inner).numpy(),
                (on_wall & ~door & outer).numpy(),
            )
        body = float(LUMA @ np.array(obj.rgb))
        self.true_contrast = body - float(LUMA @ np.array(demo_world.DOOR_COLOUR))

    @torch.no_grad()
    def measure(self, geometry: Any, renderer: Any) -> dict[str, float]:
        """door_contrast_front / door_contrast_back of a geometry drawn by `renderer` on white."""
        device = next(geometry.parameters()).device
        out: dict[str, float] = {}
        for name, (rays_o, rays_d, door_px, wall_px) in self.views.items():
            rays_o, rays_d = rays_o.to(device), rays_d.to(device)
            rng = torch.Generator(device=device).manual_seed(0)
            light = torch.tensor([[0.0, -1.0, 1.0]], device=device)
            render = renderer.render(geometry, rays_o, rays_d, "albedo", light, None, rng, with_normals=False)
            rgb = render.rgb[0].clamp(0, 1).float().cpu().numpy()  # [H, W, 3]
            alpha = render.opacity[0].float().cpu().numpy()  # [H, W, 1]
            self.images[name] = rgb
            # Un-composite the white background, so a fuzzy edge does not pass for a bright wall, and
            # compare only pixels the field covers.
            colour = ((rgb - (1.0 - alpha)) / np.maximum(alpha, 1e-3)).clip(0, 1).reshape(-1, 3)
            solid = alpha.reshape(-1) > 0.5
            door, wall = door_px & solid, wall_px & solid
            if door.sum() < 3 or wall.sum() < 3:
                out[f"door_contrast_{name}"] = float("nan")
                continue
            luma = colour @ LUMA
            out[f"door_contrast_{name}"] = float((luma[wall].mean() - luma[door].mean()) / self.true_contrast)
        return out

    def strip_png(self) -> bytes:
        """Last measured renders, front | back, then the areas compared (door black, wall grey), as PNG."""
        from PIL import Image

        panels = [self.images[name] for name in self.views]
        for _, _, door_px, wall_px in self.views.values():
            size = int(round(math.sqrt(door_px.size)))
            mask = np.ones(door_px.size)
            mask[wall_px] = 0.6
            mask[door_px] = 0.0
            panels.append(np.repeat(mask.reshape(size, size, 1), 3, axis=2))
        strip = (np.concatenate(panels, axis=1) * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(strip).save(buf, format="PNG")
        return buf.getvalue()
