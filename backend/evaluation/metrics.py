"""Scores of a field or a mesh against a world object: IoU, colour, surface error, and the verdict.

- IoU: volumetric, on an R^3 grid over the scene bound (R = 64 by default). A field's inside is its
  density at the lattice points thresholded at the export's own level (`export.surface_threshold`), so it
  means what marching cubes would make of the field; a mesh's inside is a ray-parity test at the cells'
  centres.
- colour: mean |predicted - true albedo| (RGB in [0, 1]), and the world colour nearest to the mean
  colour by chromaticity (brightness-free, so shading cannot flip it).
- surface error, two numbers that see what IoU misses (pits, dents, rough faces):
  `chamfer`: symmetric mean distance between the mesh's surface and the true surface, in world units
  (the objects are about 1 unit across); `normal_deg`: mean angle between the mesh's face normals and the
  true normals at the nearest true-surface points, in degrees (a smooth, right shape: a few degrees;
  a pitted one: tens).
- size: `volume_ratio`, the mesh's inside cells over the true object's (1: the right size; above 1
  swollen, below 1 shrunken), which IoU alone does not tell apart.
- the verdict (`score_mesh`): the mesh is the asked object when the asked shape fits it best of all
  world shapes, its colour is the asked one, and its IoU is at least 0.7.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from backend import demo_world
from backend.config import ExportConfig
from backend.evaluation.truth import Truth, project_to_surface, sample_triangles, shape_cell_occupancy

MIN_IOU = 0.7
SURFACE_SAMPLES = 8192
# `mesh_inside`'s rays pass this far (in cells; irrational, so no mesh edge lies exactly on one) off the
# cell centres.
COLUMN_JITTER = (1e-6 * 2**0.5, 1e-6 * 3**0.5)


def iou(a: NDArray[Any], b: NDArray[Any]) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def colour_error(pred: NDArray[Any], true: NDArray[Any]) -> float:
    """Mean absolute RGB difference (colours in [0, 1])."""
    return float(np.abs(pred - true).mean()) if len(pred) else float("nan")


def colour_named(mean_rgb: NDArray[Any]) -> str:
    """The world's colour name nearest to `mean_rgb` by chromaticity."""
    chroma = mean_rgb / max(float(mean_rgb.sum()), 1e-6)
    names = list(demo_world.COLOURS)
    refs = np.array([demo_world.COLOURS[c] for c in names])
    refs = refs / refs.sum(axis=1, keepdims=True)
    return names[int(np.argmin(np.abs(refs - chroma).sum(axis=1)))]


def field_occupancy(
    geometry: Any, resolution: int, export_config: ExportConfig | None = None
) -> tuple[NDArray[np.bool_], float]:
    """bool [R, R, R] (density >= the export's level, by `export_config`'s rule: the default one when
    None) and the level used."""
    from backend.engine import export

    export_config = export_config or ExportConfig()
    grid = export.density_grid(geometry, resolution, empty_below=export.empty_level(export_config.threshold))
    level = export.surface_threshold(geometry, grid, export_config)
    return grid >= level, level


@torch.no_grad()
def field_albedo(geometry: Any, points: torch.Tensor) -> NDArray[Any]:
    device = next(geometry.parameters()).device
    out = [geometry.albedo(chunk.to(device)).float().cpu() for chunk in points.split(32768)]
    return torch.cat(out).clamp(0, 1).numpy()


def score_field(geometry: Any, truth: Truth, export_config: ExportConfig | None = None) -> dict[str, Any]:
    """IoU and colour of a field as it stands (no mesh extracted), at the level `export_config` picks."""
    occ, level = field_occupancy(geometry, truth.eval_res, export_config)
    albedo = field_albedo(geometry, truth.surface)
    return {
        "iou": iou(occ, truth.grid_occ),
        "colour_error": colour_error(albedo, truth.surface_albedo),
        "colour_named": colour_named(albedo.mean(axis=0)),
        "threshold": level,
        "occupied_fraction": float(occ.mean()),
    }


