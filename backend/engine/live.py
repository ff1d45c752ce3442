"""Live meshes: a coarse mesh of the field while it is being optimized, for the add-on's viewport.

Every `live_every` steps (a setting) `generate` asks for one (when its caller wants them: the service
does, the command line only when `--live-every` is given) and hands it to the caller in `Progress.live_mesh`.
It is the export's own pipeline at a coarse grid and without the costly steps: the density on a
LIVE_RESOLUTION^3 lattice (`export.density_grid`, empty space skipped), the export's level and its
smoothing (`export.surface_grid`) scaled to the coarser cells, marching cubes at that level, floaters
removed, vertex colours from the albedo. No decimation, no UV texture. On the demo prior on a CPU one
costs about as much as one training step (`scripts/bench_live.py`).

Nothing here touches a random generator, so a run with live meshes ends with the same mesh bytes as one
without (tested).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from backend.config import ExportConfig
from backend.engine.cancellation import Check, no_check
from backend.engine.export import (
    density_grid,
    empty_level,
    marching_cubes_mesh,
    remove_floaters,
    surface_grid,
    surface_threshold,
    vertex_colors,
    vertex_normals,
)
from backend.errors import DreamsmithError

LIVE_RESOLUTION = 64
FILENAME = "live.npz"


@dataclass(frozen=True)
class LiveMesh:
    """One live mesh: the field after `step` optimization steps, Z up, in the field's own units."""

    step: int
    vertices: NDArray[np.float32]  # [N, 3]
    faces: NDArray[np.int32]  # [M, 3]
    colors: NDArray[np.uint8]  # [N, 4] sRGB, alpha 255

    def npz_bytes(self) -> bytes:
        """The whole file, as `live.npz` is served: mesh.npz's arrays plus `step` (int64, shape [])."""
        buf = io.BytesIO()
        np.savez(buf, vertices=self.vertices, faces=self.faces, colors=self.colors, step=np.int64(self.step))
        return buf.getvalue()


def extract_live_mesh(
    field: Any,
    step: int,
    export: ExportConfig,
    resolution: int = LIVE_RESOLUTION,
    check: Check = no_check,
) -> LiveMesh | None:
    """The field's coarse mesh now, or None when it has no surface yet (nothing reaches the level)."""
    bound = float(field.bound)
    grid = density_grid(field, resolution, empty_below=empty_level(export.threshold), check=check)
    # The export's smoothing is in cells of its own grid: the same width in world units here.
    sigma = export.smoothing * (resolution - 1) / max(export.mesh_resolution - 1, 1)
    level = surface_threshold(field, grid, export)
    grid = surface_grid(grid, level, sigma, check)
    check()
    try:
        verts, faces = marching_cubes_mesh(grid, bound, level)
    except DreamsmithError:  # an empty field: no live mesh this time
        return None
    verts, faces = remove_floaters(verts, faces)
    check()
    normals = vertex_normals(verts, faces)
    inset = 0.5 * 2.0 * bound / (resolution - 1)  # half a cell inside, as the export does
    colors = vertex_colors(field, verts, normals, inset, check=check)
    return LiveMesh(
        step=int(step),
        vertices=np.ascontiguousarray(verts, dtype=np.float32),
        faces=np.ascontiguousarray(faces, dtype=np.int32),
        colors=colors,
    )
