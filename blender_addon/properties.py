# mypy: disable-error-code="valid-type"
# (Blender declares properties as annotations that are calls, which type checkers cannot read.)
"""Settings stored on the scene (saved with the .blend) and the list of this file's generations.

Ranges mirror the backend's limits, so most bad values cannot be typed in; the backend still checks
every request and its message names the field when something slips through.
"""

from __future__ import annotations

import json
import time

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from .client import CameraRanges, ExportOptions, GenerationRequest

# The method menu lists what the backend offers (GET /v1/health); these stand in while it is not reachable.
FALLBACK_METHOD_ITEMS = [
    (
        "tp-sds",
        "TP-SDS",
        "DreamTime: score distillation with a time-prioritized, decreasing timestep schedule "
        "(default; stable, good detail)",
    ),
    ("sds", "SDS", "Original DreamFusion score distillation with random timesteps (baseline)"),
    ("tp-asd", "TP-ASD", "Time-prioritized schedule with asynchronous score distillation"),
    (
        "asd",
        "ASD",
        "ScaleDreamer: asynchronous score distillation, compares predictions at two timesteps "
        "(low guidance, less over-saturation)",
    ),
]
DEFAULT_METHOD = "tp-sds"
# Blender keeps only pointers to the strings of dynamic enum items: the list must outlive the call.
_method_items_cache: list[tuple[str, str, str, str, int]] = []


def method_items(self: object, context: bpy.types.Context | None) -> list[tuple[str, str, str, str, int]]:
    """The method menu: the backend's methods when it has answered, else the built-in list; the method
    stored in the scene stays listed even when the backend does not offer it (so it is not lost)."""
    from . import session

    health = session.STATE.health
    if health is not None and health.method_details:
        choices = [(m.name, m.title or m.name.upper(), m.description) for m in health.method_details]
    else:
        choices = list(FALLBACK_METHOD_ITEMS)
    stored = getattr(self, "method_name", "")
    if stored and stored not in {c[0] for c in choices}:
        choices.append((stored, stored.upper(), "Not offered by the backend right now"))
    items = [(name, title, text, "", i) for i, (name, title, text) in enumerate(choices)]
    _method_items_cache[:] = items
    return items


def _get_method(self: DreamsmithSettings) -> int:
    names = [item[0] for item in method_items(self, None)]
    name = self.method_name or DEFAULT_METHOD
    return names.index(name) if name in names else 0


def _set_method(self: DreamsmithSettings, value: int) -> None:
    items = method_items(self, None)
    if 0 <= value < len(items):
        self.method_name = items[value][0]


SURFACE_LEVEL_ITEMS = [
    (
        "auto",
        "Automatic",
        "Silhouette for per-prompt fields (exponential density), Density for Instant results",
    ),
    (
        "silhouette",
        "Silhouette",
        "The surface shows the outline the field renders: what the diffusion model was shown",
    ),
    ("density", "Density", "The surface at a density chosen from the field's own statistics (tighter)"),
]
TEXTURE_ITEMS = [
    ("vertex", "Vertex Colors", "Colours stored per vertex: fastest; detail follows the mesh density"),
    (
        "uv",
        "UV Texture",
        "Unwrap the mesh and bake an image texture: slower; sharper colours on coarse meshes",
    ),
]


class DreamsmithGeneration(bpy.types.PropertyGroup):
    """One finished generation of this file, enough to import it again or reuse its settings."""

    prompt: StringProperty(name="Prompt", description="The prompt of this generation")
    method: StringProperty(name="Method", description="Score distillation method used")
    seed: IntProperty(name="Seed", description="Random seed used")
    model: StringProperty(name="Model", description="Diffusion model used (empty: the demo prior)")
    job_id: StringProperty(name="Job", description="Job id on the backend")
    settings_json: StringProperty(name="Settings", description="The full request, as JSON")
    object_name: StringProperty(name="Object", description="Name of the object it was imported as")
    n_vertices: IntProperty(name="Vertices", description="Vertex count of the result")
    n_faces: IntProperty(name="Faces", description="Face count of the result")
    seconds: FloatProperty(name="Time", description="Generation time on the backend, in seconds")
    created: StringProperty(name="Created", description="When the generation finished (local time)")