def mesh_inside(
    vertices: NDArray[Any], faces: NDArray[Any], resolution: int, bound: float
) -> NDArray[np.bool_]:
    """bool [R, R, R]: cell centres inside the mesh, by the parity of crossings along +Z rays.

    Every triangle is rasterised onto the (x, y) columns its projection covers; a crossing at height z
    toggles the inside state for all cell centres above it. Exact for closed meshes; a mesh left open
    (cut by the grid boundary) makes its columns unreliable, which only lowers its IoU. The rays pass a
    hair off the cell centres (COLUMN_JITTER): a ray exactly through an edge shared by two triangles
    counted the crossing in both, so it cancelled, and the column was inside from there to the top of
    the grid (marching-cubes meshes of symmetric objects put edges exactly over cell centres: 12 columns,
    3% of the cells of a cone's mesh).
    """
    R = resolution
    u = (vertices.astype(np.float64) + bound) / (2 * bound) * R - 0.5  # cell-centre index coordinates
    tri = u[faces]  # [M, 3 vertices, 3 coords]
    lo = np.clip(np.ceil(tri[:, :, :2].min(axis=1)), 0, R).astype(np.int64)  # [M, 2]
    hi = np.clip(np.floor(tri[:, :, :2].max(axis=1)), -1, R - 1).astype(np.int64)
    n = np.maximum(hi - lo + 1, 0)  # columns per axis
    counts = n[:, 0] * n[:, 1]
    toggles = np.zeros((R, R, R + 1), dtype=np.int32)
    total = int(counts.sum())
    if total == 0:
        return np.zeros((R, R, R), dtype=bool)
    which = np.repeat(np.arange(len(faces)), counts)
    k = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    px = lo[which, 0] + k % n[which, 0]
    py = lo[which, 1] + k // n[which, 0]
    rx, ry = px + COLUMN_JITTER[0], py + COLUMN_JITTER[1]  # where the rays pass
    a, b, c = tri[which, 0], tri[which, 1], tri[which, 2]
    det = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    safe = np.where(det == 0, 1.0, det)
    l1 = ((b[:, 1] - c[:, 1]) * (rx - c[:, 0]) + (c[:, 0] - b[:, 0]) * (ry - c[:, 1])) / safe
    l2 = ((c[:, 1] - a[:, 1]) * (rx - c[:, 0]) + (a[:, 0] - c[:, 0]) * (ry - c[:, 1])) / safe
    l3 = 1.0 - l1 - l2
    hit = (det != 0) & (l1 >= 0) & (l2 >= 0) & (l3 >= 0)
    z = l1 * a[:, 2] + l2 * b[:, 2] + l3 * c[:, 2]
    kz = np.clip(np.ceil(z), 0, R).astype(np.int64)  # first cell centre above the crossing
    np.add.at(toggles, (px[hit], py[hit], kz[hit]), 1)
    return (np.cumsum(toggles, axis=2)[:, :, :R] % 2).astype(bool)


def surface_error(
    vertices: NDArray[Any], faces: NDArray[Any], truth: Truth, n: int = SURFACE_SAMPLES
) -> dict[str, float]:
    """Chamfer distance (world units) and mean normal angle (degrees) between a mesh and the true surface."""
    points, normals = sample_triangles(vertices, faces, n, seed=0)
    if len(points) == 0:
        return {"chamfer": float("nan"), "normal_deg": float("nan")}
    obj = truth.obj
    p = torch.from_numpy(points)
    to_true = np.abs(demo_world.sdf(obj, p).numpy())  # mesh -> true surface (the SDF is the distance)
    to_mesh, _ = cKDTree(points).query(truth.surface_points)  # true surface -> mesh samples
    true_normals = demo_world.surface_normals(obj, project_to_surface(obj, p)).numpy()
    cos = np.clip((normals * true_normals).sum(axis=1), -1.0, 1.0)
    return {
        "chamfer": float(0.5 * (to_true.mean() + to_mesh.mean())),
        "normal_deg": float(np.degrees(np.arccos(cos)).mean()),
    }


def load_mesh(path: Path | str) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """(vertices f32 [N, 3], faces i64 [M, 3], colours u8 [N, 4]) of a mesh.npz, or of a folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "mesh.npz"
    with np.load(path) as data:
        return data["vertices"], data["faces"].astype(np.int64), data["colors"]


def score_mesh(path: Path | str, truth: Truth) -> dict[str, Any]:
    """Every score of one generated mesh, and `ok`: is it the asked object (see the module docstring)?"""
    vertices, faces, colours = load_mesh(path)
    obj, res, bound = truth.obj, truth.eval_res, truth.bound
    inside = mesh_inside(vertices, faces, res, bound)
    rgb = colours[:, :3].astype(np.float64) / 255.0
    nearest = project_to_surface(obj, torch.from_numpy(vertices).float())
    true_rgb = demo_world.albedo(obj, nearest).numpy()
    mesh_iou = iou(inside, truth.cell_occ)
    # Every shape of the world is about the same size, so a fair IoU with the wrong shape is common (a
    # sphere scores ~0.7 against the cube): say which shape the mesh matches best.
    by_shape = {obj.shape: mesh_iou}
    for shape in demo_world.SHAPES:
        if shape != obj.shape:
            by_shape[shape] = iou(inside, shape_cell_occupancy(shape, res))
    best = max(by_shape, key=lambda k: by_shape[k])
    named = colour_named(rgb.mean(axis=0)) if len(rgb) else None
    scores: dict[str, Any] = {
        "mesh_iou": mesh_iou,
        "volume_ratio": float(inside.sum()) / max(float(truth.cell_occ.sum()), 1.0),
        "mesh_colour_error": colour_error(rgb, true_rgb),
        "mesh_colour_named": named,
        "mesh_mean_rgb": rgb.mean(axis=0).round(4).tolist() if len(rgb) else None,
        "iou_by_shape": {k: round(v, 4) for k, v in by_shape.items()},
        "best_shape": best,
        "n_vertices": int(len(vertices)),
        "n_faces": int(len(faces)),
    }
    scores |= surface_error(vertices, faces, truth)
    scores["ok"] = bool(mesh_iou >= MIN_IOU and named == obj.colour and best == obj.shape)
    return scores
