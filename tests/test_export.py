"""Mesh export: density grid, marching cubes, floaters, decimation, colours, GLB / npz files.

Analytic stand-in fields replace the NeRF: a sphere of radius 0.5 (density 50 inside, red for x < 0 and
blue for x >= 0), and a "figure" with a head on top (+Z) and a nose at the front (-Y) for orientation.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import mcubes
import numpy as np
import pytest
import torch
import trimesh

from backend.config import ExportConfig
from backend.engine import export as ex
from backend.errors import DreamsmithError

RED = torch.tensor([1.0, 0.0, 0.0])
BLUE = torch.tensor([0.0, 0.0, 1.0])
SPHERE_VOLUME = 4.0 / 3.0 * math.pi * 0.5**3


class SpheresField:
    """Density 50 inside the union of spheres (smooth 0.02 edge, exactly 25 on the surface)."""

    bound = 1.0

    def __init__(self, spheres: list[tuple[tuple[float, float, float], float]] | None = None) -> None:
        spheres = spheres or [((0.0, 0.0, 0.0), 0.5)]
        self.centres = torch.tensor([c for c, _ in spheres])
        self.radii = torch.tensor([r for _, r in spheres])

    def density(self, x: torch.Tensor) -> torch.Tensor:
        distance = ((x[:, None, :] - self.centres).norm(dim=-1) - self.radii).min(dim=1).values
        return 50.0 * torch.sigmoid(-distance / 0.02)

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, :1] < 0, RED, BLUE)


def figure() -> SpheresField:
    """Body at the origin, head on top (+Z, top at z = 0.65), nose at the front (-Y, tip at y = -0.55)."""
    return SpheresField([((0.0, 0.0, 0.0), 0.4), ((0.0, 0.0, 0.5), 0.15), ((0.0, -0.45, 0.0), 0.1)])


class BlobField(torch.nn.Module):
    """A freshly initialized field: zero network output plus the density blob 10 (1 - |x| / 0.5)."""

    bound = 1.0

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(10.0 * (1.0 - x.norm(dim=-1) / 0.5))

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, 0.5)


class ConstantField:
    bound = 1.0

    def __init__(self, value: float) -> None:
        self.value = value

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x),), self.value)

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, 0.5)


def sphere_mesh(resolution: int = 64, threshold: float | None = 25.0) -> tuple[np.ndarray, np.ndarray]:
    grid = ex.density_grid(SpheresField(), resolution)
    return ex.marching_cubes_mesh(grid, 1.0, threshold)


def test_density_grid_is_indexed_x_y_z_over_the_bound() -> None:
    class Ramp:
        bound = 1.0

        def density(self, x: torch.Tensor) -> torch.Tensor:
            return 1.0 * x[:, 0] + 10.0 * x[:, 1] + 100.0 * x[:, 2]

    grid = ex.density_grid(Ramp(), 9, chunk=50)  # chunks that do not divide the grid
    axis = np.linspace(-1.0, 1.0, 9)
    expected = axis[:, None, None] + 10.0 * axis[None, :, None] + 100.0 * axis[None, None, :]
    assert grid.dtype == np.float32 and grid.shape == (9, 9, 9)
    np.testing.assert_allclose(grid, expected, atol=1e-4)


class CountingField:
    def __init__(self, field: SpheresField | BlobField) -> None:
        self.field, self.bound, self.evaluations = field, field.bound, 0

    def density(self, x: torch.Tensor) -> torch.Tensor:
        self.evaluations += len(x)
        return self.field.density(x)


@pytest.mark.parametrize("field", [figure(), BlobField()], ids=["figure", "fresh blob"])
def test_density_grid_skips_empty_space_without_changing_the_surface(field: SpheresField | BlobField) -> None:
    counting = CountingField(field)
    fast = ex.density_grid(counting, 97)
    full = ex.density_grid(field, 97, empty_below=None)
    assert counting.evaluations < 0.3 * 97**3
    dense = full >= ex.EMPTY_DENSITY
    np.testing.assert_allclose(fast[dense], full[dense], rtol=1e-6)
    assert (fast[~dense] < ex.EMPTY_DENSITY).all()
    assert ex.auto_threshold(fast) == pytest.approx(ex.auto_threshold(full), rel=1e-5)
    mesh_fast = ex.marching_cubes_mesh(fast, 1.0, None)
    mesh_full = ex.marching_cubes_mesh(full, 1.0, None)
    np.testing.assert_array_equal(mesh_fast[1], mesh_full[1])
    np.testing.assert_allclose(mesh_fast[0], mesh_full[0], atol=1e-6)


def test_marching_cubes_sphere_is_closed_outward_and_has_the_right_volume() -> None:
    verts, faces = sphere_mesh()
    assert verts.dtype == np.float32 and faces.dtype == np.int32
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(SPHERE_VOLUME, rel=0.02)
    # Every face normal points away from the centre.
    assert (np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center) > 0).all()
    np.testing.assert_allclose(np.linalg.norm(verts, axis=1), 0.5, atol=0.01)


def test_mesh_is_closed_where_the_object_touches_the_bound() -> None:
    grid = ex.density_grid(SpheresField([((0.0, 0.0, -0.6), 0.7)]), 48)
    verts, faces = ex.marching_cubes_mesh(grid, 1.0, 25.0)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert mesh.is_watertight and mesh.volume > 0
    assert verts.min() >= -1.0 and verts.max() <= 1.0
    assert verts[:, 2].min() == pytest.approx(-1.0)


def test_auto_threshold_on_trained_like_fresh_and_foggy_fields() -> None:
    assert ex.auto_threshold(ex.density_grid(SpheresField(), 48)) == pytest.approx(ex.SURFACE_DENSITY)

    # A fresh blob (peak ~10) gets a level of ~2: a sphere of radius ~0.4, about its rendered silhouette.
    blob_grid = ex.density_grid(BlobField(), 64)
    level = ex.auto_threshold(blob_grid)
    assert 1.0 <= level <= 3.0
    verts, _ = ex.marching_cubes_mesh(blob_grid, 1.0, None)
    assert 0.35 < float(np.linalg.norm(verts, axis=1).mean()) < 0.47

    class Foggy(SpheresField):
        def density(self, x: torch.Tensor) -> torch.Tensor:
            return 8.0 + super().density(x)

    foggy_grid = ex.density_grid(Foggy(), 48)
    level = ex.auto_threshold(foggy_grid)
    assert 8.0 * 1.5 < level < 58.0
    verts, faces = ex.marching_cubes_mesh(foggy_grid, 1.0, None)
    assert SPHERE_VOLUME < trimesh.Trimesh(verts, faces).volume < 1.25 * SPHERE_VOLUME


@pytest.mark.parametrize("field", [ConstantField(0.0), ConstantField(1e-4), ConstantField(30.0)])
def test_empty_field_raises_a_message_saying_what_to_try(field: ConstantField, tmp_path: Path) -> None:
    with pytest.raises(DreamsmithError) as info:
        ex.export_result(field, ExportConfig(mesh_resolution=16), tmp_path, None)
    message = str(info.value)
    assert "empty" in message and "steps" in message and "threshold" in message
    assert not (tmp_path / "mesh.glb").exists()


def test_threshold_above_every_density_raises() -> None:
    grid = ex.density_grid(SpheresField(), 24)
    with pytest.raises(DreamsmithError, match="empty"):
        ex.marching_cubes_mesh(grid, 1.0, 60.0)


def test_floaters_are_removed_and_large_parts_kept() -> None:
    field = SpheresField([((0.0, 0.0, 0.0), 0.5), ((0.8, 0.8, 0.8), 0.08)])
    verts, faces = ex.marching_cubes_mesh(ex.density_grid(field, 64), 1.0, 25.0)
    assert len(trimesh.Trimesh(verts, faces).split(only_watertight=False)) == 2
    kept_v, kept_f = ex.remove_floaters(verts, faces)
    mesh = trimesh.Trimesh(kept_v, kept_f, process=False)
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.is_watertight and mesh.volume == pytest.approx(SPHERE_VOLUME, rel=0.02)
    assert kept_f.max() < len(kept_v) and kept_v.dtype == np.float32 and kept_f.dtype == np.int32

    twins = SpheresField([((-0.5, 0.0, 0.0), 0.3), ((0.5, 0.0, 0.0), 0.3)])
    verts, faces = ex.marching_cubes_mesh(ex.density_grid(twins, 48), 1.0, 25.0)
    assert len(ex.remove_floaters(verts, faces)[1]) == len(faces)


def test_decimation_reaches_the_target_and_keeps_the_shape() -> None:
    verts, faces = sphere_mesh(96)
    assert len(faces) > 10000
    small_v, small_f = ex.decimate(verts, faces, 2000)
    assert 1800 <= len(small_f) <= 2000
    mesh = trimesh.Trimesh(small_v, small_f, process=False)
    assert mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(SPHERE_VOLUME, rel=0.03)
    assert small_v.dtype == np.float32 and small_f.dtype == np.int32 and small_f.max() < len(small_v)
    same_v, same_f = ex.decimate(small_v, small_f, 5000)
    assert same_v is small_v and same_f is small_f


def test_decimation_leaves_no_repeated_vertex_and_no_duplicate_triangle() -> None:
    faces = np.array([[0, 1, 2], [2, 1, 1], [1, 2, 0], [0, 2, 3], [3, 3, 3], [2, 0, 3], [1, 3, 2]])
    assert ex.valid_faces(faces).tolist() == [[0, 1, 2], [0, 2, 3], [1, 3, 2]]
    assert ex.valid_faces(np.zeros((0, 3), dtype=np.int32)).shape == (0, 3)
    # A noisy surface of many small pieces, as an early generation: edge collapses there duplicate
    # hundreds of triangles (fast_simplification alone leaves ~300 of 4000).
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 48)
    r2 = sum(c**2 for c in np.meshgrid(x, x, x, indexing="ij"))
    verts, faces = mcubes.marching_cubes(1 - 2 * r2 + 0.3 * rng.normal(size=r2.shape), 0.0)
    for target in (200, 1000, 4000):
        _, small_f = ex.decimate(verts, faces, target)
        assert len(small_f) > 0.75 * target  # about the target, less the duplicates
        assert len(np.unique(np.sort(small_f, axis=1), axis=0)) == len(small_f)


def test_smoothing_takes_the_dents_out_and_keeps_the_shape() -> None:
    x = np.linspace(-1, 1, 96)
    r = np.sqrt(sum(c**2 for c in np.meshgrid(x, x, x, indexing="ij")))
    rng = np.random.default_rng(0)
    density = (50 / (1 + np.exp(-(0.5 - r) / 0.02)) + 15 * rng.normal(size=r.shape)).astype(np.float32)
    assert ex.smooth_grid(density, 0.0) is density and ex.surface_grid(density, 25.0, 0.0) is density
    meshes = {}
    for sigma in (0.0, 1.0):
        grid = ex.surface_grid(density, 25.0, sigma)
        verts, faces = ex.remove_floaters(*ex.marching_cubes_mesh(grid, 1.0, 25.0))
        meshes[sigma] = trimesh.Trimesh(verts, faces, process=False)
    sphere_area = 4 * math.pi * 0.5**2
    assert meshes[0.0].area > 2 * sphere_area  # noise dents the surface everywhere
    assert meshes[1.0].area == pytest.approx(sphere_area, rel=0.05)
    assert meshes[1.0].is_watertight and meshes[1.0].volume == pytest.approx(SPHERE_VOLUME, rel=0.03)


def test_smoothing_does_not_move_the_surface_of_a_dense_field() -> None:
    # An exp-density field as it converges: thousands inside, rising by factors across the surface at
    # r = 0.5, where it crosses the level 3.
    x = np.linspace(-1, 1, 97)
    r = np.sqrt(sum(c**2 for c in np.meshgrid(x, x, x, indexing="ij")))
    density = np.minimum(3.0 * np.exp((0.5 - r) / 0.01), 5000.0).astype(np.float32)

    def volume(grid: np.ndarray) -> float:
        return float(trimesh.Trimesh(*ex.marching_cubes_mesh(grid, 1.0, 3.0), process=False).volume)

    assert volume(ex.surface_grid(density, 3.0, 0.0)) == pytest.approx(SPHERE_VOLUME, rel=0.02)
    assert volume(ex.surface_grid(density, 3.0, 1.0)) == pytest.approx(SPHERE_VOLUME, rel=0.02)
    assert volume(ex.smooth_grid(density, 1.0)) > 1.1 * SPHERE_VOLUME  # blurred raw, the interior spreads
    # An explicit level of 0 or below is smoothed unclipped.
    assert np.array_equal(ex.surface_grid(density, -1.0, 1.0), ex.smooth_grid(density, 1.0))


def test_vertex_colors_follow_the_albedo() -> None:
    verts, faces = sphere_mesh(48)
    colors = ex.vertex_colors(SpheresField(), verts, ex.vertex_normals(verts, faces), inset=0.01)
    assert colors.dtype == np.uint8 and colors.shape == (len(verts), 4)
    assert (colors[:, 3] == 255).all()
    assert (colors[verts[:, 0] < -0.02, :3] == [255, 0, 0]).all()
    assert (colors[verts[:, 0] > 0.02, :3] == [0, 0, 255]).all()


def test_vertex_normals_point_outward() -> None:
    verts, faces = sphere_mesh(32)
    normals = ex.vertex_normals(verts, faces)
    radial = verts / np.linalg.norm(verts, axis=1, keepdims=True)
    assert (np.einsum("ij,ij->i", normals, radial) > 0.95).all()


def _srgb_from_linear_u8(c: np.ndarray) -> np.ndarray:
    x = c.astype(np.float64) / 255.0
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055) * 255.0


@pytest.fixture(scope="module")
def figure_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[ex.ExportResult, Path]:
    out = tmp_path_factory.mktemp("figure")
    cfg = ExportConfig(mesh_resolution=64, texture="vertex", target_faces=3000, threshold=25.0)
    return ex.export_result(figure(), cfg, out, b"\x89PNG preview"), out


def test_export_writes_the_contract_files(figure_export: tuple[ex.ExportResult, Path]) -> None:
    result, out = figure_export
    assert set(result.files) == {"mesh.glb", "mesh.npz", "preview.png"}
    assert all(path.parent == out and path.is_file() for path in result.files.values())
    assert (out / "preview.png").read_bytes() == b"\x89PNG preview"
    with np.load(out / "mesh.npz") as npz:
        arrays = dict(npz)
    assert set(arrays) == {"vertices", "faces", "colors"}
    v, f, c = arrays["vertices"], arrays["faces"], arrays["colors"]
    assert v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == 3
    assert f.dtype == np.int32 and f.ndim == 2 and f.shape[1] == 3
    assert c.dtype == np.uint8 and c.shape == (len(v), 4)
    assert (result.n_vertices, result.n_faces) == (len(v), len(f))
    assert f.min() >= 0 and f.max() < len(v) and len(f) <= 3000
    assert np.abs(v).max() <= 1.0
    # Z up, front toward -Y: the head's top and the nose's tip.
    assert v[:, 2].max() == pytest.approx(0.65, abs=0.02)
    assert v[:, 1].min() == pytest.approx(-0.55, abs=0.02)
    assert trimesh.Trimesh(v, f, process=False).volume > 0


def test_glb_is_y_up_with_linear_vertex_colours(figure_export: tuple[ex.ExportResult, Path]) -> None:
    _, out = figure_export
    with np.load(out / "mesh.npz") as npz:
        v, f, c = npz["vertices"], npz["faces"], npz["colors"]
    scene = trimesh.load(out / "mesh.glb", force="scene")
    (mesh,) = scene.geometry.values()
    # glTF is Y up: the head is at +Y and the nose at +Z (glTF's front) before converting back.
    assert mesh.vertices[:, 1].max() == pytest.approx(0.65, abs=0.02)
    assert mesh.vertices[:, 2].max() == pytest.approx(0.55, abs=0.02)
    z_up = ex.y_up_to_z_up(mesh.vertices)
    np.testing.assert_allclose(z_up, v, atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, f)
    assert mesh.volume > 0
    linear = np.asarray(mesh.visual.vertex_attributes["color"])
    assert linear.shape == (len(v), 4)
    np.testing.assert_allclose(_srgb_from_linear_u8(linear[:, :3]), c[:, :3], atol=1.0)
    assert (linear[v[:, 0] < -0.02, :3] == [255, 0, 0]).all()


def test_glb_carries_color_0_and_no_texture(figure_export: tuple[ex.ExportResult, Path]) -> None:
    pygltflib = pytest.importorskip("pygltflib")
    _, out = figure_export
    gltf = pygltflib.GLTF2().load(str(out / "mesh.glb"))
    (primitive,) = gltf.meshes[0].primitives
    assert primitive.attributes.COLOR_0 is not None and primitive.attributes.NORMAL is not None
    assert primitive.attributes.TEXCOORD_0 is None
    material = gltf.materials[primitive.material]
    assert material.pbrMetallicRoughness.baseColorTexture is None
    assert material.pbrMetallicRoughness.metallicFactor == 0.0


BLENDER_CHECK = """
import json, sys
import bpy
import numpy as np
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=sys.argv[1])
(obj,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
me = obj.data
co = np.empty(len(me.vertices) * 3, np.float32)
me.vertices.foreach_get("co", co)
m = np.array(obj.matrix_world)
co = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
attr = me.color_attributes[0]
col = np.empty(len(attr.data) * 4, np.float32)
attr.data.foreach_get("color_srgb", col)
vi = np.empty(len(me.loops), np.int32)
me.loops.foreach_get("vertex_index", vi)
col = col.reshape(-1, 4)
if attr.domain == "CORNER":
    per_vertex = np.zeros((len(me.vertices), 4), np.float32)
    per_vertex[vi] = col
    col = per_vertex
print("RESULT" + json.dumps({"co": co.tolist(), "srgb": (col[:, :3] * 255).tolist()}))
"""


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy wheel")
def test_blender_imports_the_glb_upright_with_srgb_colours(
    figure_export: tuple[ex.ExportResult, Path],
) -> None:
    _, out = figure_export
    run = subprocess.run(
        [sys.executable, "-c", BLENDER_CHECK, str(out / "mesh.glb")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT"))
    data = json.loads(line[len("RESULT") :])
    co, srgb = np.array(data["co"]), np.array(data["srgb"])
    with np.load(out / "mesh.npz") as npz:
        v, c = npz["vertices"], npz["colors"]
    assert co[:, 2].max() == pytest.approx(0.65, abs=0.02)  # head on top
    assert co[:, 1].min() == pytest.approx(-0.55, abs=0.02)  # nose toward -Y
    # Blender may reorder vertices: match them by position.
    order = np.lexsort(v.T)
    blender_order = np.lexsort(co.T)
    np.testing.assert_allclose(co[blender_order], v[order], atol=1e-5)
    np.testing.assert_allclose(srgb[blender_order], c[order, :3], atol=1.5)
