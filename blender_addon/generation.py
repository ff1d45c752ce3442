"""Generation glue shared by the modal operator and the headless path: a run for the scene's settings, and
building its result in the scene. Neither module imports the other; both import this one."""

from __future__ import annotations

import contextlib

import bpy

from . import mesh_build, properties, session
from .client import BackendError, GenerationRequest, read_mesh_npz
from .preferences import backend_settings
from .runner import Downloaded, GenerationRun


def new_run(context: bpy.types.Context, *, fetch_previews: bool = True) -> GenerationRun:
    """A run for the scene's current settings; raises BackendError with a message for bad input."""
    settings = properties.settings_of(context)
    if not settings.prompt.strip():
        raise BackendError('Type a prompt first, e.g. "a red cube".')
    prefs = backend_settings(context)
    request = properties.request_from_settings(settings)
    return GenerationRun(
        prefs.client(),
        request,
        prefs.cache_dir() / "jobs",
        lambda done: import_downloaded(bpy.context, done, request),
        fetch_previews=fetch_previews,
    )


def import_downloaded(
    context: bpy.types.Context,
    done: Downloaded,
    request: GenerationRequest,
    *,
    add_to_history: bool = True,
) -> bpy.types.Object:
    """Build the downloaded result in the scene at the 3D cursor, select it and record it."""
    scene = properties.scene_of(context)
    settings = properties.settings_of(scene)
    arrays = read_mesh_npz(done.mesh_npz)
    cursor = scene.cursor.location
    location = (cursor.x, cursor.y, cursor.z)
    rotation = 0.0
    if settings.front_from_camera and scene.camera is not None:
        rotation = mesh_build.camera_azimuth(scene.camera.matrix_world.translation, location)
    collection = context.collection or scene.collection
    # Record what the backend really ran (its defaults filled in), so the result can be reproduced.
    request = request.resolved(done.status.request)
    name = mesh_build.object_name(request.prompt)
    texture = done.texture_png if done.texture_png is not None and done.texture_png.exists() else None
    obj = mesh_build.create_result_object(
        collection,
        arrays,
        name=name,
        object_size=settings.object_size,
        location=location,
        rotation_z=rotation,
        texture_path=texture,
        properties={
            "dreamsmith_prompt": request.prompt,
            "dreamsmith_method": request.method,
            "dreamsmith_seed": request.seed,
            "dreamsmith_job_id": done.job_id,
            "dreamsmith_model": request.model or "",
            "dreamsmith_settings": request.to_json(),
        },
    )
    if context.view_layer is not None and obj.name in context.view_layer.objects:
        mesh_build.select_only(context.view_layer, obj)
    if add_to_history:
        properties.add_history(
            settings,
            request,
            job_id=done.job_id,
            object_name=obj.name,
            n_vertices=len(arrays.vertices),
            n_faces=len(arrays.faces),
            seconds=done.status.elapsed_s,
        )
    session.STATE.last_message = (
        f"Imported '{obj.name}' ({len(arrays.vertices)} vertices, {len(arrays.faces)} faces)"
    )
    return obj


def push_undo(message: str) -> None:
    """One undo step for an import made outside an UNDO operator (the modal path)."""
    if bpy.app.background:
        return
    with contextlib.suppress(RuntimeError):  # no undo stack in this context
        bpy.ops.ed.undo_push(message=message)
