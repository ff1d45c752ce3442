"""The demo prior's world: simple coloured objects with exact geometry, rendered like the engine sees them.

Every object is an analytic signed distance function (SDF) centred at the origin, radius about 0.5,
Z up, inside [-1, 1]^3. So the world has ground truth twice over: `occupancy` is exact (sdf <= 0) for
measuring volumetric IoU of generated meshes, and `render` sphere-traces the same SDF from cameras drawn
from the engine's own distribution (`backend.engine.cameras.sample_cameras`) with the engine's view
suffixes ("a red cube, front view"). The house has a door on its -Y side (the front, azimuth 0), so a
multi-faced "Janus" result is visible and measurable.

Images are float tensors in [0, 1], layout [B, H, W, 3], on a white background (the engine's
`background="white"`); shading is Lambertian from a light near the camera plus ambient.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from backend.config import CameraConfig
from backend.engine.views import view_name, view_prompt

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "house")
# sRGB albedo; far apart in hue so that a 32-pixel sample's mean colour says which one it is.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "green": (0.10, 0.68, 0.16),
    "blue": (0.10, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.56, 0.16, 0.76),
    "orange": (1.00, 0.50, 0.05),
}
DOOR_COLOUR = (0.16, 0.10, 0.07)
# Words a user may type for a shape; the first is the canonical name used in captions.
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "sphere": ("sphere", "ball", "orb"),
    "cube": ("cube", "box", "block"),
    "cylinder": ("cylinder", "can", "tube"),
    "cone": ("cone",),
    "torus": ("torus", "donut", "doughnut", "ring"),
    "house": ("house", "hut", "cabin"),
}
SHAPES_WITH_FRONT = ("house",)
# Every object lies inside this sphere (the house's lower corners are the farthest, |p| = 0.72).
BOUNDING_RADIUS = 0.8

# Object sizes (world units).
SPHERE_RADIUS = 0.5
CUBE_HALF = 0.4
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.4, 0.45
CONE_RADIUS, CONE_HALF_HEIGHT = 0.45, 0.45
TORUS_MAJOR, TORUS_MINOR = 0.36, 0.15
HOUSE_HALF = (0.4, 0.4, 0.3)  # walls: x, y half extents and half height
HOUSE_WALL_CENTRE_Z = -0.15  # walls span z in [-0.45, 0.15]
HOUSE_RIDGE_Z = 0.5  # roof: a prism over the walls, ridge along X at this height
DOOR_HALF_WIDTH, DOOR_TOP_Z = 0.12, -0.05  # door on the -Y wall, from the floor up to DOOR_TOP_Z


@dataclass(frozen=True)
class DemoObject:
    shape: str
    colour: str

    @property
    def prompt(self) -> str:
        """The caption without a view suffix: 'a red cube', 'an orange cone'."""
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape}"

    @property
    def rgb(self) -> tuple[float, float, float]:
        return COLOURS[self.colour]

    @property
    def has_front(self) -> bool:
        return self.shape in SHAPES_WITH_FRONT


def all_objects() -> list[DemoObject]:
    """Every (shape, colour) pair, in a fixed order."""
    return [DemoObject(s, c) for s in SHAPES for c in COLOURS]


def parse_prompt(prompt: str) -> DemoObject:
    """'a red cube, front view' -> DemoObject('cube', 'red'); ValueError if no colour or no shape is named."""
    words = re.findall(r"[a-z]+", prompt.lower())
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((s for w in words for s, names in SHAPE_WORDS.items() if w in names), None)
    if colour is None or shape is None:
        raise ValueError(
            f"cannot find a colour ({', '.join(COLOURS)}) and a shape ({', '.join(SHAPES)}) in {prompt!r}"
        )
    return DemoObject(shape, colour)


def caption(obj: DemoObject, view: str) -> str:
    """The engine's view-dependent prompt for this object: 'a red cube, front view'."""
    return view_prompt(obj.prompt, view)


# ---------------------------------------------------------------------------------------------------
# Signed distance functions (exact, or a lower bound where noted: sphere tracing stays safe either way).


def _sdf_box(p: Tensor, half: Tensor) -> Tensor:
    q = p.abs() - half
    return cast(Tensor, q.clamp(min=0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0))


def _sdf_sphere(p: Tensor) -> Tensor:
    return cast(Tensor, p.norm(dim=-1) - SPHERE_RADIUS)


