"""Field -> mesh files: density grid, marching cubes, clean-up, decimation, colours, GLB and array file.

The steps follow docs/design.md "Export": sample the density on a grid over the scene bound, choose the
surface level, smooth the density lightly below twice that level (`export.smoothing`, `surface_grid`),
extract the level set with marching cubes (`mcubes`), drop small floating
components, decimate (before any UV unwrap, see `texture.py`), colour the surface from the albedo field,
then write

- `mesh.npz`: `vertices` f32 [N,3] (Z up), `faces` i32 [M,3], `colors` u8 [N,4] (sRGB, alpha 255),
  and `uvs` f32 [N,2] in UV mode (v = 0 at the bottom of `texture.png`);
- `mesh.glb`: the same mesh converted to glTF's Y-up frame, so that Blender's importer (Y-up -> Z-up)
  shows it upright, front toward -Y; vertex colours as COLOR_0 or the texture as the base colour;
- `texture.png` in UV mode, and `preview.png` when the caller passes one.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import fast_simplification
import mcubes
import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
import trimesh
from numpy.typing import NDArray
from PIL import Image
from scipy.ndimage import binary_dilation, gaussian_filter1d
from scipy.sparse.csgraph import connected_components

from backend.config import AUTO_LEVELS, ExportConfig
from backend.engine import texture as uv_texture
from backend.engine.cameras import camera_rays, orbit_camera
from backend.engine.cancellation import Check, no_check
from backend.errors import DreamsmithError, OutputError
from backend.fileio import save_npz_atomic, write_bytes_atomic

# Automatic marching-cubes level (see `auto_threshold`).
SURFACE_DENSITY = 10.0  # the level used whenever the field is dense enough to reach it comfortably
PEAK_FRACTION = 0.2  # weaker fields (e.g. a freshly initialized blob): this fraction of the peak density
MIN_DENSITY = 1.0  # optical depth 1 per world unit: below this the field is haze, not a surface
# `density_grid` evaluates the full resolution only near densities of at least EMPTY_DENSITY, found on
# a coarse grid with one sample every COARSE_STEP corners.
EMPTY_DENSITY = 0.5 * MIN_DENSITY
COARSE_STEP = 4
# The export's smoothing acts on the density clipped at SMOOTH_CLIP times the surface level (`surface_grid`).
SMOOTH_CLIP = 2.0
# Silhouette level (see `silhouette_level`): views at these elevations (degrees) and SILHOUETTE_AZIMUTHS
# azimuths (none facing an axis), SILHOUETTE_SIZE^2 rays each with SILHOUETTE_SAMPLES samples, cameras at
# SILHOUETTE_DISTANCE times the bound with a vertical field of view of SILHOUETTE_FOV_DEG (the training
# cameras' middle); a ray is inside the rendered silhouette at an opacity of SILHOUETTE_OPACITY or more.
SILHOUETTE_ELEVATIONS = (10.0, 30.0)
SILHOUETTE_AZIMUTHS = 8
SILHOUETTE_SIZE = 48
SILHOUETTE_SAMPLES = 192  # per ray on a 128^3 grid (a sample every ~1.15 cells), in proportion on others
SILHOUETTE_DISTANCE = 2.0
SILHOUETTE_FOV_DEG = 45.0
SILHOUETTE_OPACITY = 0.5
SILHOUETTE_CANDIDATES = 80  # levels tried, log-spaced from MIN_DENSITY to the rays' robust peak
# Components with fewer faces than this fraction of the largest one are floaters.
FLOATER_FRACTION = 0.05


@dataclass
class ExportResult:
    files: dict[str, Path]  # artifact name ("mesh.glb", "mesh.npz", ...) -> written file
    n_vertices: int
    n_faces: int


def surface_level(field: Any) -> float | None:
    """The density on the field's own surface when it defines one (an SDF geometry), else None (automatic)."""
    level = getattr(field, "surface_level", None)
    return level() if callable(level) else None


def level_rule(field: Any, export: ExportConfig) -> str:
    """The automatic level rule: `export.auto_level`, or for "auto" the field's own `level_rule()`
    ("density" for a field without one; a name that is no rule is a ValueError, not a silent fallback)."""
    if export.auto_level != "auto":
        return export.auto_level
    rule = getattr(field, "level_rule", None)
    name = str(rule()) if callable(rule) else "density"
    if name == "auto" or name not in AUTO_LEVELS:
        rules = ", ".join(r for r in AUTO_LEVELS if r != "auto")
        raise ValueError(
            f"{type(field).__name__}.level_rule() names {name!r}, which is no level rule ({rules})"
        )
    return name


