"""Arrays -> a Blender object: mesh through `foreach_set`, colour attribute or UV texture, material.

Building through `foreach_set` from numpy keeps a 200k-face result well under a second, where a
Python loop or Blender's glTF importer takes many times longer (`scripts/bench_import.py`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bpy
import numpy as np
import numpy.typing as npt

from .client import MeshArrays

COLOR_ATTRIBUTE = "Color"
UV_LAYER = "UVMap"
# Blender names are at most 63 bytes.
MAX_NAME_CHARS = 60


def object_name(prompt: str) -> str:
    """A readable object name from the prompt: first words, no newlines, within Blender's limit."""
    words = " ".join(prompt.split())
    if len(words) > MAX_NAME_CHARS:
        words = words[: MAX_NAME_CHARS - 3].rstrip() + "..."
    while len(words.encode("utf-8")) > 63:  # multi-byte characters
        words = words[:-1]
    return words or "Dreamsmith"


def fit_scale(vertices: npt.NDArray[np.float32], object_size: float) -> float:
    """Uniform scale that makes the largest dimension of the bounding box equal `object_size`."""
    if len(vertices) == 0 or object_size <= 0:
        return 1.0
    extent = float((vertices.max(axis=0) - vertices.min(axis=0)).max())
    return object_size / extent if extent > 1e-9 else 1.0


def camera_azimuth(camera_location: Any, target: Any) -> float:
    """Azimuth (radians) of a camera around `target`, in the backend's convention.

    Camera position = d (cos el sin az, -cos el cos az, sin el): azimuth 0 is on -Y (Blender's front
    view), azimuth 90 degrees is on +X. Turning an object about Z by this angle moves its front (-Y)
    to face the camera.
    """
    dx = float(camera_location[0]) - float(target[0])
    dy = float(camera_location[1]) - float(target[1])
    if abs(dx) < 1e-12 and abs(dy) < 1e-12:
        return 0.0  # camera straight above or below: any turn is as good
    return math.atan2(dx, -dy)


def valid_faces(faces: npt.NDArray[np.int32], n_vertices: int) -> npt.NDArray[np.int32]:
    """`faces` without the triangles Blender counts as invalid: a vertex used twice, or the same three
    vertices as an earlier triangle (decimation can leave a few). The array itself when all are valid.

    Cheaper than `Mesh.validate()` (~25 ms vs ~220 ms on 200k faces), and done before the build, so the
    object never holds an invalid mesh that an exporter would quietly "fix" (and change) later.
    """
    if len(faces) == 0:
        return faces
    f = faces.astype(np.int64)
    a, b, c = f[:, 0], f[:, 1], f[:, 2]
    keep = (a != b) & (b != c) & (a != c)
    lo = np.minimum(np.minimum(a, b), c)
    hi = np.maximum(np.maximum(a, b), c)
    mid = a + b + c - lo - hi
    if n_vertices < 2_000_000:  # one int64 key per triangle (n^3 stays below 2^63)
        n = np.int64(max(n_vertices, 1))
        key = (lo * n + mid) * n + hi
        ordered = np.sort(key)  # the common case, no duplicates, needs no argsort
        if bool((ordered[1:] != ordered[:-1]).all()):
            first = None
        else:
            _, first = np.unique(key, return_index=True)
    else:
        _, first = np.unique(np.stack([lo, mid, hi], axis=1), axis=0, return_index=True)
    if first is not None:
        unique = np.zeros(len(faces), dtype=bool)
        unique[first] = True
        keep &= unique
    return faces if bool(keep.all()) else np.ascontiguousarray(faces[keep])


def build_mesh(name: str, arrays: MeshArrays, scale: float = 1.0) -> bpy.types.Mesh:
    """A new mesh datablock with the triangles, a per-vertex colour attribute and, if given, UVs.

    Invalid triangles (see `valid_faces`) are left out, so the face count can be a little lower than
    the file's.
    """
    return fill_mesh(bpy.data.meshes.new(name), arrays, scale)


def fill_mesh(mesh: bpy.types.Mesh, arrays: MeshArrays, scale: float = 1.0) -> bpy.types.Mesh:
    """Replace the geometry of `mesh` (the same datablock, its materials kept) with `arrays`."""
    vertices = arrays.vertices
    faces = valid_faces(arrays.faces, len(vertices))
    n_faces = len(faces)
    if len(mesh.vertices) or len(mesh.polygons):
        mesh.clear_geometry()  # attributes, colours and UV layers included
    mesh.vertices.add(len(vertices))
    _set_attribute(mesh, "position", "vector", (vertices * np.float32(scale)).ravel(), mesh.vertices, "co")
    mesh.loops.add(3 * n_faces)
    _set_attribute(mesh, ".corner_vert", "value", faces.ravel(), mesh.loops, "vertex_index")
    mesh.polygons.add(n_faces)
    # Every polygon is a triangle: loop_total follows from consecutive loop_start offsets.
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * n_faces, 3, dtype=np.int32))

    colors = mesh.color_attributes.new(COLOR_ATTRIBUTE, "BYTE_COLOR", "POINT")
    assert isinstance(colors, bpy.types.ByteColorAttribute)
    # The file holds sRGB bytes; `color_srgb` stores them without a round trip through linear.
    colors.data.foreach_set("color_srgb", (arrays.colors.astype(np.float32) / 255.0).ravel())
    mesh.color_attributes.active_color_name = COLOR_ATTRIBUTE
    mesh.color_attributes.default_color_name = COLOR_ATTRIBUTE  # the one renders use

    if arrays.uvs is not None:
        uv_layer = mesh.uv_layers.new(name=UV_LAYER)
        assert uv_layer is not None
        # The file has one UV per vertex (split at seams); Blender stores one per face corner.
        uv_layer.uv.foreach_set("vector", arrays.uvs[faces.ravel()].ravel())

    mesh.update(calc_edges=True)
    mesh.shade_smooth()  # marching-cubes surfaces are meant to look smooth
    return mesh