def _sdf_cube(p: Tensor) -> Tensor:
    return _sdf_box(p, p.new_tensor([CUBE_HALF] * 3))


def _sdf_cylinder(p: Tensor) -> Tensor:
    d = torch.stack(
        [p[..., :2].norm(dim=-1) - CYLINDER_RADIUS, p[..., 2].abs() - CYLINDER_HALF_HEIGHT], dim=-1
    )
    return cast(Tensor, d.clamp(min=0).norm(dim=-1) + d.amax(dim=-1).clamp(max=0))


def _sdf_cone(p: Tensor) -> Tensor:
    """Capped cone, base radius CONE_RADIUS at z = -h, apex at z = +h (Quilez's exact capped-cone SDF)."""
    h, r1 = CONE_HALF_HEIGHT, CONE_RADIUS
    qx = p[..., :2].norm(dim=-1)
    qy = p[..., 2]
    # k1 = (0, h) is the apex, k2 = (-r1, 2h) runs from the base rim to it.
    k2x, k2y = -r1, 2.0 * h
    ca_x = qx - torch.where(qy < 0, qx.clamp(max=r1), torch.zeros_like(qx))
    ca_y = qy.abs() - h
    t = ((-qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y)
    t = t.clamp(0.0, 1.0)
    cb_x = qx + k2x * t
    cb_y = qy - h + k2y * t
    sign = torch.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
    d2 = torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y)
    return sign * d2.sqrt()


def _sdf_torus(p: Tensor) -> Tensor:
    q = torch.stack([p[..., :2].norm(dim=-1) - TORUS_MAJOR, p[..., 2]], dim=-1)
    return cast(Tensor, q.norm(dim=-1) - TORUS_MINOR)


def _sdf_house(p: Tensor) -> Tensor:
    """Walls (a box) united with a prism roof; the roof is an intersection of half-spaces (a lower bound)."""
    hx, hy, hz = HOUSE_HALF
    walls = _sdf_box(p - p.new_tensor([0.0, 0.0, HOUSE_WALL_CENTRE_Z]), p.new_tensor([hx, hy, hz]))
    base_z = HOUSE_WALL_CENTRE_Z + hz
    rise = HOUSE_RIDGE_Z - base_z
    n_len = math.hypot(rise, hy)
    # Slanted planes through the eaves (y = +-hy, z = base_z) and the ridge (y = 0, z = HOUSE_RIDGE_Z).
    slope = (rise * p[..., 1].abs() + hy * (p[..., 2] - base_z) - hy * rise) / n_len
    roof = torch.stack([slope, base_z - p[..., 2], p[..., 0].abs() - hx], dim=-1).amax(dim=-1)
    return torch.minimum(walls, roof)


_SDFS: dict[str, Callable[[Tensor], Tensor]] = {
    "sphere": _sdf_sphere,
    "cube": _sdf_cube,
    "cylinder": _sdf_cylinder,
    "cone": _sdf_cone,
    "torus": _sdf_torus,
    "house": _sdf_house,
}


def sdf(obj: DemoObject, points: Tensor) -> Tensor:
    """Signed distance [N] (negative inside) of points [N, 3] in world units."""
    return _SDFS[obj.shape](points)


def occupancy(obj: DemoObject, points: Tensor) -> Tensor:
    """Exact inside test: points [N, 3] -> bool [N]."""
    return sdf(obj, points) <= 0.0


def albedo(obj: DemoObject, points: Tensor) -> Tensor:
    """Surface colour [N, 3] at points [N, 3] on the object (the house's door is dark, on its -Y wall)."""
    rgb = points.new_tensor(obj.rgb).expand(points.shape[0], 3).clone()
    if obj.shape == "house":
        door = (
            (points[:, 1] < -HOUSE_HALF[1] + 0.01)
            & (points[:, 0].abs() < DOOR_HALF_WIDTH)
            & (points[:, 2] < DOOR_TOP_Z)
        )
        rgb[door] = points.new_tensor(DOOR_COLOUR)
    return rgb


def surface_normals(obj: DemoObject, points: Tensor, eps: float = 1e-3) -> Tensor:
    """Unit outward normals [N, 3] by central differences of the SDF."""
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
    grad = torch.stack(
        [sdf(obj, points + offsets[i]) - sdf(obj, points - offsets[i]) for i in range(3)], dim=-1
    )
    return torch.nn.functional.normalize(grad, dim=-1)