class DreamsmithSettings(bpy.types.PropertyGroup):
    """Everything the Dreamsmith panel edits; one set per scene."""

    prompt: StringProperty(
        name="Prompt",
        description='What to make, in a few words, e.g. "a red cube" or "a wooden chair" (1-500 characters)',
        maxlen=500,
    )
    negative_prompt: StringProperty(
        name="Negative Prompt",
        description='What to steer away from, e.g. "blurry, flat" (optional)',
        maxlen=500,
    )
    model: StringProperty(
        name="Model",
        description="Diffusion model on the backend machine: a local diffusers folder or a hub id. "
        "Empty uses the built-in demo prior (small, works offline on a CPU)",
    )
    generator: StringProperty(
        name="Generator",
        description="Trained generator that Instant uses: 'demo' (built in: the demo prior's world of "
        "coloured shapes) or a folder written by `python -m backend train-generator` on the backend machine",
        default="demo",
    )
    # The method is stored by name (a dynamic menu's numbers change when the backend's list does).
    method_name: StringProperty(
        name="Method", description="Score distillation method", default=DEFAULT_METHOD, options={"HIDDEN"}
    )
    method: EnumProperty(
        name="Method",
        description="How the 2D diffusion model guides the 3D optimization (the backend lists its methods)",
        items=method_items,
        get=_get_method,
        set=_set_method,
    )
    steps: IntProperty(
        name="Steps",
        description="Optimization steps: more gives a cleaner shape and takes proportionally longer. "
        "0 uses the backend's default (tuned for the built-in demo prior)",
        default=0,
        min=0,
        max=20000,
        soft_max=5000,
    )
    seed: IntProperty(
        name="Seed",
        description="Random seed: the same seed and settings give the same result on a CPU backend",
        default=0,
        min=0,
        max=2**31 - 1,
    )
    guidance_scale: FloatProperty(
        name="Guidance",
        description="Classifier-free guidance scale; 0 uses the method's default (SDS 100, ASD 7.5). "
        "Higher follows the prompt more closely but saturates colours",
        default=0.0,
        min=0.0,
        max=1000.0,
        soft_max=200.0,
    )
    render_size: IntProperty(
        name="Render Size",
        description="Side in pixels of the images rendered during optimization: larger is sharper and "
        "slower (16-512). 0 uses the backend's default",
        default=0,
        min=0,
        max=512,
        subtype="PIXEL",
    )
    preview_every: IntProperty(
        name="Preview Every",
        description="Steps between preview images shown in the panel (0: no previews)",
        default=50,
        min=0,
        max=100000,
    )
    live_every: IntProperty(
        name="Live Mesh Every",
        description="Steps between live meshes: a coarse mesh of the shape as it grows, shown in the "
        "viewport at the 3D cursor until the result replaces it (0: none; each costs about one step)",
        default=25,
        min=0,
        max=100000,
    )
    variations: IntProperty(
        name="Variations",
        description="How many jobs Generate Variations queues: the same settings with seeds Seed, "
        "Seed + 1, ...",
        default=4,
        min=2,
        max=16,
    )

    elevation_min: FloatProperty(
        name="Elevation Min",
        description="Lowest camera elevation above the horizon during optimization, in degrees",
        default=-10.0,
        min=-89.0,
        max=89.0,
    )
    elevation_max: FloatProperty(
        name="Elevation Max",
        description="Highest camera elevation above the horizon during optimization, in degrees",
        default=45.0,
        min=-89.0,
        max=89.0,
    )
    azimuth_min: FloatProperty(
        name="Azimuth Min",
        description="Camera azimuth range start in degrees, relative to the object's front "
        "(-180 to 180 goes all around)",
        default=-180.0,
        min=-360.0,
        max=360.0,
    )
    azimuth_max: FloatProperty(
        name="Azimuth Max",
        description="Camera azimuth range end in degrees, relative to the object's front",
        default=180.0,
        min=-360.0,
        max=360.0,
    )
    distance_min: FloatProperty(
        name="Distance Min",
        description="Nearest camera distance from the object's centre (the object is about 1 unit across)",
        default=1.8,
        min=0.5,
        max=10.0,
    )
    distance_max: FloatProperty(
        name="Distance Max",
        description="Farthest camera distance from the object's centre",
        default=2.2,
        min=0.5,
        max=10.0,
    )
    fov_min: FloatProperty(
        name="Field of View Min",
        description="Narrowest vertical field of view of the training cameras, in degrees",
        default=40.0,
        min=5.0,
        max=120.0,
    )
    fov_max: FloatProperty(
        name="Field of View Max",
        description="Widest vertical field of view of the training cameras, in degrees",
        default=50.0,
        min=5.0,
        max=120.0,
    )
    front_from_camera: BoolProperty(
        name="Front from Active Camera",
        description="Turn the imported object about Z so that its front faces the scene's active camera",
        default=False,
    )

    mesh_resolution: IntProperty(
        name="Mesh Resolution",
        description="Marching-cubes grid cells per axis: higher gives finer geometry and more faces",
        default=128,
        min=16,
        max=512,
    )
    texture: EnumProperty(
        name="Colors",
        description="How colours are stored on the result",
        items=TEXTURE_ITEMS,
        default="vertex",
    )
    texture_size: IntProperty(
        name="Texture Size",
        description="Side of the baked texture in pixels (UV texture only)",
        default=1024,
        min=64,
        max=4096,
        subtype="PIXEL",
    )
    target_faces: IntProperty(
        name="Target Faces",
        description="The mesh is simplified to about this many triangles",
        default=50000,
        min=100,
        max=2_000_000,
    )
    smoothing: FloatProperty(
        name="Smoothing",
        description="Smooths the surface before meshing, in grid cells: takes out small dents; 0 keeps every "
        "detail of the field",
        default=1.0,
        min=0.0,
        max=4.0,
    )
    auto_level: EnumProperty(
        name="Surface Level",
        description="Where the mesh's surface is cut from the density field",
        items=SURFACE_LEVEL_ITEMS,
        default="auto",
    )
    object_size: FloatProperty(
        name="Object Size",
        description="Largest dimension of the imported object, in scene units",
        default=1.0,
        min=0.001,
        soft_max=100.0,
        subtype="DISTANCE",
        unit="LENGTH",
    )

    history: CollectionProperty(type=DreamsmithGeneration, name="Generations")
    history_index: IntProperty(name="Generation", description="Selected generation", default=0)


