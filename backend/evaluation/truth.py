"""What is known about one world object, computed once and shared by every result scored against it."""

from __future__ import annotations

import functools
from typing import Any

import mcubes
import numpy as np
import torch
from numpy.typing import NDArray

from backend import demo_world
from backend.config import CameraConfig
from backend.demo_world import DemoObject

BOUND = 1.0  # the engine's scene bound: every grid spans [-BOUND, BOUND]^3


def grid_points(resolution: int, bound: float = BOUND) -> torch.Tensor:
    """[R^3, 3] points of `export.density_grid`'s lattice (R samples per axis over [-bound, bound], ij order)."""
    axis = torch.linspace(-bound, bound, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def cell_centres(resolution: int, bound: float = BOUND) -> torch.Tensor:
    """[R^3, 3] centres of an R^3 cell grid over [-bound, bound]^3, ij order (for the mesh inside test)."""
    axis = -bound + (torch.arange(resolution, dtype=torch.float32) + 0.5) * (2 * bound / resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def visible_surface_points(obj: DemoObject, n: int, seed: int) -> torch.Tensor:
    """[<=n, 3] true-surface points that the engine's training cameras see (sphere-traced hits)."""
    from backend.engine.cameras import sample_cameras

    gen = torch.Generator().manual_seed(seed)
    cams = sample_cameras(CameraConfig(), 16, 48, gen, torch.device("cpu"))
    o, d = cams.rays_o.reshape(-1, 3), cams.rays_d.reshape(-1, 3)
    hit, t = demo_world.sphere_trace(obj, o, d)
    pts = o[hit] + t[hit, None] * d[hit]
    keep = torch.randperm(pts.shape[0], generator=gen)[:n]
    return pts[keep]


def project_to_surface(obj: DemoObject, points: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Nearest true-surface point [N, 3] of points [N, 3] (Newton steps along the SDF gradient)."""
    p = points.clone()
    for _ in range(iterations):
        p = p - demo_world.sdf(obj, p)[:, None] * demo_world.surface_normals(obj, p)
    return p


@functools.cache
def surface_samples(
    shape: str, n: int = 8192, seed: int = 0
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """n points spread uniformly over a world shape's whole surface, and the true unit normals there
    (f32 [n, 3] each): area-weighted samples of a fine marching-cubes mesh of the SDF, projected onto
    the exact surface."""
    obj = DemoObject(shape, "red")
    res = 160
    sdf = demo_world.sdf(obj, grid_points(res)).reshape(res, res, res).numpy()
    verts, faces = mcubes.marching_cubes(-sdf, 0.0)
    verts = verts * (2 * BOUND / (res - 1)) - BOUND
    points, _ = sample_triangles(verts, faces.astype(np.int64), n, seed)
    exact = project_to_surface(obj, torch.from_numpy(points).float())
    normals = demo_world.surface_normals(obj, exact)
    return exact.numpy().astype(np.float32), normals.numpy().astype(np.float32)


def sample_triangles(
    vertices: NDArray[Any], faces: NDArray[Any], n: int, seed: int = 0
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """n area-weighted random points on a triangle mesh (f32 [n, 3]) and their faces' unit normals."""
    tri = np.asarray(vertices, dtype=np.float64)[faces]  # [M, 3, 3]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    if len(faces) == 0 or area.sum() <= 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    rng = np.random.default_rng(seed)
    which = rng.choice(len(faces), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[which]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[which] / np.maximum(area[which], 1e-12)[:, None]
    return points.astype(np.float32), normals.astype(np.float32)


class Truth:
    """Everything known about one world object, computed once and shared by its runs."""

    def __init__(self, obj: DemoObject, eval_res: int = 64, bound: float = BOUND) -> None:
        from backend.evaluation.janus import JanusProbe

        self.obj = obj
        self.eval_res = eval_res
        self.bound = bound
        self.grid_occ = (
            demo_world.occupancy(obj, grid_points(eval_res, bound)).reshape((eval_res,) * 3).numpy()
        )
        self.cell_occ = (
            demo_world.occupancy(obj, cell_centres(eval_res, bound)).reshape((eval_res,) * 3).numpy()
        )
        self.surface = visible_surface_points(obj, 4096, seed=1234)
        self.surface_albedo = demo_world.albedo(obj, self.surface).numpy()
        self.surface_points, self.surface_normals = surface_samples(obj.shape)
        self.janus = JanusProbe(obj) if obj.has_front else None


@functools.cache
def shape_cell_occupancy(shape: str, eval_res: int = 64) -> NDArray[np.bool_]:
    """bool [R, R, R]: a world shape's exact occupancy at the cell centres (shapes do not depend on colour)."""
    occ = demo_world.occupancy(DemoObject(shape, "red"), cell_centres(eval_res))
    return occ.reshape((eval_res,) * 3).numpy()
