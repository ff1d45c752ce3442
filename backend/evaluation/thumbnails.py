"""Small software renders of meshes (no GPU, no display) and the labelled contact sheet of a benchmark.

`render_mesh` rasterises a triangle mesh with a z-buffer from an orbit camera (the engine's conventions:
Z up, azimuth 0 looks at the front from -Y), colours interpolated from the vertices, flat Lambertian
shading from a light beside the camera. People judge shapes by looking; these pictures are for that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, ImageDraw

BACKGROUND = (255, 255, 255)


def render_mesh(
    vertices: NDArray[Any],
    faces: NDArray[Any],
    colours: NDArray[Any] | None = None,
    size: int = 128,
    elevation_deg: float = 20.0,
    azimuth_deg: float = -35.0,
    distance: float = 2.6,
    fov_deg: float = 40.0,
) -> NDArray[np.uint8]:
    """u8 [size, size, 3] picture of the mesh (vertices [N, 3] world, faces [M, 3], colours u8 [N, 3+])."""
    from backend.engine.cameras import orbit_camera

    image = np.full((size, size, 3), BACKGROUND, dtype=np.float64)
    if len(faces) == 0:
        return image.astype(np.uint8)
    c2w = orbit_camera(elevation_deg, azimuth_deg, distance).double().numpy()
    rot, eye = c2w[:3, :3], c2w[:3, 3]
    cam = (np.asarray(vertices, np.float64) - eye) @ rot  # camera space: x right, y up, looking along -z
    depth = -cam[:, 2]
    focal = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    px = size / 2 + focal * cam[:, 0] / np.maximum(depth, 1e-6) - 0.5
    py = size / 2 - focal * cam[:, 1] / np.maximum(depth, 1e-6) - 0.5
    faces = np.asarray(faces, np.int64)
    tri_world = np.asarray(vertices, np.float64)[faces]
    normal = np.cross(tri_world[:, 1] - tri_world[:, 0], tri_world[:, 2] - tri_world[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    towards_camera = eye - tri_world.mean(axis=1)
    front = (normal * towards_camera).sum(axis=1) > 0  # closed meshes: back faces are hidden anyway
    faces, normal = faces[front], normal[front]
    if len(faces) == 0:
        return image.astype(np.uint8)
    light = eye / np.linalg.norm(eye) + np.array([0.0, 0.0, 0.6])
    light /= np.linalg.norm(light)
    brightness = 0.35 + 0.65 * np.clip(normal @ light, 0.0, 1.0)  # [F]

    xs, ys, zs = px[faces], py[faces], depth[faces]  # [F, 3]
    lo_x = np.clip(np.ceil(xs.min(1)), 0, size).astype(np.int64)
    hi_x = np.clip(np.floor(xs.max(1)), -1, size - 1).astype(np.int64)
    lo_y = np.clip(np.ceil(ys.min(1)), 0, size).astype(np.int64)
    hi_y = np.clip(np.floor(ys.max(1)), -1, size - 1).astype(np.int64)
    nx, ny = np.maximum(hi_x - lo_x + 1, 0), np.maximum(hi_y - lo_y + 1, 0)
    counts = nx * ny
    total = int(counts.sum())
    if total == 0:
        return image.astype(np.uint8)
    which = np.repeat(np.arange(len(faces)), counts)
    k = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    qx = lo_x[which] + k % nx[which]
    qy = lo_y[which] + k // nx[which]
    ax, bx, cx = xs[which].T
    ay, by, cy = ys[which].T
    det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    safe = np.where(det == 0, 1.0, det)
    l1 = ((by - cy) * (qx - cx) + (cx - bx) * (qy - cy)) / safe
    l2 = ((cy - ay) * (qx - cx) + (ax - cx) * (qy - cy)) / safe
    l3 = 1.0 - l1 - l2
    inside = (det != 0) & (l1 >= -1e-9) & (l2 >= -1e-9) & (l3 >= -1e-9)
    which, qx, qy, l1, l2, l3 = which[inside], qx[inside], qy[inside], l1[inside], l2[inside], l3[inside]
    z = l1 * zs[which, 0] + l2 * zs[which, 1] + l3 * zs[which, 2]
    pixel = qy * size + qx
    zbuffer = np.full(size * size, np.inf)
    np.minimum.at(zbuffer, pixel, z)
    nearest = z <= zbuffer[pixel]
    which, pixel = which[nearest], pixel[nearest]
    l1, l2, l3 = l1[nearest], l2[nearest], l3[nearest]
    if colours is None:
        rgb = np.full((len(which), 3), 0.7)
    else:
        vc = np.asarray(colours)[:, :3].astype(np.float64) / 255.0
        f = faces[which]
        rgb = l1[:, None] * vc[f[:, 0]] + l2[:, None] * vc[f[:, 1]] + l3[:, None] * vc[f[:, 2]]
    image.reshape(-1, 3)[pixel] = np.clip(rgb * brightness[which][:, None], 0.0, 1.0) * 255.0
    return image.round().astype(np.uint8)


@dataclass
class Tile:
    image: NDArray[np.uint8]  # u8 [H, W, 3]
    lines: Sequence[str]  # label under the picture
    ok: bool | None = None  # True: green frame; False: red frame and an X; None: no frame


def contact_sheet(tiles: Sequence[Tile], columns: int = 6, title: str = "") -> Image.Image:
    """A grid of labelled pictures; wrong results framed in red and crossed out."""
    if not tiles:
        return Image.new("RGB", (200, 40), BACKGROUND)
    h, w = tiles[0].image.shape[:2]
    line_h = 12
    n_lines = max(len(t.lines) for t in tiles)
    cell_w, cell_h = w + 8, h + 8 + n_lines * line_h
    top = 18 if title else 0
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * cell_w, top + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 3), title, fill=(0, 0, 0))
    for i, tile in enumerate(tiles):
        x0, y0 = (i % columns) * cell_w + 4, top + (i // columns) * cell_h + 4
        sheet.paste(Image.fromarray(tile.image), (x0, y0))
        if tile.ok is not None:
            colour = (30, 150, 50) if tile.ok else (210, 30, 30)
            draw.rectangle((x0 - 2, y0 - 2, x0 + w + 1, y0 + h + 1), outline=colour, width=2)
            if not tile.ok:
                draw.line((x0 + w - 14, y0 + 2, x0 + w - 4, y0 + 12), fill=colour, width=2)
                draw.line((x0 + w - 14, y0 + 12, x0 + w - 4, y0 + 2), fill=colour, width=2)
        for j, line in enumerate(tile.lines):
            draw.text((x0, y0 + h + 2 + j * line_h), line, fill=(0, 0, 0))
    return sheet


def mesh_tile(
    vertices: NDArray[Any], faces: NDArray[Any], colours: NDArray[Any] | None, size: int = 128
) -> NDArray[np.uint8]:
    """Two views side by side (front-left and back-right), each size x size."""
    a = render_mesh(vertices, faces, colours, size, elevation_deg=30.0, azimuth_deg=-35.0)
    b = render_mesh(vertices, faces, colours, size, elevation_deg=30.0, azimuth_deg=145.0)
    return np.concatenate([a, b], axis=1)


def demo_object_mesh(
    shape: str, colour: str, resolution: int = 64
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.uint8]]:
    """A world object's true surface as a mesh with vertex colours (for reference tiles)."""
    import mcubes

    from backend import demo_world
    from backend.evaluation.truth import BOUND, grid_points

    obj = demo_world.DemoObject(shape, colour)
    sdf = demo_world.sdf(obj, grid_points(resolution)).reshape((resolution,) * 3).numpy()
    verts, faces = mcubes.marching_cubes(-sdf, 0.0)
    verts = (verts * (2 * BOUND / (resolution - 1)) - BOUND).astype(np.float32)
    rgb = demo_world.albedo(obj, torch.from_numpy(verts)).numpy()
    colours = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    return verts, faces.astype(np.int64), colours