def scene_of(context: bpy.types.Context) -> bpy.types.Scene:
    scene = context.scene
    if scene is None:
        raise RuntimeError("Dreamsmith needs a scene in the current context")
    return scene


def settings_of(where: bpy.types.Context | bpy.types.Scene) -> DreamsmithSettings:
    """The scene's Dreamsmith settings, from a context or a scene."""
    scene = where if isinstance(where, bpy.types.Scene) else scene_of(where)
    return scene.dreamsmith  # type: ignore[attr-defined,no-any-return]


def request_from_settings(s: DreamsmithSettings) -> GenerationRequest:
    """The backend request these settings describe; min/max pairs given in any order are sorted.

    The backend generates the object with its front toward -Y (front azimuth 0); turning it toward
    the active camera happens at import, so the object's own axes stay canonical.
    """

    def ordered(a: float, b: float) -> tuple[float, float]:
        # Float properties are single precision: round so 1.8 is sent as 1.8, not 1.7999999523.
        a, b = round(a, 4), round(b, 4)
        return (min(a, b), max(a, b))

    return GenerationRequest(
        prompt=s.prompt.strip(),
        negative_prompt=s.negative_prompt.strip(),
        method=s.method_name or DEFAULT_METHOD,
        steps=s.steps,
        seed=s.seed,
        guidance_scale=round(s.guidance_scale, 4) or None,
        model=s.model.strip() or None,
        render_size=s.render_size,
        preview_every=s.preview_every,
        live_every=s.live_every,
        camera=CameraRanges(
            elevation_deg=ordered(s.elevation_min, s.elevation_max),
            azimuth_deg=ordered(s.azimuth_min, s.azimuth_max),
            distance=ordered(s.distance_min, s.distance_max),
            fov_deg=ordered(s.fov_min, s.fov_max),
            front_azimuth_deg=0.0,
        ),
        export=ExportOptions(
            mesh_resolution=s.mesh_resolution,
            texture=s.texture,
            texture_size=s.texture_size,
            target_faces=s.target_faces,
            smoothing=s.smoothing,
            auto_level=s.auto_level,
        ),
    )


def apply_request(s: DreamsmithSettings, req: GenerationRequest) -> None:
    """Put a stored request back into the panel ("use these settings")."""
    s.prompt = req.prompt
    s.negative_prompt = req.negative_prompt
    s.method_name = req.method
    s.steps = req.steps
    s.seed = req.seed
    s.guidance_scale = req.guidance_scale or 0.0
    s.model = req.model or ""
    s.render_size = req.render_size
    s.preview_every = req.preview_every
    # live_every stays: it changes how a run is watched, not its result (headless runs and variations
    # send 0, and reusing their settings must not switch the viewport's live mesh off).
    s.elevation_min, s.elevation_max = req.camera.elevation_deg
    s.azimuth_min, s.azimuth_max = req.camera.azimuth_deg
    s.distance_min, s.distance_max = req.camera.distance
    s.fov_min, s.fov_max = req.camera.fov_deg
    s.mesh_resolution = req.export.mesh_resolution
    if req.export.texture in {item[0] for item in TEXTURE_ITEMS}:
        s.texture = req.export.texture
    s.texture_size = req.export.texture_size
    s.target_faces = req.export.target_faces
    s.smoothing = req.export.smoothing
    if req.export.auto_level in {item[0] for item in SURFACE_LEVEL_ITEMS}:
        s.auto_level = req.export.auto_level


def add_history(
    s: DreamsmithSettings,
    req: GenerationRequest,
    *,
    job_id: str,
    object_name: str,
    n_vertices: int,
    n_faces: int,
    seconds: float,
) -> DreamsmithGeneration:
    item: DreamsmithGeneration = s.history.add()
    item.prompt = req.prompt
    item.method = req.method
    item.seed = req.seed
    item.model = req.model or ""
    item.job_id = job_id
    item.settings_json = json.dumps(req.to_json(), sort_keys=True)
    item.object_name = object_name
    item.n_vertices = n_vertices
    item.n_faces = n_faces
    item.seconds = seconds
    item.created = time.strftime("%Y-%m-%d %H:%M")
    s.history_index = len(s.history) - 1
    return item


CLASSES = (DreamsmithGeneration, DreamsmithSettings)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.dreamsmith = PointerProperty(type=DreamsmithSettings)  # type: ignore[attr-defined]


def unregister() -> None:
    del bpy.types.Scene.dreamsmith  # type: ignore[attr-defined]
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
