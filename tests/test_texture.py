"""UV texturing (issue 6): xatlas unwrap of the decimated mesh, albedo bake, seam padding, textured GLB.

The stand-in field is a sphere of radius 0.5, red for x < 0 and blue for x >= 0.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from backend.config import ExportConfig
from backend.engine import export as ex
from backend.engine import texture as tx

RED = torch.tensor([1.0, 0.0, 0.0])
BLUE = torch.tensor([0.0, 0.0, 1.0])
MAGENTA = (255, 0, 255)  # background fill in the seam tests: no field colour is anywhere near it
SIZE = 256


class HalfRedHalfBlueSphere:
    bound = 1.0

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return 50.0 * torch.sigmoid((0.5 - x.norm(dim=-1)) / 0.02)

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, :1] < 0, RED, BLUE)


FIELD = HalfRedHalfBlueSphere()


def albedo(points: np.ndarray) -> np.ndarray:
    return ex.sample_albedo(FIELD, points)


@pytest.fixture(scope="module")
def mesh() -> tuple[np.ndarray, np.ndarray]:
    verts, faces = ex.marching_cubes_mesh(ex.density_grid(FIELD, 64), 1.0, 25.0)
    return ex.decimate(verts, faces, 4000)


@pytest.fixture(scope="module")
def baked(mesh: tuple[np.ndarray, np.ndarray]) -> tx.UVTexture:
    verts, faces = mesh
    return tx.uv_texture(albedo, verts, faces, SIZE, normals=ex.vertex_normals(verts, faces), inset=0.01)


def test_unwrap_splits_vertices_but_keeps_the_surface(
    mesh: tuple[np.ndarray, np.ndarray], baked: tx.UVTexture
) -> None:
    verts, faces = mesh
    assert baked.faces.shape == faces.shape and baked.faces.dtype == np.int32
    assert len(baked.vertices) >= len(verts)
    np.testing.assert_array_equal(baked.vertices, verts[baked.vertex_map])
    np.testing.assert_array_equal(baked.vertices[baked.faces], verts[faces])  # same faces, same order
    assert baked.uvs.dtype == np.float32 and baked.uvs.shape == (len(baked.vertices), 2)
    assert baked.uvs.min() >= 0.0 and baked.uvs.max() <= 1.0
    assert baked.texture.dtype == np.uint8 and baked.texture.shape == (SIZE, SIZE, 3)


def _truth(points: np.ndarray) -> np.ndarray:
    return albedo(points) * 255.0


def test_baked_texture_reproduces_the_field_at_vertices_and_face_centres(
    mesh: tuple[np.ndarray, np.ndarray], baked: tx.UVTexture
) -> None:
    verts, uvs, faces = baked.vertices, baked.uvs, baked.faces
    at_vertices = np.abs(tx.sample_texture(baked.texture, uvs) - _truth(verts)).max(axis=1)
    centres = verts[faces].mean(axis=1)
    at_centres = np.abs(tx.sample_texture(baked.texture, uvs[faces].mean(axis=1)) - _truth(centres)).max(
        axis=1
    )
    for err, points in ((at_vertices, verts), (at_centres, centres)):
        assert err.mean() < 4.0
        # Away from the red/blue boundary at x = 0 the colour is exact up to rounding.
        assert err[np.abs(points[:, 0]) > 0.03].max() <= 1.0


def _bilinear_texels(size: int, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image rows and columns of the 4 texels a bilinear lookup at uv [N,2] reads -> ([N,4], [N,4])."""
    x = uv[:, 0] * size - 0.5
    y = uv[:, 1] * size - 0.5
    c0 = np.floor(x).astype(int)
    r0 = np.floor(y).astype(int)
    cols = np.clip(np.stack([c0, c0 + 1, c0, c0 + 1], axis=1), 0, size - 1)
    rows_up = np.clip(np.stack([r0, r0, r0 + 1, r0 + 1], axis=1), 0, size - 1)
    return size - 1 - rows_up, cols