def _set_attribute(
    mesh: bpy.types.Mesh, attribute: str, field: str, values: Any, legacy: Any, legacy_field: str
) -> None:
    """Write a built-in attribute in one block copy.

    Through the attribute API this is a memcpy; the per-element RNA path (`loops.foreach_set
    ("vertex_index")`) takes ~100x longer on 600k corners. The fallback keeps older Blenders working.
    """
    attr = mesh.attributes.get(attribute)
    if attr is not None:
        attr.data.foreach_set(field, values)
    else:
        legacy.foreach_set(legacy_field, values)


def _link(tree: bpy.types.NodeTree, from_node: Any, output: str, to_node: Any, input: str) -> None:
    tree.links.new(from_node.outputs[output], to_node.inputs[input])


def _new_material(name: str) -> tuple[bpy.types.Material, bpy.types.ShaderNode]:
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        material.use_nodes = True  # always on (and deprecated) from Blender 5.0
    tree = material.node_tree
    assert tree is not None
    principled = next((n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"), None)
    if principled is None:
        principled = tree.nodes.new("ShaderNodeBsdfPrincipled")
        output = next((n for n in tree.nodes if n.bl_idname == "ShaderNodeOutputMaterial"), None)
        if output is None:
            output = tree.nodes.new("ShaderNodeOutputMaterial")
        _link(tree, principled, "BSDF", output, "Surface")
    assert isinstance(principled, bpy.types.ShaderNode)
    principled.inputs["Roughness"].default_value = 0.8  # type: ignore[attr-defined]
    return material, principled


def vertex_color_material(name: str, attribute: str = COLOR_ATTRIBUTE) -> bpy.types.Material:
    """Color Attribute node -> Principled BSDF base colour."""
    material, principled = _new_material(name)
    tree = material.node_tree
    assert tree is not None
    node = tree.nodes.new("ShaderNodeVertexColor")
    assert isinstance(node, bpy.types.ShaderNodeVertexColor)
    node.layer_name = attribute
    node.location = (principled.location[0] - 300, principled.location[1])
    _link(tree, node, "Color", principled, "Base Color")
    return material


def texture_material(name: str, image: bpy.types.Image, uv_layer: str = UV_LAYER) -> bpy.types.Material:
    """UV Map -> Image Texture -> Principled BSDF base colour."""
    material, principled = _new_material(name)
    tree = material.node_tree
    assert tree is not None
    tex = tree.nodes.new("ShaderNodeTexImage")
    assert isinstance(tex, bpy.types.ShaderNodeTexImage)
    tex.image = image
    tex.location = (principled.location[0] - 320, principled.location[1])
    uv = tree.nodes.new("ShaderNodeUVMap")
    assert isinstance(uv, bpy.types.ShaderNodeUVMap)
    uv.uv_map = uv_layer
    uv.location = (tex.location[0] - 220, tex.location[1])
    _link(tree, uv, "UV", tex, "Vector")
    _link(tree, tex, "Color", principled, "Base Color")
    return material


def load_texture(path: Path, name: str) -> bpy.types.Image:
    """Load the texture and pack it into the .blend, so the file keeps it when the cache is cleared."""
    image = bpy.data.images.load(str(path), check_existing=False)
    image.name = name
    image.pack()
    return image


def create_result_object(
    collection: bpy.types.Collection,
    arrays: MeshArrays,
    *,
    name: str,
    object_size: float = 1.0,
    location: Any = (0.0, 0.0, 0.0),
    rotation_z: float = 0.0,
    texture_path: Path | None = None,
    properties: Mapping[str, Any] | None = None,
) -> bpy.types.Object:
    """Build the object: mesh scaled to `object_size`, at `location`, turned by `rotation_z` about Z.

    With `texture_path` (and UVs in `arrays`) the material is image-textured, otherwise it shows the
    colour attribute. `properties` become custom properties; dicts and lists are stored as JSON text.
    """
    scale = fit_scale(arrays.vertices, object_size)
    mesh = build_mesh(name, arrays, scale)
    if texture_path is not None and arrays.uvs is not None:
        image = load_texture(texture_path, f"{name} texture")
        material = texture_material(name, image)
    else:
        material = vertex_color_material(name)
    mesh.materials.append(material)

    obj = bpy.data.objects.new(name, mesh)
    obj.location = tuple(location)
    obj.rotation_euler = (0.0, 0.0, rotation_z)
    for key, value in (properties or {}).items():
        obj[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
    collection.objects.link(obj)
    return obj


def select_only(view_layer: bpy.types.ViewLayer, obj: bpy.types.Object) -> None:
    for other in list(view_layer.objects.selected):
        other.select_set(False)
    obj.select_set(True)
    view_layer.objects.active = obj