# ---------------------------------------------------------------------------------------------------
# Rendering.


def _sphere_entry_exit(rays_o: Tensor, rays_d: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Ray parameters where rays [N, 3] enter and leave the origin-centred sphere; hit mask [N]."""
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    root = disc.clamp(min=0).sqrt()
    return (-b - root).clamp(min=0), -b + root, hit


def sphere_trace(
    obj: DemoObject, rays_o: Tensor, rays_d: Tensor, max_steps: int = 96, eps: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """First surface hit along unit rays [N, 3]: (hit bool [N], t [N]; t is the exit distance on a miss)."""
    t_near, t_far, active = _sphere_entry_exit(rays_o, rays_d, BOUNDING_RADIUS)
    t = t_near.clone()
    hit = torch.zeros_like(active)
    idx = active.nonzero().squeeze(1)
    for _ in range(max_steps):
        if idx.numel() == 0:
            break
        d = sdf(obj, rays_o[idx] + t[idx, None] * rays_d[idx])
        done = d < eps
        hit[idx[done]] = True
        t[idx] = t[idx] + torch.where(done, torch.zeros_like(d), d)
        keep = ~done & (t[idx] < t_far[idx])
        idx = idx[keep]
    # Rays still marching when the budget ran out graze the surface: count them as hits if very close.
    if idx.numel():
        close = sdf(obj, rays_o[idx] + t[idx, None] * rays_d[idx]) < 4 * eps
        hit[idx[close]] = True
    return hit, torch.where(hit, t, t_far)


def render(
    obj: DemoObject,
    rays_o: Tensor,
    rays_d: Tensor,
    light_dir: Tensor,
    ambient: Tensor | float = 0.4,
    supersample: int = 1,
) -> tuple[Tensor, Tensor]:
    """Render one object for a batch of cameras on white.

    rays_o, rays_d: [B, H, W, 3] (unit directions), e.g. from `sample_cameras`; light_dir: [B, 3] unit,
    pointing from the object toward the light; ambient: scalar or [B]. Shade = albedo * (ambient +
    (1 - ambient) * max(0, n . l)). With `supersample` = k the output is [B, H/k, W/k] averaged over k x k
    pixels (anti-aliased edges). Returns (rgb [B, h, w, 3] in [0, 1], coverage [B, h, w] in [0, 1]).
    """
    B, H, W, _ = rays_o.shape
    o = rays_o.reshape(-1, 3)
    d = rays_d.reshape(-1, 3)
    hit, t = sphere_trace(obj, o, d)
    rgb = torch.ones_like(o)
    if hit.any():
        p = o[hit] + t[hit, None] * d[hit]
        n = surface_normals(obj, p)
        ray_batch = torch.arange(B, device=o.device).repeat_interleave(H * W)[hit]
        amb = torch.as_tensor(ambient, dtype=o.dtype, device=o.device).expand(B)[ray_batch]
        lam = (n * light_dir[ray_batch]).sum(-1).clamp(min=0)
        rgb[hit] = albedo(obj, p) * (amb + (1 - amb) * lam)[:, None]
    rgb = rgb.reshape(B, H, W, 3)
    cov = hit.reshape(B, H, W).to(o.dtype)
    if supersample > 1:
        k = supersample
        rgb = torch.nn.functional.avg_pool2d(rgb.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1)
        cov = torch.nn.functional.avg_pool2d(cov[:, None], k)[:, 0]
    return rgb.clamp(0, 1), cov


def render_silhouette(obj: DemoObject, rays_o: Tensor, rays_d: Tensor) -> Tensor:
    """bool [B, H, W]: the ray hits the object (sphere tracing the SDF)."""
    hit, _ = sphere_trace(obj, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
    return hit.reshape(rays_o.shape[:-1])


def project_occupancy(obj: DemoObject, rays_o: Tensor, rays_d: Tensor, samples: int = 256) -> Tensor:
    """bool [B, H, W]: some sample along the ray is inside (`occupancy`): the projection of the volume."""
    o = rays_o.reshape(-1, 3)
    d = rays_d.reshape(-1, 3)
    t_near, t_far, _ = _sphere_entry_exit(o, d, 1.0)
    out = torch.zeros(o.shape[0], dtype=torch.bool, device=o.device)
    s = torch.linspace(0.0, 1.0, samples, device=o.device, dtype=o.dtype)
    for start in range(0, o.shape[0], 4096):
        sl = slice(start, start + 4096)
        t = t_near[sl, None] + (t_far[sl] - t_near[sl]).clamp(min=0)[:, None] * s  # [n, S]
        pts = o[sl, None] + t[..., None] * d[sl, None]
        out[sl] = occupancy(obj, pts.reshape(-1, 3)).reshape(-1, samples).any(dim=1)
    return out.reshape(rays_o.shape[:-1])


def camera_light_dirs(cams_c2w: Tensor, generator: torch.Generator, jitter: float = 0.3) -> Tensor:
    """Light directions [B, 3] near each camera (DreamFusion puts the light around the camera)."""
    to_cam = torch.nn.functional.normalize(cams_c2w[:, :3, 3], dim=-1)
    noise = torch.randn(to_cam.shape, generator=generator, dtype=to_cam.dtype) * jitter
    return torch.nn.functional.normalize(to_cam + noise.to(to_cam.device), dim=-1)


@dataclass
class DemoBatch:
    images: Tensor  # [B, size, size, 3] float in [0, 1], white background
    coverage: Tensor  # [B, size, size] fraction of each pixel the object covers
    captions: list[str]  # engine form: "a red cube, front view"
    views: list[str]
    elevation_deg: Tensor  # [B]
    azimuth_deg: Tensor  # [B]
    objects: list[DemoObject]


def render_views(
    obj: DemoObject,
    n: int,
    size: int,
    generator: torch.Generator,
    cam: CameraConfig | None = None,
    supersample: int = 2,
    ambient_range: tuple[float, float] = (0.35, 0.6),
) -> DemoBatch:
    """n renders of one object from cameras drawn like the engine's (`sample_cameras`), captioned."""
    from backend.engine.cameras import sample_cameras

    cam = cam or CameraConfig()
    cams = sample_cameras(cam, n, size * supersample, generator, torch.device("cpu"))
    light = camera_light_dirs(cams.c2w, generator)
    lo, hi = ambient_range
    ambient = lo + (hi - lo) * torch.rand(n, generator=generator)
    rgb, cov = render(obj, cams.rays_o, cams.rays_d, light, ambient, supersample)
    views = [
        view_name(float(e), float(a), cam.front_azimuth_deg)
        for e, a in zip(cams.elevation_deg, cams.azimuth_deg, strict=True)
    ]
    return DemoBatch(
        images=rgb,
        coverage=cov,
        captions=[caption(obj, v) for v in views],
        views=views,
        elevation_deg=cams.elevation_deg.clone(),
        azimuth_deg=cams.azimuth_deg.clone(),
        objects=[obj] * n,
    )


# Cameras for the training set: the engine's default ranges, plus a share of high views so that the
# "overhead view" suffix (elevation > 60 degrees) is also learned.
OVERHEAD_SHARE = 0.1
OVERHEAD_CAMERA = CameraConfig(elevation_deg=(45.0, 85.0))


def make_dataset(
    n: int, size: int = 32, seed: int = 0, objects: list[DemoObject] | None = None, chunk: int = 64
) -> tuple[Tensor, list[str], list[DemoObject]]:
    """A fixed training set: n images (uint8 [n, size, size, 3]) cycling over `objects`, their captions.

    Deterministic from `seed`; objects take turns chunk by chunk so every prefix of the set is balanced.
    """
    objects = objects or all_objects()
    gen = torch.Generator().manual_seed(seed)
    images = torch.empty(n, size, size, 3, dtype=torch.uint8)
    captions: list[str] = []
    objs: list[DemoObject] = []
    i = 0
    k = 0
    while i < n:
        obj = objects[k % len(objects)]
        m = min(chunk, n - i)
        n_high = int(round(m * OVERHEAD_SHARE))
        for count, cam in ((m - n_high, CameraConfig()), (n_high, OVERHEAD_CAMERA)):
            if count == 0:
                continue
            batch = render_views(obj, count, size, gen, cam)
            images[i : i + count] = (batch.images * 255).round().to(torch.uint8)
            captions += batch.captions
            objs += batch.objects
            i += count
        k += 1
    return images, captions, objs
