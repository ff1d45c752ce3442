"""The live mesh in the viewport: ONE temporary object, updated in place while a generation runs.

The modal Generate operator fetches the backend's live mesh on its timer (never the draw code) and calls
`show`, which refills the same mesh datablock (`mesh_build.fill_mesh`: `clear_geometry` then
`foreach_set`) and moves nothing else: no new datablocks per update, no undo step. The object looks
unlike a result (wireframe over a half-transparent tinted surface, not selectable, not rendered), sits
where the result will land, and is removed when the result replaces it, on cancel and on failure.

The object is found again by its `LIVE_PROPERTY` each time, never held across timer ticks: an undo
meanwhile may have freed it (it is then built again at the next update). An undo or redo can also bring
one back (an undo step pushed by something else while it existed), and a file saved during a run holds
one: after undo, redo and file load, live objects of no running generation are removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import bpy
from bpy.app.handlers import persistent

from . import mesh_build, session
from .client import LiveMesh

LIVE_NAME = "Dreamsmith Live"
LIVE_PROPERTY = "dreamsmith_live"  # the job id the live object belongs to
LIVE_STEP_PROPERTY = "dreamsmith_live_step"
# The tint in Solid shading (the material's viewport colour) and the surface's alpha in Material Preview.
TINT = (0.35, 0.75, 1.0, 0.45)
ALPHA = 0.45


def live_objects() -> Iterator[bpy.types.Object]:
    for obj in list(bpy.data.objects):
        if obj.get(LIVE_PROPERTY) is not None:
            yield obj


def _material(name: str) -> bpy.types.Material:
    """Vertex colours, half transparent, tinted in Solid view."""
    material = mesh_build.vertex_color_material(name)
    material.diffuse_color.foreach_set(TINT)
    if hasattr(material, "surface_render_method"):  # EEVEE (4.2+): see through it
        material.surface_render_method = "BLENDED"
    tree = material.node_tree
    assert tree is not None
    for node in tree.nodes:
        if node.bl_idname == "ShaderNodeBsdfPrincipled":
            node.inputs["Alpha"].default_value = ALPHA  # type: ignore[attr-defined]
    return material


def _new_object(collection: bpy.types.Collection, job_id: str) -> bpy.types.Object:
    mesh = bpy.data.meshes.new(LIVE_NAME)
    mesh.materials.append(_material(LIVE_NAME))
    obj = bpy.data.objects.new(LIVE_NAME, mesh)
    obj[LIVE_PROPERTY] = job_id
    obj.show_wire = True  # the growing mesh's wireframe over its colours: plainly not a result yet
    obj.show_all_edges = True
    obj.color.foreach_set(TINT)
    obj.hide_select = True  # it will vanish: nothing to select, edit or parent to
    obj.hide_render = True
    collection.objects.link(obj)
    return obj


def show(
    collection: bpy.types.Collection,
    live: LiveMesh,
    *,
    job_id: str,
    object_size: float,
    location: Any,
    rotation_z: float,
) -> bpy.types.Object:
    """Show `live` in the live object (built on the first call): scaled to `object_size`, at `location`,
    turned by `rotation_z` like the result will be. Live objects of other jobs are removed."""
    obj = None
    for other in live_objects():
        if obj is None and other[LIVE_PROPERTY] == job_id and isinstance(other.data, bpy.types.Mesh):
            obj = other
        else:
            _remove(other)
    if obj is None:
        obj = _new_object(collection, job_id)
    mesh = obj.data
    assert isinstance(mesh, bpy.types.Mesh)
    mesh_build.fill_mesh(mesh, live.mesh, mesh_build.fit_scale(live.mesh.vertices, object_size))
    obj[LIVE_STEP_PROPERTY] = live.step
    obj.location = tuple(location)
    obj.rotation_euler = (0.0, 0.0, rotation_z)
    return obj


def _remove(obj: bpy.types.Object) -> None:
    mesh = obj.data
    bpy.data.objects.remove(obj)
    if isinstance(mesh, bpy.types.Mesh) and mesh.users == 0:
        materials = [m for m in mesh.materials if m is not None]
        bpy.data.meshes.remove(mesh)
        for material in materials:
            if material.users == 0:
                bpy.data.materials.remove(material)


def remove() -> int:
    """Remove every live object with its mesh and material; returns how many there were."""
    count = 0
    for obj in live_objects():
        _remove(obj)
        count += 1
    return count


def remove_stale() -> int:
    """Remove the live objects that belong to no running generation; returns how many."""
    run = session.STATE.run
    current = run.job_id if run is not None and not run.finished else None
    stale = [obj for obj in live_objects() if obj.get(LIVE_PROPERTY) != current]
    for obj in stale:
        _remove(obj)
    return len(stale)


def _stale_later() -> None:
    remove_stale()


@persistent  # type: ignore[untyped-decorator]  # (fake-bpy-module leaves it untyped)
def _after_undo_or_load(*_args: Any) -> None:
    if bpy.app.background:
        remove_stale()
    elif not bpy.app.timers.is_registered(_stale_later):  # outside the undo system's own call
        bpy.app.timers.register(_stale_later, first_interval=0.0)


HANDLERS = (bpy.app.handlers.undo_post, bpy.app.handlers.redo_post, bpy.app.handlers.load_post)


def register() -> None:
    for handlers in HANDLERS:
        if _after_undo_or_load not in handlers:
            handlers.append(_after_undo_or_load)


def unregister() -> None:
    for handlers in HANDLERS:
        while _after_undo_or_load in handlers:
            handlers.remove(_after_undo_or_load)
    remove()
