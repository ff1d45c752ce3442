"""UV texturing (export.texture = "uv"): unwrap the decimated mesh with xatlas, bake the albedo into an image.

Order matters: the mesh is decimated *before* it gets here (xatlas on a million marching-cubes faces
takes hours; on 50k faces, with chart size bounded as below, a second or two). Then

1. `unwrap`: xatlas charts + packing; vertices are split at chart seams, so every vertex has one uv.
2. `rasterize`: for each texel, the triangle it belongs to in uv space and barycentrics: texel centres
   inside a triangle, then (conservative) the texels around each triangle that bilinear lookups on it
   read, from the closest point on the triangle.
3. `bake_texture`: barycentrics -> 3D surface point (slightly inside, as for vertex colours) -> albedo.
4. `pad_texture`: the remaining texels take the colour of the nearest baked texel, so mipmaps at island
   borders never pull in a background colour either.

Conventions: uvs in [0, 1], v = 0 at the bottom of the image (OpenGL / Blender); image row 0 is the top
(v = 1), as PNG stores it. This module is plain numpy: the albedo comes in as a function of points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import xatlas
from numpy.typing import NDArray
from scipy.ndimage import distance_transform_edt

from backend.engine.cancellation import Check, no_check

# points f32 [N,3] (world) -> colours [N,3] in [0, 1] (sRGB).
AlbedoFn = Callable[[NDArray[np.float32]], NDArray[Any]]

# xatlas chart growth is bounded to charts whose boundary is at most this fraction of sqrt(surface area).
# With xatlas's defaults, large charts on marching-cubes meshes are slow to grow and parametrize: 15-20 s
# of CPU for 50k faces; bounded, 1.5 s, for a somewhat lower atlas utilization (~60% instead of ~80%;
# see scripts/bench_texture.py).
CHART_BOUNDARY_FRACTION = 0.5
# Empty texels the packer leaves between charts (plus one per side for bilinear filtering), in texels of
# xatlas's atlas; the atlas can come out up to ~1.3x larger than the requested size, and uvs are
# normalized, so the gap in the texture is somewhat narrower.
CHART_PADDING = 2


@dataclass
class UVTexture:
    vertices: NDArray[np.float32]  # f32 [N',3], split at uv seams
    faces: NDArray[np.int32]  # i32 [M,3] into `vertices`
    uvs: NDArray[np.float32]  # f32 [N',2] in [0, 1], v = 0 at the image's bottom
    vertex_map: NDArray[np.int64]  # i64 [N'] index of each split vertex in the input mesh
    texture: NDArray[np.uint8]  # u8 [S,S,3] sRGB, row 0 = top (v = 1)


def unwrap(
    verts: NDArray[Any],
    faces: NDArray[Any],
    texture_size: int,
    padding: int = CHART_PADDING,
    boundary_fraction: float | None = CHART_BOUNDARY_FRACTION,
) -> tuple[NDArray[np.int64], NDArray[np.int32], NDArray[np.float32]]:
    """xatlas charts and packing for a `texture_size`^2 image -> (vertex_map i64 [N'], faces i32 [M,3],
    uvs f32 [N',2]).

    `vertex_map[k]` is the input vertex that split vertex k copies; faces index the split vertices.
    `boundary_fraction` bounds chart size (see CHART_BOUNDARY_FRACTION); None = xatlas's defaults.
    """
    verts = np.ascontiguousarray(verts, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.uint32)
    tri = verts[faces].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()

    atlas = xatlas.Atlas()
    atlas.add_mesh(verts, faces)
    charts = xatlas.ChartOptions()
    if boundary_fraction is not None:
        charts.max_boundary_length = float(boundary_fraction * np.sqrt(max(area, 1e-12)))
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(charts, pack)
    vertex_map, new_faces, uvs = atlas[0]
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas packed the charts into {atlas.atlas_count} atlases instead of one")
    return vertex_map.astype(np.int64), new_faces.astype(np.int32), uvs.astype(np.float32)


def _texel_pairs(
    lo: NDArray[Any], extent: NDArray[Any], counts: NDArray[Any], chunk: int
) -> Iterator[tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]:
    """Yield (face, column, row-from-bottom) arrays for every texel in each face's box, about `chunk`
    pairs at a time; face f's box starts at texel lo[f] and spans extent[f] (columns, rows)."""
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        before = ends[start] - counts[start]
        stop = max(int(np.searchsorted(ends, before + chunk, "right")), start + 1)
        ids = np.arange(start, stop)
        face = np.repeat(ids, counts[ids])
        local = np.arange(len(face)) - np.repeat(ends[ids] - counts[ids] - before, counts[ids])
        width = extent[face, 0]
        yield face, lo[face, 0] + local % width, lo[face, 1] + local // width
        start = stop


def _closest_on_edges(p: NDArray[Any], tri: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """Closest point to p [K,2] on the boundary of triangles tri [K,3,2] -> (squared distance [K],
    barycentrics [K,3])."""
    best_d2 = np.full(len(p), np.inf)
    best_w = np.zeros((len(p), 3))
    for i, j in ((0, 1), (1, 2), (2, 0)):
        a, edge = tri[:, i], tri[:, j] - tri[:, i]
        t = np.einsum("kd,kd->k", p - a, edge) / np.maximum(np.einsum("kd,kd->k", edge, edge), 1e-30)
        t = np.clip(t, 0.0, 1.0)
        d2 = ((a + t[:, None] * edge - p) ** 2).sum(axis=1)
        better = d2 < best_d2
        best_d2[better] = d2[better]
        w = np.zeros((int(better.sum()), 3))
        w[:, i] = 1.0 - t[better]
        w[:, j] = t[better]
        best_w[better] = w
    return best_d2, best_w


def rasterize(
    uvs: NDArray[Any],
    faces: NDArray[Any],
    size: int,
    conservative: bool = True,
    chunk: int = 1 << 20,
    check: Check = no_check,
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Which triangle each texel belongs to -> (face_index i32 [S,S], -1 where none; barycentrics
    f32 [S,S,3]), image layout (row 0 = top = v 1).

    Texel (column i, row-from-bottom j) has its centre at uv ((i + .5)/S, (j + .5)/S). First every texel
    whose centre lies inside a triangle gets it (vectorized bounding-box test, `chunk` pairs at a time).
    With `conservative`, texels left over within sqrt(2) texels of a triangle then get the nearest one,
    with the barycentrics of the closest point on it: all texels a bilinear lookup anywhere on a
    triangle reads, even one thinner than a texel, are baked from its own surface. `check` runs between
    chunks.
    """
    tri = np.asarray(uvs, dtype=np.float64)[faces] * size  # [M,3,2] in texels
    a = tri[:, 0]
    e1 = tri[:, 1] - a
    e2 = tri[:, 2] - a
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    face_index = np.full((size, size), -1, dtype=np.int32)
    bary = np.zeros((size, size, 3), dtype=np.float32)

    lo = np.clip(np.ceil(tri.min(axis=1) - 0.5), 0, size - 1).astype(np.int64)  # [M,2] first texel
    hi = np.clip(np.floor(tri.max(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 0)
    counts = np.where(np.abs(det) > 1e-12, extent[:, 0] * extent[:, 1], 0)
    for face, col, row_up in _texel_pairs(lo, extent, counts, chunk):
        check()
        px = col + 0.5 - a[face, 0]
        py = row_up + 0.5 - a[face, 1]
        l1 = (px * e2[face, 1] - py * e2[face, 0]) / det[face]
        l2 = (e1[face, 0] * py - e1[face, 1] * px) / det[face]
        l0 = 1.0 - l1 - l2
        inside = (l0 >= -1e-7) & (l1 >= -1e-7) & (l2 >= -1e-7)
        rows, cols = size - 1 - row_up[inside], col[inside]
        face_index[rows, cols] = face[inside]
        bary[rows, cols] = np.stack([l0[inside], l1[inside], l2[inside]], axis=1)
    if not conservative:
        return face_index, bary

    margin2 = 2.0  # squared: a bilinear footprint spans less than one texel each way (Chebyshev < 1)
    lo = np.clip(np.ceil(tri.min(axis=1) - 1.5), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(tri.max(axis=1) + 0.5), 0, size - 1).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 0)
    best = np.full((size, size), np.inf)
    for face, col, row_up in _texel_pairs(lo, extent, extent[:, 0] * extent[:, 1], chunk):
        check()
        rows = size - 1 - row_up
        empty = face_index[rows, col] < 0
        face, col, rows = face[empty], col[empty], rows[empty]
        centre = np.stack([col + 0.5, size - rows - 0.5], axis=1)
        d2, w = _closest_on_edges(centre, tri[face])
        near = d2 <= margin2
        face, col, rows, d2, w = face[near], col[near], rows[near], d2[near], w[near]
        # Nearest triangle per texel: sort by (texel, distance), take each texel's first.
        texel = rows * size + col
        order = np.lexsort((d2, texel))
        _, first = np.unique(texel[order], return_index=True)
        pick = order[first]
        better = d2[pick] < best[rows[pick], col[pick]]
        pick = pick[better]
        best[rows[pick], col[pick]] = d2[pick]
        face_index[rows[pick], col[pick]] = face[pick]
        bary[rows[pick], col[pick]] = w[pick]
    return face_index, bary


def pad_texture(image: NDArray[Any], filled: NDArray[Any], max_texels: float | None = None) -> NDArray[Any]:
    """Copy into each unfilled texel the colour of the nearest filled one (within `max_texels`, or all
    of them when None), in place; returns `image`."""
    if filled.all() or not filled.any():
        return image
    dist, (rows, cols) = distance_transform_edt(~filled, return_indices=True)
    take = ~filled if max_texels is None else (~filled) & (dist <= max_texels)
    image[take] = image[rows[take], cols[take]]
    return image


def sample_texture(texture: NDArray[Any], uvs: NDArray[Any]) -> NDArray[np.float32]:
    """Bilinear lookup (clamped at the border) of u8 [S,S,C] at uvs [N,2] -> f32 [N,C] in 0..255,
    with this module's conventions (v = 0 at the bottom row, texel centres at (i + .5) / S)."""
    height, width = texture.shape[:2]
    x = np.asarray(uvs[:, 0], dtype=np.float64) * width - 0.5
    y = np.asarray(uvs[:, 1], dtype=np.float64) * height - 0.5
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    c0 = np.clip(x0, 0, width - 1).astype(np.int64)
    c1 = np.clip(x0 + 1, 0, width - 1).astype(np.int64)
    r0 = height - 1 - np.clip(y0, 0, height - 1).astype(np.int64)  # image rows count from the top
    r1 = height - 1 - np.clip(y0 + 1, 0, height - 1).astype(np.int64)
    img = texture.astype(np.float32)
    top = img[r1, c0] * (1 - fx) + img[r1, c1] * fx
    bottom = img[r0, c0] * (1 - fx) + img[r0, c1] * fx
    return cast(NDArray[np.float32], (bottom * (1 - fy) + top * fy).astype(np.float32))


def _face_normals(verts: NDArray[Any], faces: NDArray[Any]) -> NDArray[np.float32]:
    tri = np.asarray(verts, dtype=np.float64)[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return cast(
        NDArray[np.float32],
        (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32),
    )


def bake_texture(
    albedo: AlbedoFn,
    verts: NDArray[Any],
    faces: NDArray[Any],
    uvs: NDArray[Any],
    size: int,
    normals: NDArray[Any] | None = None,
    inset: float = 0.0,
    padding: float | None = None,
    background: tuple[int, int, int] = (0, 0, 0),
    conservative: bool = True,
    check: Check = no_check,
) -> NDArray[np.uint8]:
    """Albedo baked into a `size`^2 image for the uv-mapped mesh -> u8 [S,S,3], row 0 = top.

    Each covered texel is the albedo at its surface point, moved `inset` world units inward along the
    interpolated vertex `normals` (face normals when None). The texels around each triangle that
    bilinear lookups on it read are baked from the triangle itself (`rasterize`, conservative); the
    rest are padded from their nearest baked texel (`padding` texels at most; None = every texel, so
    mipmaps never see a fill colour either); what is left stays `background`.
    """
    face_index, bary = rasterize(uvs, faces, size, conservative=conservative, check=check)
    filled = face_index >= 0
    hit = face_index[filled]
    weights = bary[filled]  # [K,3]
    corners = faces[hit]  # [K,3]
    verts = np.asarray(verts, dtype=np.float32)
    points = np.einsum("kc,kcd->kd", weights, verts[corners])
    if inset > 0.0:
        if normals is not None:
            inward = np.einsum("kc,kcd->kd", weights, np.asarray(normals, dtype=np.float32)[corners])
            inward /= np.maximum(np.linalg.norm(inward, axis=1, keepdims=True), 1e-12)
        else:
            inward = _face_normals(verts, faces)[hit]
        points = points - inset * inward
    rgb = np.clip(np.asarray(albedo(points.astype(np.float32)), dtype=np.float32), 0.0, 1.0)

    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = np.asarray(background, dtype=np.uint8)
    image[filled] = np.round(rgb * 255.0).astype(np.uint8)
    check()
    return pad_texture(image, filled, padding)


def uv_texture(
    albedo: AlbedoFn,
    verts: NDArray[Any],
    faces: NDArray[Any],
    texture_size: int,
    normals: NDArray[Any] | None = None,
    inset: float = 0.0,
    check: Check = no_check,
) -> UVTexture:
    """Unwrap the (already decimated) mesh and bake its albedo -> `UVTexture` (see the module docstring).

    `normals` are the input mesh's outward vertex normals, used for the inward sampling offset. `check`
    runs between the stages and inside the baking loops (`albedo` should check in its own).
    """
    check()
    vertex_map, new_faces, uvs = unwrap(verts, faces, texture_size)
    check()
    new_verts = np.asarray(verts, dtype=np.float32)[vertex_map]
    new_normals = None if normals is None else np.asarray(normals, dtype=np.float32)[vertex_map]
    image = bake_texture(
        albedo, new_verts, new_faces, uvs, texture_size, normals=new_normals, inset=inset, check=check
    )
    return UVTexture(vertices=new_verts, faces=new_faces, uvs=uvs, vertex_map=vertex_map, texture=image)