def surface_threshold(field: Any, grid: NDArray[Any], export: ExportConfig) -> float:
    """The marching-cubes level for `field`'s `grid`: `export.threshold` when set, else the field's own
    surface (`surface_level`), else the automatic level by `level_rule` ("silhouette": `silhouette_level`;
    "density": `auto_threshold`)."""
    if export.threshold is not None:
        return float(export.threshold)
    own = surface_level(field)
    if own is not None:
        return float(own)
    if level_rule(field, export) == "silhouette":
        return silhouette_level(grid, float(field.bound))
    return auto_threshold(grid)


def _field_device(field: Any) -> torch.device:
    if isinstance(field, torch.nn.Module):
        for tensor in (*field.parameters(), *field.buffers()):
            return tensor.device
    return torch.device("cpu")


def _lattice_densities(
    field: Any, xs: torch.Tensor, ys: torch.Tensor, zs: torch.Tensor, chunk: int, check: Check = no_check
) -> NDArray[np.float32]:
    """`field.density` at every (x, y, z) of the lattice xs x ys x zs -> f32 [X,Y,Z], chunked, no grad."""
    nx, ny, nz = len(xs), len(ys), len(zs)
    total = nx * ny * nz
    out = np.empty(total, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, total, chunk):
            check()
            stop = min(start + chunk, total)
            idx = torch.arange(start, stop, device=xs.device)
            points = torch.stack([xs[idx // (ny * nz)], ys[(idx // nz) % ny], zs[idx % nz]], dim=-1)
            out[start:stop] = field.density(points).reshape(-1).float().cpu().numpy()
    return _finite(out).reshape(nx, ny, nz)


def _point_densities(
    field: Any, points: NDArray[Any], device: torch.device, chunk: int, check: Check = no_check
) -> NDArray[np.float32]:
    """`field.density` at world points f32 [K,3] -> f32 [K], chunked, no grad."""
    out = np.empty(len(points), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(points), chunk):
            check()
            batch = torch.from_numpy(points[start : start + chunk]).to(device)
            out[start : start + len(batch)] = field.density(batch).reshape(-1).float().cpu().numpy()
    return _finite(out)


def _finite(sigma: NDArray[Any]) -> NDArray[Any]:
    """Non-finite densities count as empty space (NaN, -inf) or as very dense (+inf)."""
    return np.nan_to_num(sigma, copy=False, nan=0.0, posinf=float(np.finfo(np.float32).max), neginf=0.0)


def density_grid(
    field: Any,
    resolution: int,
    chunk: int = 65536,
    empty_below: float | None = EMPTY_DENSITY,
    check: Check = no_check,
) -> NDArray[np.float32]:
    """`field.density` at the resolution^3 grid corners spanning [-bound, bound]^3 -> f32 [R,R,R], [x,y,z].

    Corner i along an axis sits at -bound + i * 2 bound / (R - 1), so the grid includes the bound itself.

    Empty space is skipped (most of the cube; the full grid costs R^3 field evaluations, minutes for
    128^3 on a CPU): the density is first sampled every COARSE_STEP corners; only coarse cells with a
    corner at `empty_below` or more, grown by one coarse cell, are evaluated at full resolution. Every
    other corner takes its nearest coarse sample, which is below `empty_below` and so below any surface
    level at least twice as high (the automatic level is >= MIN_DENSITY = 2 EMPTY_DENSITY). A feature
    thinner than a coarse cell (4 corners) whose density stays under `empty_below` at every coarse sample
    around it is missed; `empty_below=None` evaluates every corner. `check` runs between chunks.
    """
    res = int(resolution)
    bound = float(field.bound)
    device = _field_device(field)
    axis = torch.linspace(-bound, bound, res, device=device)
    if empty_below is None or res < 8 * COARSE_STEP:
        return _lattice_densities(field, axis, axis, axis, chunk, check)

    coarse_idx = np.unique(np.r_[np.arange(0, res, COARSE_STEP), res - 1])  # fine indices of coarse samples
    n_coarse = len(coarse_idx)
    coarse_axis = axis[torch.from_numpy(coarse_idx).to(device)]
    coarse = _lattice_densities(field, coarse_axis, coarse_axis, coarse_axis, chunk, check)
    occupied = coarse >= empty_below
    m = n_coarse - 1
    active = np.zeros((m, m, m), dtype=bool)  # coarse cell [c, c + 1]^3 has an occupied corner
    for dx, dy, dz in itertools.product((0, 1), repeat=3):
        active |= occupied[dx : m + dx, dy : m + dy, dz : m + dz]
    active = binary_dilation(active, structure=np.ones((3, 3, 3), dtype=bool))

    fine = np.arange(res)
    # The coarse cells whose closed span holds each fine index (two for a shared boundary index).
    left = np.clip(np.searchsorted(coarse_idx, fine, "left") - 1, 0, m - 1)
    right = np.clip(np.searchsorted(coarse_idx, fine, "right") - 1, 0, m - 1)
    nearest = np.searchsorted((coarse_idx[:-1] + coarse_idx[1:]) / 2.0, fine)
    grid: NDArray[np.float32] = coarse[np.ix_(nearest, nearest, nearest)]

    axis_np = axis.cpu().numpy()
    pending: list[NDArray[Any]] = []
    n_pending = 0

    def flush() -> None:
        nonlocal pending, n_pending
        if not pending:
            return
        ijk = np.concatenate(pending)
        grid[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = _point_densities(field, axis_np[ijk], device, chunk, check)
        pending, n_pending = [], 0

    for i in range(res):
        check()
        plane = active[left[i]] | active[right[i]]  # [m, m] over (y, z) cells
        mask = (
            plane[np.ix_(left, left)]
            | plane[np.ix_(left, right)]
            | plane[np.ix_(right, left)]
            | plane[np.ix_(right, right)]
        )
        j, k = np.nonzero(mask)
        if len(j):
            pending.append(np.stack([np.full_like(j, i), j, k], axis=1))
            n_pending += len(j)
        if n_pending >= chunk:
            flush()
    flush()
    return grid


def empty_level(threshold: float | None) -> float | None:
    """`density_grid`'s `empty_below` for a surface at `threshold` (None: automatic): clearly below the
    level, so that skipping empty space never skips the surface."""
    if threshold is None:
        return EMPTY_DENSITY
    return min(EMPTY_DENSITY, 0.5 * threshold) if threshold > 0 else None


def auto_threshold(grid: NDArray[Any]) -> float:
    """Density level separating the object from empty space, from the grid's own statistics.

    Rule: level = clip(PEAK_FRACTION * peak, MIN_DENSITY, SURFACE_DENSITY), raised to sqrt(background *
    peak) (the midpoint in log-density) when empty space is foggy. `peak` is the density exceeded by only
    0.01% of the grid (robust to a few spiky voxels), `background` its 10th percentile (the cube's corners
    are empty for any object of radius ~0.5). A trained field (peak in the tens or hundreds) gets the
    fixed level 10; a fresh blob softplus(10 (1 - |x| / 0.5)) (peak ~10) gets ~2, i.e. radius ~0.41,
    about its rendered silhouette. A field whose peak is below MIN_DENSITY gets MIN_DENSITY, which
    nothing reaches: `marching_cubes_mesh` then reports an empty field.
    """
    flat = np.asarray(grid, dtype=np.float32).ravel()
    n = flat.size
    k = max(1, n // 10_000)
    peak = float(np.partition(flat, n - k)[n - k])
    if not peak >= MIN_DENSITY:
        return MIN_DENSITY
    sample = flat[:: max(1, n // 1_000_000)]
    background = max(float(np.percentile(sample, 10)), 0.0)
    level = min(max(PEAK_FRACTION * peak, MIN_DENSITY), SURFACE_DENSITY)
    return max(level, math.sqrt(background * peak))


def grid_ray_stats(
    grid: NDArray[Any], bound: float, chunk: int = 4096
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Opacity 1 - exp(-integral of density) and the highest density along each ray of the fixed
    silhouette views (see SILHOUETTE_*), read from `grid` (a `density_grid`) by trilinear interpolation;
    outside the grid the density is 0. -> (opacity, max) f32 [n_rays]."""
    volume = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32)).permute(2, 1, 0)[None, None]
    el = torch.tensor([e for e in SILHOUETTE_ELEVATIONS for _ in range(SILHOUETTE_AZIMUTHS)])
    az = torch.tensor(
        [
            (k + 0.5) * 360.0 / SILHOUETTE_AZIMUTHS
            for _ in SILHOUETTE_ELEVATIONS
            for k in range(SILHOUETTE_AZIMUTHS)
        ]
    )
    distance = SILHOUETTE_DISTANCE * bound
    c2w = orbit_camera(el, az, torch.full_like(el, distance))
    rays_o, rays_d = camera_rays(c2w, torch.full_like(el, SILHOUETTE_FOV_DEG), SILHOUETTE_SIZE)
    half = bound * math.sqrt(3.0)  # the grid lies within this distance of the origin
    n_samples = max(2, round(SILHOUETTE_SAMPLES * (grid.shape[0] - 1) / 127))
    t = torch.linspace(distance - half, distance + half, n_samples)
    dt = float(t[1] - t[0])
    opacity, peak = [], []
    for o, d in zip(rays_o.reshape(-1, 3).split(chunk), rays_d.reshape(-1, 3).split(chunk), strict=True):
        x = (o[:, None] + t[None, :, None] * d[:, None]) / bound  # grid_sample's [-1, 1] cube
        sigma = F.grid_sample(
            volume, x[None, None], mode="bilinear", padding_mode="zeros", align_corners=True
        )
        sigma = torch.nan_to_num(sigma[0, 0, 0], nan=0.0)
        opacity.append(1.0 - torch.exp(-sigma.clamp(min=0.0).sum(1) * dt))
        peak.append(sigma.max(1).values)
    return torch.cat(opacity).numpy(), torch.cat(peak).numpy()


def silhouette_level(grid: NDArray[Any], bound: float) -> float:
    """The density level whose surface shows the silhouettes the field renders.

    Score distillation judges the field only through its renderings, so the object it made is what those
    show: the pixels whose opacity reaches SILHOUETTE_OPACITY. A level L's surface covers a pixel when
    the density along its ray reaches L. From fixed views around the object (`grid_ray_stats`), the level
    is the one (of SILHOUETTE_CANDIDATES, log-spaced from MIN_DENSITY up to the rays' 99.9th-percentile
    peak) whose covered pixels best match the opaque ones (highest IoU; the lowest such level). A field
    whose renderings are nowhere opaque, or opaque everywhere (fog), falls back to `auto_threshold`; one
    that never reaches MIN_DENSITY gets MIN_DENSITY (`marching_cubes_mesh` then reports an empty field).

    For a radially symmetric field every ray's opacity and peak depend only on its distance from the
    centre, so the rule is exact there: a Gaussian A exp(-r^2 / s^2) renders opaque out to where its
    peak is ln 2 / (s sqrt(pi)), whatever A, and that is the level.
    """
    opacity, peak = grid_ray_stats(grid, bound)
    opaque = opacity >= SILHOUETTE_OPACITY
    if not opaque.any() or opaque.all():  # no silhouette to match: haze, or fog filling every view
        return auto_threshold(grid)
    top = float(np.percentile(peak, 99.9))
    if not top > MIN_DENSITY:
        return MIN_DENSITY
    levels = np.geomspace(MIN_DENSITY, top, SILHOUETTE_CANDIDATES)
    covered = peak[None, :] >= levels[:, None]  # [levels, rays]
    inter = (covered & opaque).sum(1)
    union = (covered | opaque).sum(1)
    return float(levels[int(np.argmax(inter / np.maximum(union, 1)))])


def smooth_grid(
    grid: NDArray[Any], sigma: float, check: Check = no_check, slab: int = 32
) -> NDArray[np.float32]:
    """Gaussian smoothing of a density grid, sigma in grid cells (0: the grid itself). The export smooths
    the density clipped below twice its surface level (`surface_grid`), not the raw density.

    scipy's `gaussian_filter` as its three 1D passes, each run over slabs of `slab` planes across another
    axis (every line is filtered alone, so the result is the same), with `check` between slabs: at 512^3
    one pass over the whole grid is seconds of uninterruptible work.
    """
    if sigma <= 0:
        return grid
    out = np.array(grid, dtype=np.float32)
    for axis in range(out.ndim):
        across = (axis + 1) % out.ndim
        for start in range(0, out.shape[across], slab):
            check()
            part = [slice(None)] * out.ndim
            part[across] = slice(start, start + slab)
            out[tuple(part)] = gaussian_filter1d(out[tuple(part)], float(sigma), axis=axis, mode="nearest")
    return out


def surface_grid(
    grid: NDArray[Any], level: float, sigma: float, check: Check = no_check
) -> NDArray[np.float32]:
    """The grid marching cubes meshes at `level`: `grid` clipped at SMOOTH_CLIP x `level`, then smoothed
    by `sigma` cells (`smooth_grid`); the grid itself when sigma is 0.

    Score distillation leaves the density pitted just under the surface; marching cubes turns those pits
    into dimples. One cell of smoothing removes most of them (the demo's red sphere: surface area 9% -> 2%
    over the true sphere's). Clipped first, so that the smoothing cannot move the surface: a step from 0
    to twice the level blurs to exactly the level at the step. Blurred raw, a dense interior spreads
    outward: an exp-density field reaches thousands inside, and one cell of blur swelled the quick world's
    fields fitted to exact renders by 13% of their volume (mesh IoU 0.883, against 0.948 clipped: docs/
    design.md "Export"). A level of 0 or below (an explicit `export.threshold`) is smoothed unclipped.
    """
    if sigma <= 0:
        return grid
    if level > 0:
        grid = np.minimum(grid, np.float32(SMOOTH_CLIP * level))
    return smooth_grid(grid, sigma, check)


def _empty_field_error(threshold: float, peak: float) -> DreamsmithError:
    return DreamsmithError(
        f"The density field is empty: nothing reaches the surface density {threshold:.3g} "
        f"(highest density {peak:.3g}), so there is no mesh to export. Optimize for more steps, "
        "or set a lower export.threshold (omit it for the automatic level)."
    )


def marching_cubes_mesh(
    grid: NDArray[Any], bound: float, threshold: float | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Level set {density = threshold} of a `density_grid` -> (verts f32 [N,3] world, faces i32 [M,3]).

    The grid is padded with empty space, so the mesh is closed even where the object touches the bound
    (vertices are clipped back into [-bound, bound]). Faces wind counter-clockwise seen from outside
    (outward normals, positive volume). threshold None -> `auto_threshold`. Raises DreamsmithError when
    nothing in the grid exceeds the threshold.
    """
    grid = np.asarray(grid, dtype=np.float32)
    level = auto_threshold(grid) if threshold is None else float(threshold)
    peak = float(grid.max())
    if not peak > level:
        raise _empty_field_error(level, peak)
    padded = np.pad(grid, 1, mode="constant", constant_values=min(float(grid.min()), level) - 1.0)
    # mcubes winds faces so that normals point from values above the level to values below: outward.
    verts, faces = mcubes.marching_cubes(padded, level)
    faces = np.asarray(faces, dtype=np.int64)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    if len(faces) == 0:
        raise _empty_field_error(level, peak)
    cell = 2.0 * bound / (grid.shape[0] - 1)
    verts = np.clip((np.asarray(verts) - 1.0) * cell - bound, -bound, bound).astype(np.float32)
    return _compact(verts, faces)


def _compact(verts: NDArray[Any], faces: NDArray[Any]) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Drop vertices no face uses and renumber faces -> (verts f32, faces i32)."""
    used = np.zeros(len(verts), dtype=bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    return np.ascontiguousarray(verts[used], dtype=np.float32), remap[faces].astype(np.int32)


def remove_floaters(
    verts: NDArray[Any], faces: NDArray[Any], min_fraction: float = FLOATER_FRACTION
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Keep the connected components with at least `min_fraction` of the largest one's faces."""
    if len(faces) == 0:
        return verts, faces
    faces = np.asarray(faces, dtype=np.int64)
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    adjacency = scipy.sparse.coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(len(verts), len(verts))
    )
    _, labels = connected_components(adjacency, directed=False)
    face_label = labels[faces[:, 0]]
    sizes = np.bincount(face_label)
    keep = sizes[face_label] >= min_fraction * sizes.max()
    return _compact(np.asarray(verts), faces[keep])


def decimate(
    verts: NDArray[Any], faces: NDArray[Any], target_faces: int
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Quadric edge-collapse decimation (`fast_simplification`) down to about `target_faces`.

    Meshes already at or below the target are returned unchanged.
    """
    if len(faces) <= target_faces:
        return verts, faces
    new_verts, new_faces = fast_simplification.simplify(
        np.asarray(verts, dtype=np.float32), np.asarray(faces, dtype=np.int32), target_count=int(target_faces)
    )
    return _compact(np.asarray(new_verts), valid_faces(new_faces))


def valid_faces(faces: NDArray[Any]) -> NDArray[np.int64]:
    """`faces` without the triangles a mesh must not hold: one that uses a vertex twice, or the same three
    vertices as an earlier triangle (edge collapses can leave both). Order is kept."""
    f = np.asarray(faces, dtype=np.int64)
    if len(f) == 0:
        return f
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    unique = np.zeros(len(f), dtype=bool)
    unique[first] = True
    return cast(NDArray[np.int64], f[keep & unique])


def vertex_normals(verts: NDArray[Any], faces: NDArray[Any]) -> NDArray[np.float32]:
    """Area-weighted unit vertex normals f32 [N,3] (outward for outward-wound faces)."""
    tri = np.asarray(verts, dtype=np.float64)[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
    normals = np.zeros((len(verts), 3))
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return cast(NDArray[np.float32], (normals / np.maximum(length, 1e-12)).astype(np.float32))


def sample_albedo(
    field: Any, points: NDArray[Any], chunk: int = 65536, check: Check = no_check
) -> NDArray[np.float32]:
    """`field.albedo` at world points [N,3] -> f32 [N,3] in [0, 1] (sRGB, as rendered), chunked, no grad."""
    device = _field_device(field)
    points = np.asarray(points, dtype=np.float32)
    out = np.empty((len(points), 3), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(points), chunk):
            check()
            batch = torch.from_numpy(points[start : start + chunk]).to(device)
            out[start : start + len(batch)] = field.albedo(batch).float().cpu().numpy()
    np.nan_to_num(out, copy=False, nan=0.5)
    return np.clip(out, 0.0, 1.0)


def to_rgba8(rgb: NDArray[Any]) -> NDArray[np.uint8]:
    """Colours in [0, 1] [N,3] -> u8 [N,4] with alpha 255."""
    rgba = np.full((len(rgb), 4), 255, dtype=np.uint8)
    rgba[:, :3] = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    return rgba


def vertex_colors(
    field: Any,
    verts: NDArray[Any],
    normals: NDArray[Any] | None = None,
    inset: float = 0.0,
    chunk: int = 65536,
    check: Check = no_check,
) -> NDArray[np.uint8]:
    """Albedo at the vertices -> u8 [N,4] sRGB, alpha 255.

    With `normals` (outward, unit) the field is sampled `inset` world units inside the surface: the
    albedo is trained where the rendering weights are, which is just inside the level set, and the
    exact iso-surface sits where the density (and thus the albedo's supervision) is thin.
    """
    points = np.asarray(verts, dtype=np.float32)
    if normals is not None and inset > 0.0:
        points = points - inset * np.asarray(normals, dtype=np.float32)
    return to_rgba8(sample_albedo(field, points, chunk, check))


def _srgb_to_linear(c: NDArray[Any]) -> NDArray[Any]:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def z_up_to_y_up(points: NDArray[Any]) -> NDArray[Any]:
    """Blender/Dreamsmith (x, y, z), Z up -> glTF (x, z, -y), Y up; front -Y becomes glTF's front +Z."""
    points = np.asarray(points)
    return np.stack([points[:, 0], points[:, 2], -points[:, 1]], axis=1)


def y_up_to_z_up(points: NDArray[Any]) -> NDArray[Any]:
    """Inverse of `z_up_to_y_up` (what Blender's glTF importer does)."""
    points = np.asarray(points)
    return np.stack([points[:, 0], -points[:, 2], points[:, 1]], axis=1)


def glb_bytes(
    verts: NDArray[Any],
    faces: NDArray[Any],
    normals: NDArray[Any],
    colors: NDArray[Any] | None = None,
    uvs: NDArray[Any] | None = None,
    texture: NDArray[Any] | None = None,
) -> bytes:
    """A GLB of the mesh (Z-up input, written Y-up) with vertex colours, or with `texture` (u8 [H,W,3])
    as the base colour of a PBR material mapped by `uvs` (v = 0 at the image's bottom).

    glTF's COLOR_0 is linear, so sRGB colours are linearized first (importers such as Blender's convert
    back); the base-colour texture is sRGB by the spec and stored as is. Only one of the two is written,
    as glTF multiplies COLOR_0 into the textured base colour.
    """
    material = trimesh.visual.material.PBRMaterial(
        name="dreamsmith", baseColorFactor=[255, 255, 255, 255], metallicFactor=0.0, roughnessFactor=0.9
    )
    if texture is not None and uvs is not None:
        material.baseColorTexture = Image.fromarray(np.ascontiguousarray(texture, dtype=np.uint8))
        visual = trimesh.visual.TextureVisuals(uv=uvs, material=material)
    else:
        visual = trimesh.visual.TextureVisuals(material=material)
        if colors is not None:
            linear = _srgb_to_linear(colors[:, :3].astype(np.float64) / 255.0)
            visual.vertex_attributes["color"] = to_rgba8(linear)
    mesh = trimesh.Trimesh(
        vertices=z_up_to_y_up(verts).astype(np.float32),
        faces=faces,
        visual=visual,
        vertex_normals=z_up_to_y_up(normals).astype(np.float32),
        process=False,
    )
    data = mesh.export(file_type="glb", include_normals=True)
    assert isinstance(data, bytes)
    return data


def _png_bytes(image: NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def export_result(
    field: Any,
    export: ExportConfig,
    out_dir: Path,
    preview_png: bytes | None = None,
    on_phase: Callable[[str], None] | None = None,
    check: Check = no_check,
) -> ExportResult:
    """Extract, clean, colour and write the field's mesh into `out_dir` (see the module docstring).

    Raises DreamsmithError when the field has no surface at the (possibly automatic) threshold, and
    OutputError (naming the file) when a file cannot be written. `check` runs between the stages and
    inside their long loops (GenerationCancelled stops the export). Files are written last, all or
    none: on any failure the ones already written are removed.
    """
    out_dir = Path(out_dir)
    bound = float(field.bound)
    grid = density_grid(field, export.mesh_resolution, empty_below=empty_level(export.threshold), check=check)
    level = surface_threshold(field, grid, export)
    grid = surface_grid(grid, level, export.smoothing, check)
    check()
    verts, faces = marching_cubes_mesh(grid, bound, level)
    del grid
    check()
    verts, faces = remove_floaters(verts, faces)
    check()
    verts, faces = decimate(verts, faces, export.target_faces)
    check()
    normals = vertex_normals(verts, faces)
    # Half a grid cell inside the level set (see `vertex_colors`).
    inset = 0.5 * 2.0 * bound / (export.mesh_resolution - 1)
    colors = vertex_colors(field, verts, normals, inset, check=check)

    payloads: dict[str, Callable[[Path], Path]] = {}
    arrays: dict[str, NDArray[Any]]
    if export.texture == "uv":
        if on_phase is not None:
            on_phase("texturing")
        baked = uv_texture.uv_texture(
            lambda p: sample_albedo(field, p, check=check),
            verts,
            faces,
            export.texture_size,
            normals=normals,
            inset=inset,
            check=check,
        )
        verts, faces, normals = baked.vertices, baked.faces, normals[baked.vertex_map]
        colors = colors[baked.vertex_map]
        texture_png = _png_bytes(baked.texture)
        payloads["texture.png"] = lambda path: write_bytes_atomic(path, texture_png)
        glb = glb_bytes(verts, faces, normals, uvs=baked.uvs, texture=baked.texture)
        arrays = {"vertices": verts, "faces": faces, "colors": colors, "uvs": baked.uvs}
    else:
        glb = glb_bytes(verts, faces, normals, colors=colors)
        arrays = {"vertices": verts, "faces": faces, "colors": colors}
    payloads["mesh.npz"] = lambda path: save_npz_atomic(path, **arrays)
    payloads["mesh.glb"] = lambda path: write_bytes_atomic(path, glb)
    if preview_png is not None:
        payloads["preview.png"] = lambda path: write_bytes_atomic(path, preview_png)
    check()
    files = _write_all(out_dir, payloads)
    return ExportResult(files=files, n_vertices=int(len(verts)), n_faces=int(len(faces)))


def _write_all(out_dir: Path, payloads: dict[str, Callable[[Path], Path]]) -> dict[str, Path]:
    """Write every file (name -> writer) or none: a failure removes the ones written before it."""
    files: dict[str, Path] = {}
    try:
        for name, write in payloads.items():
            path = out_dir / name
            try:
                files[name] = write(path)
            except OSError as exc:
                raise OutputError.from_os_error(path, exc) from exc
    except BaseException:
        for path in files.values():
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise
    return files