def _edge_points(values: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-vertex values (uvs or positions) at every triangle corner and at 1/4, 1/2, 3/4 along every
    edge -> [K, D]."""
    tri = values[faces]
    points = [tri[:, k] for k in range(3)]
    for a, b in ((0, 1), (1, 2), (2, 0)):
        for t in (0.25, 0.5, 0.75):
            points.append((1 - t) * tri[:, a] + t * tri[:, b])
    return np.concatenate(points)


def test_seams_never_read_the_background(baked: tx.UVTexture) -> None:
    normals = ex.vertex_normals(baked.vertices, baked.faces)
    common = dict(normals=normals, inset=0.01, background=MAGENTA, padding=0)
    # No dilation at all: the bake alone must cover every texel a lookup on a triangle reads.
    image = tx.bake_texture(albedo, baked.vertices, baked.faces, baked.uvs, SIZE, **common)
    centres_only = tx.bake_texture(
        albedo, baked.vertices, baked.faces, baked.uvs, SIZE, conservative=False, **common
    )
    rows, cols = _bilinear_texels(SIZE, _edge_points(baked.uvs, baked.faces))

    def is_background(image: np.ndarray) -> np.ndarray:
        return (image == MAGENTA).all(axis=-1)

    # The fill colour is really there between charts, and texel-centre rasterization alone reads it ...
    assert is_background(image).mean() > 0.05
    assert is_background(centres_only)[rows, cols].any()
    # ... but the conservative bake never lets a lookup at a corner or along an edge touch it.
    assert not is_background(image)[rows, cols].any()
    # The export's texture (padded everywhere) has no fill colour left at all, and its corners and edges
    # read their own chart's colour, not a neighbouring chart's.
    assert not is_background(baked.texture).any()
    points = _edge_points(baked.vertices, baked.faces)
    err = np.abs(tx.sample_texture(baked.texture, _edge_points(baked.uvs, baked.faces)) - _truth(points))
    assert err.max(axis=1)[np.abs(points[:, 0]) > 0.03].max() <= 1.0


def test_v_is_zero_at_the_bottom_of_the_image() -> None:
    # A quad covering the lower half of uv space (v in [0, 0.5]): the lower half of the image.
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32)
    uvs = np.array([[0, 0], [1, 0], [1, 0.5], [0, 0.5]], dtype=np.float32)
    image = tx.bake_texture(
        lambda p: np.tile([1.0, 0.0, 0.0], (len(p), 1)), verts, faces, uvs, 8, padding=0, conservative=False
    )
    assert (image[4:] == [255, 0, 0]).all()
    assert (image[:4] == 0).all()
    face_index, bary = tx.rasterize(uvs, faces, 8)
    np.testing.assert_allclose(bary.sum(axis=-1)[face_index >= 0], 1.0, atol=1e-6)
    assert (face_index[3] >= 0).all() and (face_index[:3] < 0).all()  # conservative: one texel row more


@pytest.fixture(scope="module")
def uv_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[ex.ExportResult, Path]:
    out = tmp_path_factory.mktemp("uv_export")
    cfg = ExportConfig(mesh_resolution=48, texture="uv", texture_size=SIZE, target_faces=3000)
    return ex.export_result(FIELD, cfg, out, None), out


def test_uv_export_files_and_arrays(uv_export: tuple[ex.ExportResult, Path]) -> None:
    result, out = uv_export
    assert set(result.files) == {"mesh.glb", "mesh.npz", "texture.png"}
    with np.load(out / "mesh.npz") as npz:
        arrays = dict(npz)
    assert set(arrays) == {"vertices", "faces", "colors", "uvs"}
    v, f, c, uv = arrays["vertices"], arrays["faces"], arrays["colors"], arrays["uvs"]
    assert v.dtype == np.float32 and v.shape[1] == 3 and f.dtype == np.int32 and f.shape[1] == 3
    assert (
        c.dtype == np.uint8 and c.shape == (len(v), 4) and uv.dtype == np.float32 and uv.shape == (len(v), 2)
    )
    assert (result.n_vertices, result.n_faces) == (len(v), len(f))
    texture = np.asarray(Image.open(out / "texture.png").convert("RGB"))
    assert texture.shape == (SIZE, SIZE, 3)
    # The texture and the vertex colours agree (the add-on may show either).
    err = np.abs(tx.sample_texture(texture, uv) - c[:, :3]).max(axis=1)
    assert np.median(err) <= 1.0 and err.mean() < 6.0


def test_uv_glb_has_a_base_colour_texture_and_texcoords(uv_export: tuple[ex.ExportResult, Path]) -> None:
    pygltflib = pytest.importorskip("pygltflib")
    _, out = uv_export
    gltf = pygltflib.GLTF2().load(str(out / "mesh.glb"))
    (primitive,) = gltf.meshes[0].primitives
    assert primitive.attributes.TEXCOORD_0 is not None
    assert primitive.attributes.COLOR_0 is None  # it would multiply the texture
    pbr = gltf.materials[primitive.material].pbrMetallicRoughness
    assert pbr.baseColorTexture is not None and pbr.baseColorTexture.texCoord == 0
    image = gltf.images[gltf.textures[pbr.baseColorTexture.index].source]
    view = gltf.bufferViews[image.bufferView]
    blob = gltf.binary_blob()[view.byteOffset or 0 : (view.byteOffset or 0) + view.byteLength]
    embedded = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    np.testing.assert_array_equal(embedded, np.asarray(Image.open(out / "texture.png").convert("RGB")))

    # glTF's v runs down the image: TEXCOORD_0 = (u, 1 - v) of the npz uvs; trimesh flips it back.
    with np.load(out / "mesh.npz") as npz:
        uvs = npz["uvs"]
    scene = trimesh.load(out / "mesh.glb", force="scene")
    (mesh,) = scene.geometry.values()
    np.testing.assert_allclose(mesh.visual.uv, uvs, atol=1e-6)
    accessor = gltf.accessors[primitive.attributes.TEXCOORD_0]
    raw_view = gltf.bufferViews[accessor.bufferView]
    start = (raw_view.byteOffset or 0) + (accessor.byteOffset or 0)
    raw = np.frombuffer(gltf.binary_blob()[start : start + accessor.count * 8], dtype=np.float32)
    np.testing.assert_allclose(raw.reshape(-1, 2), np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1), atol=1e-6)
