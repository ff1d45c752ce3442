"""The add-on's mesh builder in real Blender (bpy wheel): arrays in, exact mesh, colours, UVs, material out."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon import mesh_build  # noqa: E402
from blender_addon.client import BackendError, MeshArrays, read_mesh_npz  # noqa: E402


def cube_arrays(with_uvs: bool = False, seed: int = 0) -> MeshArrays:
    """A closed box of 8 vertices and 12 triangles spanning [-0.5, 0.5] x [-0.25, 0.25] x [-0.1, 0.1]."""
    rng = np.random.default_rng(seed)
    corners = np.array(
        [[x, y, z] for x in (-0.5, 0.5) for y in (-0.25, 0.25) for z in (-0.1, 0.1)], np.float32
    )
    faces = np.array(
        [
            [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
            [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],
        ],
        np.int32,
    )  # fmt: skip
    colors = rng.integers(0, 256, size=(8, 4), dtype=np.uint8)
    uvs = rng.random((8, 2), dtype=np.float32) if with_uvs else None
    return MeshArrays(vertices=corners, faces=faces, colors=colors, uvs=uvs)


def base_color_source(material: bpy.types.Material) -> bpy.types.Node:
    principled = next(n for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    links = principled.inputs["Base Color"].links
    assert len(links) == 1, "the base colour must be driven by a node"
    return links[0].from_node


@pytest.fixture
def collection() -> bpy.types.Collection:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene.collection


def test_build_mesh_reproduces_counts_positions_and_colours() -> None:
    arrays = cube_arrays()
    mesh = mesh_build.build_mesh("box", arrays)
    assert len(mesh.vertices) == 8
    assert len(mesh.polygons) == 12
    assert len(mesh.loops) == 36
    co = np.empty(8 * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(-1, 3), arrays.vertices)
    corner_verts = np.empty(36, np.int32)
    mesh.loops.foreach_get("vertex_index", corner_verts)
    np.testing.assert_array_equal(corner_verts.reshape(-1, 3), arrays.faces)
    assert all(p.loop_total == 3 for p in mesh.polygons)
    # Sharing edges: a closed triangulated box has 18 edges and validates without changes.
    assert len(mesh.edges) == 18
    assert mesh.validate(verbose=False) is False

    attr = mesh.color_attributes[mesh_build.COLOR_ATTRIBUTE]
    assert (attr.domain, attr.data_type) == ("POINT", "BYTE_COLOR")
    srgb = np.empty(8 * 4, np.float32)
    attr.data.foreach_get("color_srgb", srgb)
    np.testing.assert_array_equal(np.round(srgb.reshape(-1, 4) * 255).astype(np.uint8), arrays.colors)
    assert mesh.color_attributes.default_color_name == mesh_build.COLOR_ATTRIBUTE


def test_invalid_triangles_are_left_out_so_the_mesh_is_valid_as_built() -> None:
    arrays = cube_arrays()
    assert mesh_build.valid_faces(arrays.faces, 8) is arrays.faces  # nothing to drop: no copy
    bad = np.vstack([arrays.faces, [[0, 0, 1], [3, 1, 0], [7, 6, 2]]]).astype(
        np.int32
    )  # 1 degenerate, 2 repeats
    arrays.faces = bad
    mesh = mesh_build.build_mesh("with bad triangles", arrays)
    assert len(mesh.polygons) == 12
    assert not mesh.validate(clean_customdata=False)  # Blender finds nothing left to fix
    np.testing.assert_array_equal(mesh_build.valid_faces(bad, 8), bad[:12])


def test_uv_layer_has_one_uv_per_face_corner_from_per_vertex_uvs() -> None:
    arrays = cube_arrays(with_uvs=True)
    mesh = mesh_build.build_mesh("box_uv", arrays)
    layer = mesh.uv_layers[mesh_build.UV_LAYER]
    assert len(layer.uv) == len(mesh.loops) == 36
    uv = np.empty(36 * 2, np.float32)
    layer.uv.foreach_get("vector", uv)
    np.testing.assert_allclose(uv.reshape(-1, 2), arrays.uvs[arrays.faces.ravel()], atol=1e-7)


def test_result_object_vertex_colour_material_scale_place_turn_and_properties(collection) -> None:
    arrays = cube_arrays()
    obj = mesh_build.create_result_object(
        collection,
        arrays,
        name=mesh_build.object_name("a   red\ncube"),
        object_size=2.0,
        location=(1.0, 2.0, 3.0),
        rotation_z=math.radians(90.0),
        properties={"dreamsmith_prompt": "a red cube", "dreamsmith_seed": 7, "dreamsmith_settings": {"a": 1}},
    )
    assert obj.name == "a red cube"
    assert obj.name in collection.objects
    # Largest dimension (x: 1.0) becomes the object size; proportions are kept.
    assert tuple(round(d, 5) for d in obj.dimensions) == (2.0, 1.0, 0.4)  # in the object's own axes
    assert tuple(obj.location) == (1.0, 2.0, 3.0)
    assert obj.rotation_euler.z == pytest.approx(math.radians(90.0))
    assert obj["dreamsmith_prompt"] == "a red cube"
    assert obj["dreamsmith_seed"] == 7
    assert obj["dreamsmith_settings"] == '{"a": 1}'

    material = obj.data.materials[0]
    source = base_color_source(material)
    assert source.bl_idname == "ShaderNodeVertexColor"
    assert source.layer_name == mesh_build.COLOR_ATTRIBUTE


def test_result_object_with_uvs_and_texture_gets_an_image_texture_material(
    collection, tmp_path: Path
) -> None:
    texture = tmp_path / "texture.png"
    image = bpy.data.images.new("tex", 4, 4)
    image.pixels.foreach_set(np.tile([1.0, 0.0, 0.0, 1.0], 16).astype(np.float32))
    image.filepath_raw = str(texture)
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)

    arrays = cube_arrays(with_uvs=True)
    obj = mesh_build.create_result_object(collection, arrays, name="textured", texture_path=texture)
    source = base_color_source(obj.data.materials[0])
    assert source.bl_idname == "ShaderNodeTexImage"
    assert source.image is not None and source.image.packed_file is not None  # survives a cleared cache
    assert tuple(source.image.size) == (4, 4)
    uv_node = source.inputs["Vector"].links[0].from_node
    assert uv_node.bl_idname == "ShaderNodeUVMap" and uv_node.uv_map == mesh_build.UV_LAYER
    assert len(obj.data.uv_layers[mesh_build.UV_LAYER].uv) == 36


def test_camera_azimuth_follows_the_backend_convention() -> None:
    # Azimuth 0 is on -Y (front view), 90 degrees is on +X; measured around the target.
    assert mesh_build.camera_azimuth((0.0, -5.0, 1.0), (0.0, 0.0, 0.0)) == pytest.approx(0.0)
    assert mesh_build.camera_azimuth((5.0, 0.0, 0.0), (0.0, 0.0, 0.0)) == pytest.approx(math.pi / 2)
    assert mesh_build.camera_azimuth((1.0, 3.0, 0.0), (1.0, 1.0, 0.0)) == pytest.approx(math.pi)
    # Turning the object by that azimuth brings its front (-Y) toward the camera.
    az = mesh_build.camera_azimuth((3.0, -3.0, 0.0), (0.0, 0.0, 0.0))
    front = (math.sin(az), -math.cos(az))
    assert front == pytest.approx((math.sqrt(0.5), -math.sqrt(0.5)))


def test_object_names_are_short_single_line_and_never_empty() -> None:
    assert mesh_build.object_name("  ") == "Dreamsmith"
    long = mesh_build.object_name("a " * 100)
    assert len(long.encode("utf-8")) <= 63 and long.endswith("...")
    assert len(mesh_build.object_name("é" * 100).encode("utf-8")) <= 63


def test_read_mesh_npz_checks_the_file(tmp_path: Path) -> None:
    arrays = cube_arrays(with_uvs=True)
    good = tmp_path / "mesh.npz"
    np.savez(good, vertices=arrays.vertices, faces=arrays.faces, colors=arrays.colors, uvs=arrays.uvs)
    loaded = read_mesh_npz(good)
    np.testing.assert_array_equal(loaded.faces, arrays.faces)
    assert loaded.uvs is not None

    bad = tmp_path / "bad.npz"
    np.savez(bad, vertices=arrays.vertices, faces=arrays.faces + 100, colors=arrays.colors)
    with pytest.raises(BackendError, match="faces index vertices that do not exist"):
        read_mesh_npz(bad)
    with pytest.raises(BackendError, match="could not be read"):
        read_mesh_npz(tmp_path / "missing.npz")
