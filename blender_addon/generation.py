"""Generation glue shared by the modal operator and the headless path: a run for the scene's settings, and
building its result in the scene. Neither module imports the other; both import this one."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace

import bpy

from . import live_preview, mesh_build, properties, session
from .client import BackendError, GenerationRequest, read_mesh_npz
from .preferences import backend_settings
from .runner import Downloaded, GenerationRun
from .variations import VariationSet


@dataclass(frozen=True)
class Target:
    """Where a generation's object lands: the 3D cursor when it started, turned toward the camera when
    the panel says so. The live mesh and the result share it."""

    location: tuple[float, float, float]
    rotation_z: float

    @classmethod
    def of(cls, context: bpy.types.Context) -> Target:
        scene = properties.scene_of(context)
        cursor = scene.cursor.location
        location = (float(cursor.x), float(cursor.y), float(cursor.z))
        rotation = 0.0
        if properties.settings_of(scene).front_from_camera and scene.camera is not None:
            rotation = mesh_build.camera_azimuth(scene.camera.matrix_world.translation, location)
        return cls(location, rotation)

    def shifted(self, dx: float) -> Target:
        x, y, z = self.location
        return Target((x + dx, y, z), self.rotation_z)


# What a run makes: "optimize" (Generate: a per-prompt optimization), "instant" (a trained generator's
# shape in one pass), "refine" (a per-prompt optimization that starts from an Instant result's shape).
MODES = ("optimize", "instant", "refine")


def refine_source(context: bpy.types.Context) -> tuple[str, GenerationRequest] | None:
    """The Instant result Refine continues: the active object when it is one, else the newest in the
    history; (its job id, its request), or None when there is none."""
    obj = context.active_object if hasattr(context, "active_object") else None
    if obj is not None and obj.get("dreamsmith_generator") and obj.get("dreamsmith_job_id"):
        with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
            stored = GenerationRequest.from_json(json.loads(obj.get("dreamsmith_settings") or "{}"))
            return str(obj["dreamsmith_job_id"]), stored
    for item in reversed(list(properties.settings_of(context).history)):
        with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
            stored = GenerationRequest.from_json(json.loads(item.settings_json or "{}"))
            if stored.generator and item.job_id:
                return str(item.job_id), stored
    return None


def new_run(
    context: bpy.types.Context, *, fetch_previews: bool = True, mode: str = "optimize"
) -> GenerationRun:
    """A run for the scene's current settings (`mode`: see MODES); raises BackendError with a message for
    bad input.

    fetch_previews: an interactive run (the modal operator): previews and live meshes are fetched.
    Otherwise (headless) the backend is asked for no live meshes, which nobody would see.
    """
    settings = properties.settings_of(context)
    request = properties.request_from_settings(settings)
    if mode == "refine":
        source = refine_source(context)
        if source is None:
            raise BackendError("Make an Instant result first (or select one): Refine continues its shape.")
        job_id, stored = source
        # The shape is of the Instant prompt: refine that prompt, with the panel's method, steps and export.
        request = replace(
            request,
            prompt=stored.prompt,
            negative_prompt=stored.negative_prompt,
            seed=stored.seed,
            init_job=job_id,
        )
    elif not settings.prompt.strip():
        raise BackendError('Type a prompt first, e.g. "a red cube".')
    elif mode == "instant":
        request = replace(request, generator=settings.generator.strip() or "demo")
    if not fetch_previews:
        request.live_every = 0
    target = Target.of(context)

    def import_result(done: Downloaded) -> bpy.types.Object:
        live_preview.remove()  # the result replaces the live mesh
        return import_downloaded(bpy.context, done, request, target=target)

    prefs = backend_settings(context)
    run = GenerationRun(
        prefs.client(),
        request,
        prefs.cache_dir() / "jobs",
        import_result,
        fetch_previews=fetch_previews,
        fetch_live=fetch_previews and request.live_every > 0,
    )
    run.target = target
    return run


def show_live(context: bpy.types.Context, run: GenerationRun) -> bpy.types.Object | None:
    """Put the run's latest live mesh into the viewport (the modal operator's tick, never draw code)."""
    if run.live_mesh is None or run.job_id is None:
        return None
    scene = properties.scene_of(context)
    target = run.target if isinstance(run.target, Target) else Target.of(context)
    return live_preview.show(
        context.collection or scene.collection,
        run.live_mesh,
        job_id=run.job_id,
        object_size=properties.settings_of(scene).object_size,
        location=target.location,
        rotation_z=target.rotation_z,
    )


def import_downloaded(
    context: bpy.types.Context,
    done: Downloaded,
    request: GenerationRequest,
    *,
    add_to_history: bool = True,
    target: Target | None = None,
) -> bpy.types.Object:
    """Build the downloaded result in the scene at `target` (default: the 3D cursor now), select it and
    record it."""
    scene = properties.scene_of(context)
    settings = properties.settings_of(scene)
    arrays = read_mesh_npz(done.mesh_npz)
    target = target or Target.of(context)
    location, rotation = target.location, target.rotation_z
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
            "dreamsmith_generator": request.generator or "",
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
        + "".join(f". Warning: {w}" for w in done.status.warnings)
    )
    return obj


def push_undo(message: str) -> None:
    """One undo step for an import made outside an UNDO operator (the modal path)."""
    if bpy.app.background:
        return
    with contextlib.suppress(RuntimeError):  # no undo stack in this context
        bpy.ops.ed.undo_push(message=message)


def new_variations(context: bpy.types.Context, *, fetch_previews: bool = True) -> VariationSet:
    """A variation set for the scene's settings (`variations` seeds from `seed` on); each finished
    variation is downloaded and added to the History, not imported. BackendError for bad input."""
    settings = properties.settings_of(context)
    if not settings.prompt.strip():
        raise BackendError('Type a prompt first, e.g. "a red cube".')
    prefs = backend_settings(context)
    request = properties.request_from_settings(settings)

    def keep(index: int, done: Downloaded) -> Downloaded:
        arrays = read_mesh_npz(done.mesh_npz)  # checked now: a bad file fails this variation alone
        properties.add_history(
            properties.settings_of(bpy.context),
            variations.runs[index].request.resolved(done.status.request),
            job_id=done.job_id,
            object_name="",  # until the artist imports it
            n_vertices=len(arrays.vertices),
            n_faces=len(arrays.faces),
            seconds=done.status.elapsed_s,
        )
        return done

    variations = VariationSet(
        prefs.client(),
        request,
        settings.variations,
        prefs.cache_dir() / "jobs",
        keep,
        fetch_previews=fetch_previews,
    )
    variations.target = Target.of(context)
    return variations


def import_variation(
    context: bpy.types.Context, variations: VariationSet, index: int, target: Target
) -> bpy.types.Object:
    """Build variation `index`'s result at `target`; its History entry learns the object's name."""
    done = variations.result(index)
    if not isinstance(done, Downloaded):
        raise BackendError(f"Variation {index + 1} has no result to import (yet).")
    obj = import_downloaded(
        context, done, variations.runs[index].request, add_to_history=False, target=target
    )
    for item in properties.settings_of(context).history:
        if item.job_id == done.job_id:
            item.object_name = obj.name
    variations.imported[index] = obj.name
    return obj
